"""ConFIG and its momentum form M-ConFIG: updates with equal projections on every objective.

ConFIG takes the direction ``g_u`` whose cosines with the unit gradients ``g_i / ||g_i||`` are
equal (proportional to a preference ``w_hat``; the least-norm solution of ``U d = w_hat``),
and the length ``sum_i g_i^T g_u``. From the Gramian alone: with ``D = diag(||g_i||)``,

    c = D^-1 (D^-1 G D^-1)^+ w_hat,     weights = (1^T G c / c^T G c) c,

so ``J^T weights`` is ConFIG's update without forming ``U`` or a least-squares solve of the
m x n matrix (zero gradients get weight 0, as ``conflictfree``'s ``nan_to_num``).

Paper: Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks" (2024), arXiv:2408.11104. Matches ``conflictfree.grad_operator.ConFIG_update``
(tum-pbs/ConFIG) and torchjd ``ConFIG``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import (
    accumulation_dtype,
    combine,
    from_weighting,
    gramian,
    initial_weights,
)


def config_weights(gram: jax.Array, pref=None) -> jax.Array:
    """ConFIG weights from the Gramian (see the module docstring)."""
    m = gram.shape[0]
    target = jnp.ones(m, gram.dtype) if pref is None else jnp.asarray(pref, gram.dtype)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    inv = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
    unit_gram = inv[:, None] * gram * inv[None, :]
    # singular values below 1e-5 of the largest are rounding noise of a rank-deficient unit
    # Gramian in float32 (e.g. antiparallel gradients): treat them as zero, consistently
    c = inv * (jnp.linalg.pinv(unit_gram, rtol=1e-5, hermitian=True) @ target)
    # U d with d = J^T c: when it reaches almost none of the target the least-squares
    # direction is zero up to rounding (e.g. antiparallel gradients), and so is the update,
    # as conflictfree's unit_vector of a zero vector; the length rule would otherwise
    # rescale rounding noise to full size.
    reached = jnp.linalg.norm(inv * (gram @ c)) > 1e-3 * jnp.linalg.norm(target)
    cgc = c @ gram @ c
    ok = reached & (cgc > 0)
    return jnp.where(ok, jnp.sum(gram @ c) / jnp.where(ok, cgc, 1.0), 0.0) * c


def config(*, pref=None, num_objectives: int | None = None) -> optax.GradientTransformation:
    """ConFIG as an optax aggregator; ``pref`` is ``w_hat`` (ones by default)."""
    return from_weighting(lambda g: config_weights(g, pref), num_objectives)


class MomentumConfigState(NamedTuple):
    weights: jax.Array
    count: jax.Array
    moments: object  # per-objective first moments, leaves [m, ...]
    fake_moment: object  # the first moment implied by the ConFIG directions
    second_moment: object


def momentum_config(*, beta1=0.9, beta2=0.999, eps=1e-8, num_objectives: int | None = None
                    ) -> optax.GradientTransformation:
    """M-ConFIG: ConFIG on bias-corrected per-objective momenta, with an Adam-like scaling.

    Per step, with every objective's gradient available (``conflictfree``'s
    ``PseudoMomentumOperator`` also allows a subset per step; here all are updated):

        m_i <- beta1 m_i + (1 - beta1) g_i;        g_c = ConFIG(m_i / (1 - beta1^t))
        f_t = g_c (1 - beta1^t);  fake_grad = (f_t - beta1 f_{t-1}) / (1 - beta1)
        s <- beta2 s + (1 - beta2) fake_grad^2;    update = g_c / (sqrt(s / (1 - beta2^t)) + eps)

    Follow it with plain SGD (the authors advise against Adam on top). Matches
    ``conflictfree.momentum_operator.PseudoMomentumOperator`` with the default ConFIG
    operator. Paper: see the module docstring.
    """
    if not num_objectives:
        raise ValueError("momentum_config keeps per-objective momenta: give `num_objectives`")

    def init(params):
        # Moments in float32 or wider (bfloat16 parameters accumulate in float32, float64 ones
        # in float64); the update has the gradients' dtype.
        def wide(p):
            return jnp.promote_types(p.dtype, jnp.float32)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, wide(p)), params)
        return MomentumConfigState(
            initial_weights(num_objectives, accumulation_dtype(params)), jnp.zeros((), jnp.int32),
            jax.tree.map(lambda p: jnp.zeros((num_objectives, *p.shape), wide(p)), params),
            zeros, zeros)

    def update(updates, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(accumulation_dtype(updates))  # float64 bias corrections in x64
        moments = jax.tree.map(lambda m, g: (beta1 * m + (1 - beta1) * g).astype(m.dtype),
                               state.moments, updates)
        corrected = jax.tree.map(lambda m: m / (1 - beta1 ** t), moments)
        weights = config_weights(gramian(corrected))
        direction = combine(weights, corrected)
        fake = jax.tree.map(lambda d: d * (1 - beta1 ** t), direction)
        fake = jax.tree.map(lambda f, prev: f.astype(prev.dtype), fake, state.fake_moment)
        fake_grad = jax.tree.map(lambda f, prev: (f - beta1 * prev) / (1 - beta1), fake,
                                 state.fake_moment)
        second = jax.tree.map(lambda s, g: (beta2 * s + (1 - beta2) * g ** 2).astype(s.dtype),
                              state.second_moment, fake_grad)
        out = jax.tree.map(lambda d, s, g: (d / (jnp.sqrt(s / (1 - beta2 ** t)) + eps)
                                            ).astype(g.dtype), direction, second, updates)
        return out, MomentumConfigState(jnp.full_like(state.weights, jnp.nan), count, moments,
                                        fake, second)

    return optax.GradientTransformation(init, update)
