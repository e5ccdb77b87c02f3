"""jaxreg: regularizers, robust losses and multi-objective gradient methods in JAX."""

__version__ = "0.1.0"
