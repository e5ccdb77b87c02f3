"""Bloop: gradient surgery for a main objective and an auxiliary one, with an EMA.

Bilevel view: minimise the auxiliary loss among the minimisers of the main loss. The update
follows the main gradient plus the part of the auxiliary gradient orthogonal to an
exponential moving average ``m`` of the main gradient:

    m <- m + ema (g_main - m)
    d  = g_main + lbda (g_aux - <m, g_aux> / (||m||^2 + 1e-7) m)

Paper: Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an EMA"
(ICML 2024), arXiv:2402.02998. Matches ``apple/ml-bloop`` ``bloop_direction`` (EMA initialised
at zero as in its README, ``rescale=False``); the objectives' order must put the main one
first (``make_step(..., term_order=("main", "aux"))``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import initial_weights, num_objectives as count_objectives
from jaxreg.multiobjective.base import tree_vdot


class BloopState(NamedTuple):
    weights: jax.Array  # NaN: the update is not a combination of the current gradients only
    main_ema: object


def bloop(*, lbda=0.1, ema=0.1, num_objectives: int = 2) -> optax.GradientTransformation:
    """Bloop as an optax aggregator over exactly two objectives, the main one first."""
    if num_objectives != 2:
        raise ValueError("bloop takes a main and one auxiliary objective: num_objectives must "
                         f"be 2, got {num_objectives}")

    def init(params):
        return BloopState(initial_weights(2), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        if count_objectives(updates) != 2:
            raise ValueError("bloop takes exactly two objectives (main first), got "
                             f"{count_objectives(updates)}")
        main = jax.tree.map(lambda x: x[0], updates)
        aux = jax.tree.map(lambda x: x[1], updates)
        m = jax.tree.map(lambda e, g: e + ema * (g - e), state.main_ema, main)
        ratio = tree_vdot(m, aux) / (tree_vdot(m, m) + 1e-7)
        direction = jax.tree.map(lambda g, a, e: g + lbda * (a - ratio * e), main, aux, m)
        return direction, BloopState(state.weights, m)

    return optax.GradientTransformation(init, update)
