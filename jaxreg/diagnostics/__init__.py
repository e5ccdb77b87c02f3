"""Diagnostics: Hessian tools, calibration and training-dynamics metrics."""

from jaxreg.diagnostics.calibration import aurc, expected_calibration_error
from jaxreg.diagnostics.collapse import softmax_collapse, softmax_collapse_fraction
from jaxreg.diagnostics.hessian import (
    hessian_spectral_density,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    spectral_density,
)
from jaxreg.diagnostics.representation import alignment, neural_collapse, uniformity

__all__ = ["alignment", "aurc", "expected_calibration_error", "hessian_spectral_density",
           "hessian_top_eigenvalue", "hessian_trace", "hvp", "neural_collapse",
           "softmax_collapse", "softmax_collapse_fraction", "spectral_density", "uniformity"]
