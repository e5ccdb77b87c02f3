"""MultiAdam: one set of Adam moments per loss group, combined into one step.

With per-group gradients ``g_k`` (the leading axis of the Jacobian the transformation
receives) and group weights ``w_k`` (``1/m`` by default):

    m_k <- b1 m_k + (1 - b1) g_k;   v_k <- b2 v_k + (1 - b2) g_k^2
    update = -lr / (1 - b1^t) * sum_k w_k m_k / (sqrt(v_k) / sqrt(1 - b2^t) + eps)

so each loss is normalised by its own second moment, which balances losses of very
different scales (PINN residual and boundary terms).

Paper: Yao et al., "MultiAdam: Parameter-wise Scale-invariant Optimizer for Multiscale
Training of Physics-informed Neural Networks" (ICML 2023), arXiv:2306.02816. Matches
``i207M/PINNacle`` ``src/optimizer/multiadam.py`` (its order of the bias corrections and
``eps`` placement; defaults ``betas=(0.99, 0.99)``, ``eps=1e-8``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class MultiAdamState(NamedTuple):
    weights: jax.Array  # the group weights
    count: jax.Array
    mu: object  # first moments, leaves [m, ...]
    nu: object  # second moments, leaves [m, ...]


def multi_adam(learning_rate=1e-3, *, b1=0.99, b2=0.99, eps=1e-8, group_weights=None,
               num_objectives: int | None = None) -> optax.GradientTransformation:
    """MultiAdam as an optax transformation taking the Jacobian (see the module docstring).

    ``learning_rate`` may be a number, a traced array or an optax schedule. Give the result
    to ``make_step(..., aggregator=...)`` followed by ``optax.identity()``: it is the whole
    optimizer.
    """
    if not num_objectives:
        raise ValueError("multi_adam keeps moments per loss group: give `num_objectives`")
    m = num_objectives

    def init(params):
        weights = (jnp.full(m, 1.0 / m) if group_weights is None
                   else jnp.asarray(group_weights, jnp.float32))
        if weights.shape != (m,):
            raise ValueError(f"`group_weights` must have {m} values, got shape {weights.shape}")
        stacked = jax.tree.map(lambda p: jnp.zeros((m, *p.shape), p.dtype), params)
        return MultiAdamState(weights.astype(jnp.float32), jnp.zeros((), jnp.int32), stacked,
                              stacked)

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        mu = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g ** 2, state.nu, updates)

        def step(mu_leaf, nu_leaf):
            per_group = mu_leaf / (jnp.sqrt(nu_leaf) / jnp.sqrt(1 - b2 ** t) + eps)
            combined = jnp.tensordot(state.weights.astype(per_group.dtype), per_group, axes=1)
            return -lr / (1 - b1 ** t) * combined

        return jax.tree.map(step, mu, nu), MultiAdamState(state.weights, count, mu, nu)

    return optax.GradientTransformation(init, update)
