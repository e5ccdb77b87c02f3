"""Per-example losses: pure functions of predictions and targets, unreduced.

Every function here is in ``jaxreg.catalog`` with its paper and the reference it matches.
"""

from jaxreg.losses.classification import (
    asymmetric,
    comp_sum,
    cross_entropy,
    encouraging,
    harmonic,
    label_distributionally_robust,
    ldam,
    logit_adjusted,
    poly1_cross_entropy,
    poly1_focal,
    sigmoid_focal,
    softmax_focal,
    spherical_z_loss,
    squentropy,
    stablemax_cross_entropy,
)
from jaxreg.losses.noisy_labels import (
    active_passive,
    elr,
    generalized_cross_entropy,
    mae,
    normalized_cross_entropy,
    normalized_focal,
    normalized_generalized_cross_entropy,
    reverse_cross_entropy,
    symmetric_cross_entropy,
)
from jaxreg.losses.self_distillation import (
    initial_predictions,
    progressive_self_distillation,
    pskd_alpha,
)

__all__ = [
    "active_passive", "asymmetric", "comp_sum", "cross_entropy", "elr", "encouraging",
    "generalized_cross_entropy", "harmonic", "initial_predictions",
    "label_distributionally_robust", "ldam", "logit_adjusted", "mae",
    "normalized_cross_entropy", "normalized_focal", "normalized_generalized_cross_entropy",
    "poly1_cross_entropy", "poly1_focal", "progressive_self_distillation", "pskd_alpha",
    "reverse_cross_entropy", "sigmoid_focal", "softmax_focal", "spherical_z_loss",
    "squentropy", "stablemax_cross_entropy", "symmetric_cross_entropy",
]
