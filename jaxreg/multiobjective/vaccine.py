"""Gradient Vaccine: raise each pair's gradient cosine towards an EMA target.

For each objective i, the other objectives j are visited in a random order. With
``phi = cos(g_i^PC, g_j)`` (the possibly corrected g_i against the original g_j) below the
target ``phi_hat_ij``, a multiple of ``g_j`` is added to ``g_i^PC`` so that the cosine
reaches the target:

    w = ||g_i^PC|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
        / (||g_j|| sqrt(1 - phi_hat^2) + eps),

and the target follows ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi`` (with the cosine
before correction). The update is ``sum_i g_i^PC``. Everything is computed from the Gramian by
tracking the coefficients ``C`` with ``g_i^PC = C_i J`` (whole-model granularity).

Paper: Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
Massively Multilingual Models" (ICLR 2021), arXiv:2010.05874. Matches torchjd ``GradVac``
(beta 0.5, eps 1e-8); the visiting order is drawn from a key kept in the state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import Weighting, check_objectives, from_weighting


def gradvac_weights(gram, targets, orders, *, beta=0.5, eps=1e-8):
    """One GradVac step from the Gramian: ``(weights, new targets)``.

    ``orders[i]`` is a permutation of ``range(m)``; objective i visits the others in that
    order (its own index is skipped).
    """
    m = gram.shape[0]
    orders = jnp.asarray(orders)
    norms_j = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))

    def per_objective(i, carry):
        coeffs, targets = carry

        def visit(k, carry):
            row, targets = carry
            j = orders[i, k]
            norm_i = jnp.sqrt(jnp.maximum(row @ gram @ row, 0.0))
            # a cosine; clipped because a corrected row that has (almost) cancelled gives a
            # quotient of rounding errors in the Gramian form
            phi = jnp.clip((row @ gram[:, j]) / (norm_i * norms_j[j] + eps), -1.0, 1.0)
            target = targets[i, j]
            root_target = jnp.sqrt(jnp.maximum(1.0 - target ** 2, 0.0))
            w = norm_i * (target * jnp.sqrt(jnp.maximum(1.0 - phi ** 2, 0.0))
                          - phi * root_target) / (norms_j[j] * root_target + eps)
            active = (j != i) & (phi < target)
            row = row.at[j].add(jnp.where(active, w, 0.0))
            new_target = jnp.where(j != i, (1.0 - beta) * target + beta * phi, target)
            return row, targets.at[i, j].set(new_target)

        row, targets = jax.lax.fori_loop(0, m, visit, (coeffs[i], targets))
        return coeffs.at[i].set(row), targets

    coeffs, targets = jax.lax.fori_loop(0, m, per_objective,
                                        (jnp.eye(m, dtype=gram.dtype), targets))
    return jnp.sum(coeffs, axis=0), targets


def gradvac(*, beta=0.5, eps=1e-8, seed: int = 0, num_objectives: int | None = None
            ) -> optax.GradientTransformation:
    """GradVac as an optax aggregator (see the module docstring); needs ``num_objectives``."""
    if not num_objectives:
        raise ValueError("gradvac keeps pairwise cosine targets: give `num_objectives`")
    m = num_objectives

    def init(num_objectives, dtype):
        return jnp.zeros((m, m), dtype), jax.random.PRNGKey(seed)  # targets phi_hat, key

    def update(gram, state, values=None):
        targets, key = state
        check_objectives("gradvac", m, gram.shape[0])
        key, draw = jax.random.split(key)
        orders = jax.vmap(lambda k: jax.random.permutation(k, m))(jax.random.split(draw, m))
        weights, targets = gradvac_weights(gram, targets.astype(gram.dtype), orders,
                                           beta=beta, eps=eps)
        return weights, (targets, key)

    return from_weighting(Weighting(init, update), m)
