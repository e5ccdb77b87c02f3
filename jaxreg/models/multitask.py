"""A shared MLP trunk with one linear head per task, for multi-task experiments.

Exposed as pure functions: ``init(key)``, ``apply(params, x) -> {task: output}``, and the two
halves ``encode(params, x) -> features`` and ``heads(params, features) -> {task: output}``
that MGDA-UB style training (aggregating on the shared representation) needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class _Trunk(nn.Module):
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return x


class MultiTaskModel(NamedTuple):
    init: Callable
    apply: Callable
    encode: Callable
    heads: Callable


def multitask_mlp(input_shape: Sequence[int], outputs: Mapping[str, int],
                  hidden: Sequence[int] = (128, 128)) -> MultiTaskModel:
    """A trunk of Dense-ReLU layers and, per task, a Dense head of ``outputs[task]`` units."""
    trunk = _Trunk(tuple(hidden))
    heads = {task: nn.Dense(size) for task, size in outputs.items()}

    def init(key):
        keys = jax.random.split(key, len(heads) + 1)
        trunk_params = trunk.init(keys[0], jnp.zeros((1, *input_shape)))
        features = jnp.zeros((1, hidden[-1]))
        return {"trunk": trunk_params,
                **{t: h.init(k, features) for (t, h), k in zip(heads.items(), keys[1:])}}

    def encode(params, x):
        return trunk.apply(params["trunk"], x)

    def apply_heads(params, features):
        return {t: h.apply(params[t], features) for t, h in heads.items()}

    return MultiTaskModel(init=init, apply=lambda p, x: apply_heads(p, encode(p, x)),
                          encode=encode, heads=apply_heads)
