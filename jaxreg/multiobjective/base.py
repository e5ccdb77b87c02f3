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

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

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


class Weighting(NamedTuple):
    """A weighting: the objectives' weights ``w`` from their ``[m, m]`` Gramian (and, for the
    loss-weighting methods, their values) alone.

    ``init(num_objectives, dtype) -> state`` and ``update(gram, state, values) -> (weights,
    state)``, both jittable; ``state`` is what the method carries between steps (``()`` for
    most; a PRNG key for random orders, a warm start for an iterative solver, EMA targets for
    GradVac, loss histories for DWA and FAMO); ``values`` are the m objectives' values at this
    step (None where the caller has none). ``num_objectives`` may be None for methods whose
    state does not depend on it. ``uses_gramian=False`` marks a weighting that reads only the
    values (a scalarization): the train step then skips the Gramian and takes one backward
    pass of ``w^T f``.

    An aggregator built from a weighting (:func:`from_weighting`) gives ``J^T w``; the train
    step can also get ``w`` without ever forming ``J`` (``make_step(engine="gramian")``).
    """
    init: Callable[[int | None, jnp.dtype], Any]
    update: Callable[[jax.Array | None, Any, jax.Array | None], tuple[jax.Array, Any]]
    uses_gramian: bool = True


def stateless(weights_fn: Callable[[jax.Array], jax.Array]) -> Weighting:
    """The :class:`Weighting` of a pure function ``gram -> weights``."""
    return Weighting(lambda num_objectives, dtype: (),
                     lambda gram, state, values=None: (weights_fn(gram), state))


def keyed(weights_fn: Callable[[jax.Array, jax.Array], jax.Array], seed: int) -> Weighting:
    """The :class:`Weighting` of ``(gram, key) -> weights`` drawing a fresh key each call from
    a key kept in the state (seeded by ``seed``), so runs are reproducible."""
    def update(gram, key, values=None):
        key, draw = jax.random.split(key)
        return weights_fn(gram, draw), key

    return Weighting(lambda num_objectives, dtype: jax.random.PRNGKey(seed), update)


class WeightingState(NamedTuple):
    """State of an aggregator built from a weighting: the last weights (for logging; sized
    by ``num_objectives``) and the weighting's own state."""
    weights: jax.Array
    inner: Any = ()


_WEIGHTING_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weighting_of(aggregator) -> Weighting | None:
    """The :class:`Weighting` an aggregator was built from (None for an aggregator that needs
    the Jacobian itself, such as GradDrop, GradNorm, Bloop, M-ConFIG and group-wise
    aggregation)."""
    update = getattr(aggregator, "update", None)
    try:
        return _WEIGHTING_OF.get(update)
    except TypeError:  # not weak-referenceable: not ours
        return None


def weighting_update(weighting: Weighting, gram: jax.Array | None, state: WeightingState,
                     values: jax.Array | None = None) -> tuple[jax.Array, WeightingState]:
    """One call of ``weighting`` on ``gram`` (and ``values``) inside an aggregator's state:
    ``(weights, new state)``, the logged weights and the inner state kept in their dtypes."""
    weights, inner = weighting.update(gram, state.inner, values)
    inner = jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), inner, state.inner)
    return weights, WeightingState(logged(weights, state.weights), inner)


def from_weighting(weighting: Weighting | Callable[[jax.Array], jax.Array],
                   num_objectives: int | None = None) -> optax.GradientTransformation:
    """An aggregator ``J -> J^T w``, ``w`` from ``weighting`` applied to ``J J^T``, as an
    optax transformation.

    ``weighting`` is a :class:`Weighting` or a jittable function ``gram -> weights``. With
    ``num_objectives`` given, the state records the last weights (for logging).
    """
    if not isinstance(weighting, Weighting):
        if not callable(weighting):
            raise TypeError("`weighting` must be a Weighting or a function gram -> weights, "
                            f"got {type(weighting).__name__}")
        weighting = stateless(weighting)

    def init(params):
        dtype = accumulation_dtype(params)
        return WeightingState(initial_weights(num_objectives, dtype),
                              weighting.init(num_objectives, dtype))

    def update(updates, state, params=None, *, values=None, **extra_args):
        del params, extra_args
        gram = gramian(updates) if weighting.uses_gramian else None
        weights, state = weighting_update(weighting, gram, state, values)
        return combine(weights, updates), state

    _WEIGHTING_OF[update] = weighting
    return optax.GradientTransformationExtraArgs(init, update)
