"""Priority-Constrained Descent: follow a primary objective, guaranteeing progress to the
others.

The first objective is the primary one. With the normalised gradients ``g~_i = s_i g_i``
(``s_i = 1 / sqrt(v_i + eps)``, ``v_i`` the bias-corrected EMA of ``||g_i||^2`` with decay
``beta``), PCD takes

    d~ = argmin_d 1/2 ||d - g~_1||^2   s.t.   g~_j^T d >= tau_j ||g~_j||^2,   j = 2..m,

and rescales ``d~`` to the norm of ``g_1``. By the KKT conditions ``d~ = g~_1 + sum_j mu_j
g~_j`` with multipliers ``mu >= 0`` solving the dual QP ``min_{mu >= 0} 1/2 mu^T G~_s mu -
b^T mu`` (``G~_s`` the secondary block of the normalised Gramian, ``b_j = tau_j G~_jj -
G~_j1``), so everything is read from the Gramian and the update is ``J^T w``.

The dual QP is solved, as in torchjd, by Goldfarb and Idnani's dual active-set method for an
identity Hessian: add the most violated constraint, dropping the active ones whose
multipliers would turn negative, until all hold; here as one ``lax.while_loop`` over masks
(each iteration one masked m x m solve), jittable, in the Gramian's dtype (float32, or
float64 under x64; torchjd solves in float64 on the CPU, with thresholds from the input's
dtype, as here). Infeasible constraints (a violated constraint whose gradient is a
combination of the active ones with no multiplier to decrease) give ``w = e_1``: the
primary gradient.

Paper: "Not All Objectives Are Born Equal: Priority-Constrained Descent for
Hierarchical Multi-Objective Optimization" (TMLR 2026), arXiv:2606.29521 (as torchjd cites
it), its constrained problem above (the reference code enumerates working sets, its
Appendix B.2). Matches torchjd ``PCD``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import _validate
from jaxreg.multiobjective.base import Weighting, check_objectives, from_weighting


def solve_pcd_qp(gram: jax.Array, taus: jax.Array, *, tol: float = 1e-9,
                 dependence_tol: float = 1e-9, max_iters: int | None = None) -> jax.Array:
    """PCD's QP on a (normalised) Gramian ``G`` whose first row is the primary objective:
    the weights ``[1, mu_2, ..., mu_m]`` of ``d = sum_i w_i g_i``, or ``e_1`` when the
    constraints are infeasible.

    Goldfarb and Idnani's dual active-set method (identity Hessian) as torchjd ``_solve_qp``:
    a constraint holds when violated by at most ``tol * max(diag G)``; a gradient counts as a
    combination of the active ones when its component orthogonal to them has squared norm at
    most ``dependence_tol`` times its own; at most ``max_iters`` (default ``10 m``) add or
    drop steps.
    """
    m = gram.shape[0]
    dtype = gram.dtype
    if m == 1:
        return jnp.ones(1, dtype)
    n = m - 1
    max_iters = 10 * m if max_iters is None else max_iters
    secondary = gram[1:, 1:]
    b = taus * jnp.diag(secondary) - gram[1:, 0]
    atol = tol * jnp.maximum(jnp.max(jnp.diag(gram)), jnp.finfo(dtype).tiny)
    index = jnp.arange(n)

    class Carry(NamedTuple):
        mu: jax.Array
        active: jax.Array
        adding: jax.Array  # the constraint being added (-1: choose one)
        slack: jax.Array  # its slack
        count: jax.Array
        done: jax.Array
        infeasible: jax.Array

    def body(c: Carry) -> Carry:
        # choose the most violated constraint when none is being added
        slacks = jnp.where(c.active, 0.0, secondary @ c.mu - b)
        worst = jnp.argmin(slacks)
        choosing = c.adding < 0
        satisfied = choosing & (slacks[worst] >= -atol)
        p = jnp.where(choosing, worst, c.adding)
        slack_p = jnp.where(choosing, slacks[worst], c.slack)
        # the dual step: +1 on mu_p, -r on the active multipliers, r = G_AA^-1 G_Ap
        both = c.active[:, None] & c.active[None, :]
        system = jnp.where(both, secondary, 0.0) + jnp.diag(jnp.where(c.active, 0.0, 1.0)
                                                             ).astype(dtype)
        r = jnp.linalg.solve(system, jnp.where(c.active, secondary[:, p], 0.0))
        r = jnp.where(c.active, r, 0.0)
        z_sq = secondary[p, p] - secondary[p] @ r
        ratios = jnp.where(c.active & (r > 0), c.mu / jnp.where(r > 0, r, 1.0), jnp.inf)
        k = jnp.argmin(ratios)
        partial = ratios[k]
        independent = z_sq > dependence_tol * secondary[p, p]
        full = jnp.where(independent, -slack_p / jnp.where(independent, z_sq, 1.0), jnp.inf)
        step = jnp.minimum(partial, full)
        infeasible = ~satisfied & jnp.isinf(step)
        take = ~satisfied & ~infeasible
        mu = jnp.where(take, c.mu - step * r + jnp.where(index == p, step, 0.0), c.mu)
        added = take & (full <= partial)
        dropped = take & ~added
        active = jnp.where(added & (index == p), True, c.active)
        mu = jnp.where(dropped & (index == k), 0.0, mu)
        active = jnp.where(dropped & (index == k), False, active)
        new_slack = secondary[p] @ mu - b[p]
        return Carry(mu, active, jnp.where(dropped, p, -1), jnp.where(dropped, new_slack, 0.0),
                     c.count + jnp.where(satisfied, 0, 1), satisfied | infeasible, infeasible)

    start = Carry(jnp.zeros(n, dtype), jnp.zeros(n, bool), jnp.asarray(-1),
                  jnp.zeros((), dtype), jnp.asarray(0), jnp.asarray(False), jnp.asarray(False))
    out = jax.lax.while_loop(lambda c: ~c.done & (c.count < max_iters), body, start)
    mu = jnp.where(out.infeasible, 0.0, jnp.maximum(out.mu, 0.0))
    return jnp.concatenate([jnp.ones(1, dtype), mu])


class PCDState(NamedTuple):
    """The EMA of the objectives' squared gradient norms and the calls it has seen."""
    sq_norm_ema: jax.Array
    count: jax.Array


def _taus(tau, m, dtype):
    tau = jnp.asarray(tau, dtype)
    if tau.ndim == 0:
        return jnp.full(m - 1, tau, dtype)
    if tau.shape != (m - 1,):
        raise ValueError(f"`tau` must be a number or have one value per secondary objective "
                         f"({m - 1}), got shape {tau.shape}")
    return tau


def pcd_weighting(num_objectives: int, *, tau=0.02, beta=0.999, eps=1e-8) -> Weighting:
    """PCD's weighting (see :func:`pcd`)."""
    if not num_objectives:
        raise ValueError("pcd keeps an EMA of the gradient norms: give `num_objectives`")
    m = num_objectives
    _validate.hyperparameter(tau, "tau", low=0, high=1)
    _validate.hyperparameter(beta, "beta", low=0, high=1, high_open=True)
    _validate.nonnegative(eps, "eps")
    if _validate.is_concrete(tau):
        _taus(tau, m, jnp.float32)

    def init(num_objectives, dtype):
        return PCDState(jnp.zeros(m, dtype), jnp.zeros((), jnp.int32))

    def update(gram, state, values=None):
        check_objectives("pcd", m, gram.shape[0])
        dtype = gram.dtype
        finite = jnp.all(jnp.isfinite(gram))
        sq_norms = jnp.diag(gram)
        count = state.count + 1
        ema = beta * state.sq_norm_ema + (1.0 - beta) * sq_norms
        debiased = ema / (1.0 - beta ** count.astype(dtype))
        denominators = jnp.sqrt(debiased + eps)
        scales = jnp.where(denominators > 0, 1.0 / jnp.where(denominators > 0, denominators,
                                                             1.0), 0.0)
        # rounding of the Gramian: below it gradients count as dependent, the direction as 0
        precision = 10.0 * jnp.finfo(dtype).eps
        normalised = gram * jnp.outer(scales, scales)
        normalised = jnp.where(finite, normalised, 0.0)
        w = solve_pcd_qp(normalised, _taus(tau, m, dtype),
                         dependence_tol=max(1e-9, float(precision)))
        direction_sq = w @ normalised @ w
        magnitude = (jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diag(normalised), 0.0))) ** 2
        ok = (sq_norms[0] > 0) & (direction_sq > precision * magnitude)
        weights = jnp.where(ok, w * scales * jnp.sqrt(sq_norms[0] / jnp.where(ok, direction_sq,
                                                                              1.0)), 0.0)
        weights = jnp.where(finite, weights, jnp.nan)
        # a non-finite Gramian leaves the moving average as it was
        new = PCDState(jnp.where(finite, ema, state.sq_norm_ema),
                       jnp.where(finite, count, state.count))
        return weights, new

    return Weighting(init, update)


def pcd(*, num_objectives: int, tau=0.02, beta=0.999, eps=1e-8
        ) -> optax.GradientTransformation:
    """Priority-Constrained Descent (module docstring): the first objective is primary; each
    other one gets at least a fraction ``tau`` (a number, or one per secondary objective) of
    the first-order progress of a step along its own normalised gradient.

    Special cases, as torchjd: a zero primary gradient, or a direction that is zero up to the
    Gramian's rounding, gives a zero update; infeasible constraints (only with m >= 3) give
    the primary gradient; a non-finite Gramian gives NaN weights and leaves the EMA
    unchanged. Stateful (the EMA): needs ``num_objectives``. Not symmetric in the objectives:
    order them with ``make_step(term_order=...)``, primary first.
    """
    return from_weighting(pcd_weighting(num_objectives, tau=tau, beta=beta, eps=eps),
                          num_objectives)
