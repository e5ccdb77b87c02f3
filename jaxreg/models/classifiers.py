"""An MLP and a small CNN in Flax, exposed as pure ``init(key)`` / ``apply(params, x)`` pairs.

Pure functions of ``(key)`` and ``(params, x)`` are what ``jax.vmap`` needs to train a grid of
models as one program: ``jax.vmap(model.init)(keys)`` gives stacked parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class Model(NamedTuple):
    """A model as two pure functions."""
    init: Callable[[jax.Array], dict]
    apply: Callable[[dict, jax.Array], jax.Array]


class MLP(nn.Module):
    """Flattens its input, then Dense-ReLU layers and a linear head."""
    hidden: Sequence[int]
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_outputs)(x)


class CNN(nn.Module):
    """Conv(3x3)-ReLU blocks with 2x2 average pooling, global mean pooling, linear head."""
    channels: Sequence[int]
    num_outputs: int

    @nn.compact
    def __call__(self, x):
        for width in self.channels:
            x = nn.relu(nn.Conv(width, (3, 3))(x))
            if min(x.shape[1:3]) >= 2:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_outputs)(x.mean(axis=(1, 2)))


def _pure(module: nn.Module, input_shape: Sequence[int]) -> Model:
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    return Model(init=lambda key: module.init(key, dummy), apply=module.apply)


def mlp(input_shape: Sequence[int], num_outputs: int, hidden: Sequence[int] = (256, 256)) -> Model:
    """An MLP over inputs of shape ``input_shape`` (without the batch axis)."""
    return _pure(MLP(tuple(hidden), num_outputs), input_shape)


def cnn(input_shape: Sequence[int], num_outputs: int, channels: Sequence[int] = (32, 64)) -> Model:
    """A small CNN over NHWC images of shape ``input_shape`` (without the batch axis)."""
    if len(input_shape) != 3:
        raise ValueError(f"`input_shape` must be (height, width, channels), got {input_shape}")
    return _pure(CNN(tuple(channels), num_outputs), input_shape)
