"""Optimizers (optax transformations) that jaxreg adds to optax."""

from jaxreg.optim.multi_adam import multi_adam

__all__ = ["multi_adam"]
