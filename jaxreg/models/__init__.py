"""Small Flax models for experiments and tests, used through pure ``init``/``apply``."""

from jaxreg.models.classifiers import CNN, MLP, Model, cnn, mlp
from jaxreg.models.multitask import MultiTaskModel, multitask_mlp

__all__ = ["CNN", "MLP", "Model", "MultiTaskModel", "cnn", "mlp", "multitask_mlp"]
