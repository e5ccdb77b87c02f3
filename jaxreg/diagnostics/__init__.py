"""Diagnostics: Hessian tools and training-dynamics metrics."""

from jaxreg.diagnostics.collapse import softmax_collapse, softmax_collapse_fraction
from jaxreg.diagnostics.hessian import (
    hessian_spectral_density,
    hessian_top_eigenvalue,
    hessian_trace,
    hvp,
    spectral_density,
)

__all__ = ["hessian_spectral_density", "hessian_top_eigenvalue", "hessian_trace", "hvp",
           "softmax_collapse", "softmax_collapse_fraction", "spectral_density"]
