"""Optimizers (optax transformations) that jaxreg adds to optax."""

from jaxreg.optim.multi_adam import multi_adam
from jaxreg.optim.scale_invariant import adamp, scale_by_adamp, scale_by_sgdp, sgdp
from jaxreg.optim.weight_decay import decay_to_anchor, decoupled_weight_decay, orthogonal_gradient

__all__ = ["adamp", "decay_to_anchor", "decoupled_weight_decay", "multi_adam",
           "orthogonal_gradient", "scale_by_adamp", "scale_by_sgdp", "sgdp"]
