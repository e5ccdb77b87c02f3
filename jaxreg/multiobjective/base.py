"""What every aggregator shares: the Jacobian as a pytree, its Gramian, and the optax wrapper.

An aggregator receives the Jacobian of m objectives as a pytree whose leaves are
``[m, *param_shape]`` (``jaxreg.objective.term_gradients`` returns exactly that) and returns
one update with the structure of the parameters. Most methods need only the m x m Gramian
``G = J J^T`` (summed leaf by leaf, so the Jacobian is never flattened) and return weights
``w``, the update being ``J^T w``; ``from_weighting`` packages such a weighting as an
``optax.GradientTransformation``. Every aggregator's state has a ``weights`` field (the weights
of the last call, NaN where the update is not a combination of the current gradients), which
the multi-objective train step logs.

Aggregators go first in a chain: ``optax.chain(jaxreg.multiobjective.upgrad(), optax.adam(1e-3))``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def num_objectives(jacobian) -> int:
    """The common leading axis size m of the Jacobian's leaves; a clear error if they differ."""
    leaves = jax.tree.leaves(jacobian)
    if not leaves:
        raise ValueError("`jacobian` has no leaves")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("every leaf of `jacobian` must have the same leading objective axis "
                         f"m, got leading sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def gramian(jacobian) -> jax.Array:
    """``G_ij = <g_i, g_j>`` summed over leaves, in float32 or wider: ``[m, m]``."""
    num_objectives(jacobian)

    def leaf_gram(x):
        x = jnp.asarray(x).reshape(x.shape[0], -1)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        return x @ x.T

    return sum(leaf_gram(x) for x in jax.tree.leaves(jacobian))


def combine(weights: jax.Array, jacobian):
    """``J^T w``: the weighted sum of the objectives' gradients, leaf by leaf."""
    return jax.tree.map(
        lambda x: jnp.tensordot(weights.astype(jnp.promote_types(x.dtype, jnp.float32)), x,
                                axes=1).astype(x.dtype), jacobian)


class WeightingState(NamedTuple):
    """State of a stateless Gramian weighting: the last weights, for logging."""
    weights: jax.Array


class KeyedState(NamedTuple):
    """State of a randomised aggregator: the last weights (for logging) and its PRNG key."""
    weights: jax.Array
    key: jax.Array


def check_objectives(name: str, expected: int, received: int) -> None:
    """Raises when an aggregator built for ``expected`` objectives receives another number."""
    if received != expected:
        raise ValueError(f"{name} was built for num_objectives={expected} but received "
                         f"{received} objectives")


def accumulation_dtype(tree) -> jnp.dtype:
    """The dtype aggregators compute and keep their state in for parameters ``tree``: the
    widest floating dtype of its leaves, at least float32 (bfloat16 parameters accumulate in
    float32; float64 ones, under ``jax_enable_x64``, in float64). float32 without floating
    leaves."""
    dtypes = [jnp.asarray(leaf).dtype for leaf in jax.tree.leaves(tree)]
    dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return jnp.dtype(jnp.promote_types(jnp.result_type(*dtypes), jnp.float32) if dtypes
                     else jnp.float32)


def initial_weights(num_objectives: int | None, dtype=jnp.float32) -> jax.Array:
    """NaN weights of length ``num_objectives`` (length 0 when unknown: nothing is logged),
    in ``dtype`` (``accumulation_dtype(params)`` in an ``init``).

    State shapes must not change between steps (``lax.scan``, ``jit``), so the weights an
    aggregator logs are sized when it is built.
    """
    return jnp.full((num_objectives or 0,), jnp.nan, dtype)


def logged(weights: jax.Array, previous: jax.Array) -> jax.Array:
    """``weights`` if the state was sized for them, else the (empty) previous value."""
    if previous.shape[0] == 0:
        return previous
    check_objectives("this aggregator", previous.shape[0], weights.shape[0])
    return weights.astype(previous.dtype)


def from_weighting(weighting: Callable[[jax.Array], jax.Array],
                   num_objectives: int | None = None) -> optax.GradientTransformation:
    """An aggregator ``J -> J^T weighting(J J^T)`` as an optax transformation.

    ``weighting`` maps the ``[m, m]`` Gramian to ``[m]`` weights; it must be jittable. With
    ``num_objectives`` given, the state records the last weights (for logging).
    """
    def init(params):
        return WeightingState(weights=initial_weights(num_objectives,
                                                      accumulation_dtype(params)))

    def update(updates, state, params=None):
        del params
        weights = weighting(gramian(updates))
        return combine(weights, updates), WeightingState(logged(weights, state.weights))

    return optax.GradientTransformation(init, update)
