"""Diagnostics: Hessian tools, calibration, training-dynamics metrics and representation
probes."""

from jaxreg.diagnostics.calibration import aurc, expected_calibration_error
from jaxreg.diagnostics.collapse import softmax_collapse, softmax_collapse_fraction
from jaxreg.diagnostics.hessian import (
    hessian_spectral_density,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    spectral_density,
)
from jaxreg.diagnostics.landscape import (
    filter_normalized_direction,
    linear_mode_connectivity,
    loss_landscape,
    plot_landscape,
)
from jaxreg.diagnostics.probes import (
    effective_rank,
    knn_accuracy,
    linear_probe,
    normalized_std,
)
from jaxreg.diagnostics.representation import alignment, neural_collapse, uniformity
from jaxreg.diagnostics.sensitivity import learning_rate_sensitivity

__all__ = ["alignment", "aurc", "effective_rank", "expected_calibration_error",
           "filter_normalized_direction", "hessian_spectral_density", "hessian_top_eigenvalue",
           "hessian_trace", "hvp",
           "knn_accuracy", "learning_rate_sensitivity", "linear_mode_connectivity",
           "linear_probe", "loss_landscape", "neural_collapse", "normalized_std",
           "plot_landscape", "softmax_collapse", "softmax_collapse_fraction", "spectral_density",
           "uniformity"]
