"""Gradient surgery: PCGrad (project conflicting gradients) and GradDrop (sign dropout)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import (
    KeyedState,
    accumulation_dtype,
    from_weighting,
    initial_weights,
    keyed,
)


def pcgrad_weights(gram: jax.Array, orders: jax.Array) -> jax.Array:
    """PCGrad weights from the Gramian, visiting the others in ``orders[i]`` for objective i.

    Tracking ``g_i^PC = C_i J``: for each j (j != i), if ``<g_i^PC, g_j> < 0`` then
    ``C_ij -= <g_i^PC, g_j> / ||g_j||^2`` (projection on the original g_j); the update is
    ``sum_i g_i^PC`` (torchjd's Gramian form of Yu et al., Algorithm 1).
    """
    m = gram.shape[0]
    diag = jnp.diag(gram)
    orders = jnp.asarray(orders)

    def per_objective(i):
        def visit(k, row):
            j = orders[i, k]
            inner = row @ gram[:, j]
            hit = (j != i) & (inner < 0) & (diag[j] > 0)
            return row.at[j].add(jnp.where(hit, -inner / jnp.where(diag[j] > 0, diag[j], 1.0),
                                           0.0))

        return jax.lax.fori_loop(0, m, visit, jax.nn.one_hot(i, m, dtype=gram.dtype))

    return jnp.sum(jax.vmap(per_objective)(jnp.arange(m)), axis=0)


def _orders(key, m):
    return jax.vmap(lambda k: jax.random.permutation(k, m))(jax.random.split(key, m))


def pcgrad(*, seed: int = 0, num_objectives: int | None = None) -> optax.GradientTransformation:
    """PCGrad: each gradient loses its component along every gradient it conflicts with.

    For each objective i, the others are visited in a fresh random order (from the key in
    the state); with two objectives the result is deterministic and equals UPGrad with
    preference (1, 1) and no normalisation.

    Paper: Yu et al., "Gradient Surgery for Multi-Task Learning" (NeurIPS 2020),
    arXiv:2001.06782, Algorithm 1 (sum of the projected gradients). Matches torchjd
    ``PCGrad``.
    """
    return from_weighting(
        keyed(lambda gram, key: pcgrad_weights(gram, _orders(key, gram.shape[0])), seed),
        num_objectives)


def graddrop_direction(jacobian, uniform, *, leak=0.0):
    """GradDrop's update given the uniform draws ``uniform`` (same structure, no m axis).

    ``P = (1 + sum_i g_i / sum_i |g_i|) / 2`` element-wise; objective i keeps its positive
    entries where ``P > U`` and its negative ones where ``P < U``; ``d = sum_i (leak +
    (1 - leak) M_i) g_i``.
    """
    def leaf(g, u):
        total = jnp.sum(jnp.abs(g), axis=0)
        purity = 0.5 * (1.0 + jnp.sum(g, axis=0) / jnp.where(total > 0, total, 1.0))
        keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
        return jnp.sum((leak + (1.0 - leak) * keep.astype(g.dtype)) * g, axis=0)

    return jax.tree.map(leaf, jacobian, uniform)


def graddrop(*, leak=0.0, seed: int = 0, num_objectives: int | None = None
             ) -> optax.GradientTransformation:
    """GradDrop: keep, element by element, only the gradients of one sign, chosen at random
    with probability given by the sign purity of the element.

    Applied to the parameters' gradients as torchjd does (the paper applies it to
    activation gradients). Not a weighting of whole gradients: its logged weights are NaN.

    Paper: Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
    Sign Dropout" (NeurIPS 2020), arXiv:2010.06808. Matches torchjd ``GradDrop`` (identity
    ``f``, one uniform draw per element per call).
    """
    def init(params):
        return KeyedState(initial_weights(num_objectives, accumulation_dtype(params)),
                          jax.random.PRNGKey(seed))

    def update(updates, state, params=None):
        del params
        key, draw = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(draw, len(leaves))
        uniform = treedef.unflatten([jax.random.uniform(k, x.shape[1:], jnp.float32)
                                     for k, x in zip(keys, leaves)])
        return graddrop_direction(updates, uniform, leak=leak), KeyedState(state.weights, key)

    return optax.GradientTransformation(init, update)
