"""Diagnostics: Hessian tools and training-dynamics metrics."""

from jaxreg.diagnostics.collapse import softmax_collapse, softmax_collapse_fraction
from jaxreg.diagnostics.hessian import hessian_top_eigenvalue, hessian_trace, hvp

__all__ = ["hessian_top_eigenvalue", "hessian_trace", "hvp", "softmax_collapse",
           "softmax_collapse_fraction"]
