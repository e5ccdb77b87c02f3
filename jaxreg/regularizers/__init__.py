"""Penalties: on weights, outputs, smoothness, fairness, domain generalization, transport.

Each returns the penalty already multiplied by its keyword ``strength`` (traceable, like every
numeric hyperparameter); add it to the loss, or return it as a named term of an objective.
"""

from jaxreg.regularizers.domain_generalization import (
    fishr_penalty,
    hessian_alignment,
    irm_penalty,
    vrex_penalty,
)
from jaxreg.regularizers.equivariance import (
    equivariance_error,
    equivariant_projector,
    soft_equivariance,
)
from jaxreg.regularizers.fairness import (
    concatenated_distance_covariance,
    distance_correlation,
    distance_covariance,
    jensen_shannon_calibration,
    jensen_shannon_divergence,
    joint_distance_covariance,
    per_attribute_distance_covariance,
)
from jaxreg.regularizers.lora import lora_orthogonality
from jaxreg.regularizers.outputs import (
    confidence_penalty,
    entropy_minimization,
    feature_distillation,
    flooding,
    knowledge_distillation,
    logit_z_loss,
)
from jaxreg.regularizers.reparameterization import (
    compand,
    compand_inverse,
    init_raw_params,
    init_shape_params,
    weight_compander,
)
from jaxreg.regularizers.smoothness import (
    hessian_trace_penalty,
    input_gradient_penalty,
    jacobian_penalty,
    mixup,
    r1_penalty,
    r2_penalty,
    virtual_adversarial,
)
from jaxreg.regularizers.transport import monge_gap
from jaxreg.regularizers.weights import (
    diagonal_fisher,
    ewc,
    group_lasso,
    l1,
    l2,
    l2_to_anchor,
    orthogonality,
    spectral_norm,
    top_singular_value,
)

# Public helpers that are not penalties (not in the catalog).
HELPERS = ("diagonal_fisher", "top_singular_value", "equivariant_projector",
           "equivariance_error", "compand", "compand_inverse", "init_raw_params",
           "init_shape_params", "distance_correlation", "jensen_shannon_divergence",
           "jensen_shannon_calibration")

__all__ = [
    "compand", "compand_inverse", "concatenated_distance_covariance", "confidence_penalty",
    "diagonal_fisher", "distance_correlation", "distance_covariance", "entropy_minimization",
    "equivariance_error", "equivariant_projector", "ewc", "feature_distillation",
    "fishr_penalty", "flooding", "group_lasso", "hessian_alignment", "hessian_trace_penalty",
    "init_raw_params", "init_shape_params", "input_gradient_penalty", "irm_penalty",
    "jacobian_penalty", "jensen_shannon_calibration", "jensen_shannon_divergence",
    "joint_distance_covariance", "knowledge_distillation", "l1", "l2", "l2_to_anchor",
    "logit_z_loss", "lora_orthogonality", "mixup", "monge_gap", "orthogonality",
    "per_attribute_distance_covariance", "r1_penalty", "r2_penalty", "soft_equivariance",
    "spectral_norm", "top_singular_value", "virtual_adversarial", "vrex_penalty",
    "weight_compander",
]
