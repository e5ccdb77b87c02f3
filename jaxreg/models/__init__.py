"""Small Flax models for experiments and tests, used through pure ``init``/``apply``."""

from jaxreg.models.classifiers import CNN, MLP, Model, cnn, mlp

__all__ = ["CNN", "MLP", "Model", "cnn", "mlp"]
