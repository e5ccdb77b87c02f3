"""Bloop: gradient surgery for a main objective and auxiliary ones, with an EMA.

Bilevel view: minimise the auxiliary loss among the minimisers of the main loss. The update
follows the main gradient plus the part of the auxiliary gradient orthogonal to an
exponential moving average ``m`` of the main gradient (not of the current one, which is too
noisy on mini-batches):

    m     <- m + ema (g_main - m)
    ratio  = <m, g_aux> / (||m||^2 + eps)            (eps = 1e-7)
    d      = scale (g_main + lbda (g_aux - ratio m))

with ``scale = 1`` (or ``1 / (1 + lbda)`` with ``rescale``). Variants of the reference, behind
flags: ``dynamic_barrier`` clips ``ratio`` at ``1 / lbda``; ``use_ratio_only`` keeps the ratio
but moves along the current main gradient, ``d = scale ((1 - lbda ratio) g_main + lbda g_aux)``.

Paper: Hsieh, Thornton, Ndiaye, Klein, Cuturi, Ablin, "Careful with that Scalpel: Improving
Gradient Surgery with an EMA" (ICML 2024), arXiv:2402.02998. Matches ``apple/ml-bloop``
``src/bloop/optim.py`` (``init_bloop``, ``bloop_direction``, ``dynamic_barrier_direction``,
``utils.tree_proj`` and ``utils.update_ema``) with these departures:

* ``rescale``: the reference's ``_bloop_direction_general`` computes
  ``scale = (1.0 / 1.0 + lbda)``, which is ``1 + lbda`` by operator precedence; here it is
  ``1 / (1 + lbda)``, as in the reference's own ``mixed_direction`` and ``pcgrad_direction``.
  With an optimizer after it, the difference is a constant factor on the learning rate.
* ``init="grad"``: the reference copies the template handed to ``init_bloop`` (its ImageNet
  example hands it the parameters); an optax ``init`` sees no gradient, so here the EMA starts
  at the first main gradient it receives.
* Objectives: the first is the main one; the reference takes one auxiliary gradient, and
  several are summed here (the auxiliary loss is their sum; with one auxiliary this is the
  reference exactly).

The default ``init="zeros"`` is the reference README's (``init_bloop``'s own default is
``"grad"``). The objectives' order must put the main one first
(``make_step(..., term_order=("main", "aux"))``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import (
    accumulation_dtype,
    check_objectives,
    initial_weights,
    logged,
)
from jaxreg.multiobjective.base import num_objectives as count_objectives

INITS = ("zeros", "grad", "random")


class BloopState(NamedTuple):
    """``weights``: ``(1 - lbda ratio, lbda, ...) * scale`` with ``use_ratio_only`` (the update
    is then a combination of the current gradients), else NaN; ``main_ema``: ``m``, with the
    parameters' structure; ``count``: steps taken."""
    weights: jax.Array
    main_ema: optax.Updates
    count: jax.Array


def _wide(tree):
    return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)


def _random_ema(seed, params):
    """The reference's ``random_init_ema``: one standard normal draw per leaf, in leaf order."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, jnp.shape(x)).astype(x.dtype)
                              for k, x in zip(keys, leaves)])


def _initial_ema(init, seed, params):
    if init == "random":
        return _random_ema(seed, params)
    return jax.tree.map(jnp.zeros_like, params)


def _updated_ema(state, main, ema, init):
    """``m + ema (g_main - m)``, in the state's dtype; ``"grad"`` starts ``m`` at ``g_main``."""
    previous = state.main_ema
    if init == "grad":
        previous = jax.tree.map(lambda e, g: jnp.where(state.count == 0, g, e).astype(e.dtype),
                                previous, main)
    return jax.tree.map(lambda e, g: (e + ema * (g - e)).astype(e.dtype), previous, main)


def _check_objectives(updates, expected) -> int:
    m = count_objectives(updates)
    if m < 2:
        raise ValueError(f"bloop needs a main objective and at least one auxiliary one, got {m} "
                         "objective(s)")
    if expected is not None:
        check_objectives("bloop", expected, m)
    return m


def bloop(*, lbda=0.1, ema=0.1, init: str = "zeros", use_ratio_only: bool = False,
          rescale: bool = False, dynamic_barrier: bool = False, eps=1e-7, seed: int = 0,
          num_objectives: int | None = 2) -> optax.GradientTransformation:
    """Bloop as an optax aggregator (see the module docstring).

    Args:
        lbda: weight of the projected auxiliary gradient.
        ema: weight of the new main gradient in the EMA (1 keeps only the current one).
        init: the EMA's start: ``"zeros"``, ``"grad"`` (the first main gradient) or
            ``"random"`` (standard normal, drawn from ``seed``).
        use_ratio_only: the reference's variant moving along the current main gradient.
        rescale: multiply the direction by ``1 / (1 + lbda)``.
        dynamic_barrier: clip the ratio at ``1 / lbda`` (``dynamic_barrier_direction``).
        eps: added to ``||m||^2``.
        seed: for ``init="random"``.
        num_objectives: main + auxiliaries (at least 2); ``None`` accepts any count and logs
            no weights.

    Returns:
        An ``optax.GradientTransformation`` taking the Jacobian (leaves ``[m, *shape]``, main
        objective first) and returning the direction with the parameters' structure.
    """
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}, got {init!r}")
    if num_objectives is not None and num_objectives < 2:
        raise ValueError("bloop needs a main objective and at least one auxiliary one: "
                         f"`num_objectives` must be at least 2, got {num_objectives}")

    def init_fn(params):
        return BloopState(initial_weights(num_objectives, accumulation_dtype(params)),
                          _initial_ema(init, seed, params),
                          jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None):
        del params
        m_objectives = _check_objectives(updates, num_objectives)
        main = jax.tree.map(lambda x: x[0], updates)
        aux = jax.tree.map(lambda x: jnp.sum(x[1:], axis=0), updates)
        main_ema = _updated_ema(state, main, ema, init)
        wide_ema = _wide(main_ema)
        ratio = optax.tree.vdot(wide_ema, _wide(aux)) / (optax.tree.vdot(wide_ema, wide_ema) + eps)
        if dynamic_barrier:
            ratio = jnp.minimum(ratio, 1.0 / lbda)
        scale = 1.0 / (1.0 + lbda) if rescale else 1.0
        if use_ratio_only:
            direction = jax.tree.map(
                lambda g, a: (scale * ((1.0 - lbda * ratio) * g + lbda * a)).astype(g.dtype),
                main, aux)
            weights = scale * jnp.concatenate([jnp.reshape(1.0 - lbda * ratio, (1,)),
                                               jnp.full((m_objectives - 1,), lbda)])
        else:
            direction = jax.tree.map(
                lambda g, a, e: (scale * (g + lbda * (a - ratio * e))).astype(g.dtype),
                main, aux, main_ema)
            weights = jnp.full((m_objectives,), jnp.nan)
        return direction, BloopState(logged(weights, state.weights), main_ema,
                                     optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)
