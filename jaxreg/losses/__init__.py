"""Per-example losses: pure functions of predictions and targets, unreduced.

Every function here is in ``jaxreg.catalog`` with its paper and the reference it matches.
Modules by family: ``classification``, ``noisy_labels``, ``self_distillation``,
``contrastive`` (InfoNCE/CLIP, SupCon, DCL, alignment and uniformity), ``metric`` (pair and
proxy losses, margin-softmax heads, GE2E), ``self_supervised`` (Barlow Twins, VICReg, W-MSE,
SimSiam/BYOL, DINO, SwAV, KoLeo), ``chunked`` (the softmax contrastive losses in memory
linear in the batch, and the gradient cache). Batch-level losses return the per-anchor losses
where the reference averages over anchors and a scalar where it is a statistic of the batch;
they take ``axis_name`` to gather the global batch across devices.
"""

from jaxreg.losses.chunked import (
    chunked_decoupled_contrastive,
    chunked_info_nce,
    chunked_supervised_contrastive,
    gradient_cache,
)
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
from jaxreg.losses.contrastive import (
    alignment,
    clip,
    decoupled_contrastive,
    decoupled_contrastive_weighted,
    info_nce,
    pair_contrastive,
    supervised_contrastive,
    uniformity,
)
from jaxreg.losses.metric import (
    AdaFaceState,
    adaface,
    adaface_init,
    additive_margin_softmax,
    arcface,
    circle,
    cosface,
    ge2e,
    multi_similarity,
    proxy_anchor,
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
from jaxreg.losses.self_supervised import (
    barlow_twins,
    dino,
    koleo,
    mixed_barlow_twins,
    mixup_views,
    negative_cosine,
    sinkhorn_knopp,
    swav,
    vicreg,
    w_mse,
    whiten,
)

__all__ = [
    "AdaFaceState", "active_passive", "adaface", "adaface_init", "additive_margin_softmax",
    "alignment", "arcface", "asymmetric", "barlow_twins", "chunked_decoupled_contrastive",
    "chunked_info_nce", "chunked_supervised_contrastive", "circle", "clip", "comp_sum",
    "cosface", "cross_entropy", "decoupled_contrastive",
    "decoupled_contrastive_weighted", "dino", "elr", "encouraging", "ge2e",
    "generalized_cross_entropy", "gradient_cache", "harmonic", "info_nce",
    "initial_predictions", "koleo",
    "label_distributionally_robust", "ldam", "logit_adjusted", "mae", "mixed_barlow_twins",
    "mixup_views", "multi_similarity", "negative_cosine", "normalized_cross_entropy",
    "normalized_focal", "normalized_generalized_cross_entropy", "pair_contrastive",
    "poly1_cross_entropy",
    "poly1_focal", "progressive_self_distillation", "proxy_anchor", "pskd_alpha",
    "reverse_cross_entropy", "sigmoid_focal", "sinkhorn_knopp", "softmax_focal",
    "spherical_z_loss", "squentropy", "stablemax_cross_entropy", "supervised_contrastive",
    "swav", "symmetric_cross_entropy", "uniformity", "vicreg", "w_mse", "whiten",
]
