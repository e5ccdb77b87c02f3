"""Flax models for experiments and tests, used through pure ``init``/``apply``."""

from jaxreg.models.classifiers import CNN, MLP, Model, cnn, mlp
from jaxreg.models.multitask import MultiTaskModel, multitask_mlp
from jaxreg.models.transformer import (
    Transformer,
    TransformerConfig,
    flops_per_token,
    parameter_count,
    transformer,
)

__all__ = ["CNN", "MLP", "Model", "MultiTaskModel", "Transformer", "TransformerConfig", "cnn",
           "flops_per_token", "mlp", "multitask_mlp", "parameter_count", "transformer"]
