"""UPGrad and DualProj: projections onto the dual cone of the objectives' gradients.

The dual cone of J is ``{y : J y >= 0}``: the updates that increase no objective to first
order. Projecting ``J^T u`` onto it gives ``J^T w`` with

    w = argmin_{v >= u} v^T G v            (a box-constrained QP in m dimensions),

so both methods need only the Gramian. DualProj projects the weighted mean ``J^T p``;
UPGrad projects each ``p_i g_i`` separately and sums the projections. As in torchjd, the
Gramian is first divided by its trace (zero when the trace is below ``norm_eps``) and
regularised by ``reg_eps I``.

Paper: Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024),
arXiv:2406.16232. Matches torchjd ``UPGrad`` and ``DualProj`` (whose QP is solved by
quadprog on the CPU; here in JAX by a primal-dual active-set method warm-started from the
last step, finished by Lawson and Hanson's method where it cycles). Each iteration solves
every open problem on the smaller of its active and free sets, so the batched Cholesky
factorizations are at most ``m/2 x m/2``, and drops the solved problems from the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import Weighting, from_weighting


class DualConeState(NamedTuple):
    """The solver's warm start and effort: the active bounds of each projection at the last
    step (``[P, m]``; empty until ``num_objectives`` is known) and its iterations."""
    active: jax.Array
    iterations: jax.Array


def _tolerance(gram, lower):
    scale = jnp.max(jnp.abs(jnp.diag(gram))) * jnp.max(jnp.abs(lower))
    return 64 * jnp.finfo(gram.dtype).eps * jnp.maximum(scale, jnp.finfo(gram.dtype).tiny)


def _inverse(gram):
    """``G^-1`` (symmetric) from one Cholesky factorization; NaN where G is not positive
    definite."""
    factor = jax.lax.linalg.cholesky(gram, symmetrize_input=False)
    inverse = jax.scipy.linalg.cho_solve((factor, True), jnp.eye(gram.shape[0], dtype=gram.dtype))
    return (inverse + inverse.T) / 2


def _first(mask, k, dtype):
    """The indices of the first ``k`` True entries of each row of the boolean ``mask``
    ``[P, m]``, padded with 0, and which of them are real: ``(index [P, k], valid [P, k])``.
    (The running count is a product with a triangular matrix of ``dtype``, a float type:
    XLA's cumsum is slower.)"""
    m = mask.shape[-1]
    count = mask.astype(dtype) @ jnp.triu(jnp.ones((m, m), dtype))
    slot = jnp.where(mask & (count <= k), count - 1, k).astype(jnp.int32)  # k: dropped
    index = jax.vmap(lambda s: jnp.zeros(k, jnp.int32).at[s].set(
        jnp.arange(m, dtype=jnp.int32), mode="drop"))(slot)
    return index, jnp.arange(k) < jnp.sum(mask, axis=-1, keepdims=True)


def _solve_on(gram, inverse, lower, active, k):
    """``v`` with ``v_A = u_A`` on the active bounds and ``(G v)_F = 0`` on the free
    coordinates, for each problem (rows of ``lower`` and ``active``), on the smaller of its
    two sets (at most ``k = m // 2`` coordinates): ``G_FF v_F = -G_FA u_A`` when F is the
    smaller, else ``H_AA lam_A = u_A``, ``v = H lam`` with ``H = G^-1`` (the multipliers
    ``lam = G v`` vanish on F). One batched ``k x k`` Cholesky solve."""
    m = gram.shape[0]
    n_active = jnp.sum(active, axis=1)
    on_active = n_active <= m - n_active  # [P]
    index, valid = _first(jnp.where(on_active[:, None], active, ~active), k, gram.dtype)
    system = jnp.stack([gram, inverse])[on_active.astype(jnp.int32)[:, None, None],
                                        index[:, :, None], index[:, None, :]]  # [P, k, k]
    system = jnp.where(valid[:, :, None] & valid[:, None, :], system,
                       jnp.eye(k, dtype=gram.dtype))
    bound = jnp.where(active, lower, 0.0)
    rhs = jnp.where(on_active[:, None], jnp.take_along_axis(lower, index, axis=1),
                    -jnp.take_along_axis(bound @ gram, index, axis=1))
    factor = jax.lax.linalg.cholesky(system, symmetrize_input=False)
    x = jnp.where(valid, jax.vmap(lambda f, b: jax.scipy.linalg.cho_solve((f, True), b))(
        factor, jnp.where(valid, rhs, 0.0)), 0.0)
    spread = jax.vmap(lambda i, x: jnp.zeros(m, x.dtype).at[i].add(x))(index, x)  # [P, m]
    v = jnp.where(on_active[:, None], spread @ inverse, bound + spread)
    return jnp.where(active, lower, v)


def _stage_sizes(p):
    """The batch sizes of the solver's stages: all P problems, then halves down to 16 (each
    stage is compiled once more: about 0.3 s)."""
    sizes = [p]
    while sizes[-1] // 2 >= 16:
        sizes.append(sizes[-1] // 2)
    return sizes


def _primal_dual(gram, lower, active, max_iters):
    """Primal-dual active-set iterations (Hintermueller, Ito & Kunisch 2002) on the P
    problems, each iteration one batched solve of the open problems (those whose active set
    changed): all of them at first, then, once fewer remain, half as many at a time (the
    stages' batch sizes are static, so this stays a ``while_loop`` under ``vmap``). Returns
    ``(v, active, iterations, converged [P])``."""
    p, m = lower.shape
    tol = _tolerance(gram, lower)
    inverse = _inverse(gram)
    k = max(m // 2, 1)

    def step(size):
        def body(carry):
            v, active, open_, count = carry
            index, real = _first(open_[None], size, gram.dtype)
            index = jnp.where(real[0], index[0], index[0, 0])  # padded with the first
            bounds, old = lower[index], active[index]
            solved = _solve_on(gram, inverse, bounds, old, k)
            # a bound stays active while its multiplier G v is not clearly negative; a free
            # coordinate becomes active when it falls clearly below its bound
            new = jnp.where(old, solved @ gram >= -tol, solved < bounds - tol)
            done = jnp.all(new == old, axis=1) & jnp.all(jnp.isfinite(solved), axis=1)
            return (v.at[index].set(solved), active.at[index].set(new),
                    open_.at[index].set(~done), count + 1)
        return body

    # a G that is not positive definite has no usable inverse: every problem goes to the
    # fallback
    usable = jnp.all(jnp.isfinite(inverse))
    open_ = jnp.full(p, usable)
    carry = (jnp.zeros_like(lower), active, open_, 0)
    sizes = _stage_sizes(p)
    for size, after in zip(sizes, sizes[1:] + [0]):
        carry = jax.lax.while_loop(
            lambda c, after=after: (jnp.sum(c[2]) > after) & (c[3] < max_iters),
            step(size), carry)
    v, active, open_, count = carry
    converged = ~open_ & usable
    return v, active, count, converged


def _lawson_hanson(gram, u, skip, max_iters):
    """Lawson and Hanson's active-set method (the one of NNLS) on ``s = v - u >= 0``: start
    with every bound active; free the coordinate whose bound the gradient ``G v`` pushes
    against hardest; solve exactly on the free set, stepping back to the bounds when the
    solution leaves them. One free coordinate per iteration: slower than the primal-dual
    method but it cannot cycle; it ends, exactly, after a few times m iterations (``skip``:
    no iteration at all). Returns ``(v, iterations)``."""
    m = gram.shape[0]
    gu = gram @ u
    tol = 1e-6 * jnp.maximum(jnp.max(jnp.abs(jnp.diag(gram))) * jnp.max(jnp.abs(u)), 1e-30)

    def solve_on(free):
        system = jnp.where(free[:, None] & free[None, :], gram, 0.0) + jnp.diag(
            jnp.where(free, 0.0, 1.0).astype(gram.dtype))
        return jnp.linalg.solve(system, jnp.where(free, -gu, 0.0))

    def step(carry):
        s, free, _, count = carry
        z = solve_on(free)
        leaving = free & (z <= 0)
        # Some free coordinate would cross its bound: move towards z until the first one
        # reaches it, and make the coordinates at their bounds active again.
        ratio = jnp.where(leaving, s / jnp.where(leaving, s - z, 1.0), jnp.inf)
        alpha = jnp.minimum(jnp.min(ratio), 1.0)
        back = s + alpha * (z - s)
        back_free = free & (back > 0) & (jnp.arange(m) != jnp.argmin(ratio))
        # Otherwise accept z, and free the bound the gradient pushes against hardest, if any.
        gradient = gram @ (u + z)
        pushed = jnp.where(free, jnp.inf, gradient)
        optimal = jnp.min(pushed) >= -tol
        accept_free = free | ((jnp.arange(m) == jnp.argmin(pushed)) & ~optimal)
        stepped_back = jnp.any(leaving)
        return (jnp.where(stepped_back, jnp.maximum(back, 0.0), z),
                jnp.where(stepped_back, back_free, accept_free),
                ~stepped_back & optimal, count + 1)

    s, _, _, count = jax.lax.while_loop(
        lambda c: ~c[2] & (c[3] < max_iters), step,
        (jnp.zeros_like(u), jnp.zeros(m, bool), jnp.asarray(skip), 0))
    return u + s, count


def solve_dual_cone(gram: jax.Array, lower: jax.Array, active: jax.Array | None = None, *,
                    max_iters: int | None = None):
    """``argmin_{v >= u} v^T G v`` for each row ``u`` of ``lower`` ``[P, m]`` (G positive
    definite), exactly.

    Primal-dual active-set iterations from ``active`` (a warm start, ``[P, m]`` booleans,
    e.g. the last step's; default: the bounds the gradient ``G u`` at ``v = u`` pushes
    against, ``(G u)_j >= 0``), at most ``max_iters`` (default ``m + 10``), each one batched
    Cholesky solve of the problems still open, on the smaller of each one's active and free
    sets. A problem they leave unsolved (the method can cycle on matrices that are not
    M-matrices; every problem when G has no Cholesky factor) is finished by Lawson and
    Hanson's method, which cannot.

    Returns:
        ``(v [P, m], active [P, m], iterations)``: the solutions, their active bounds (the
        next warm start) and the iterations taken (the most of any problem, fallback
        included).
    """
    gram, lower = jnp.asarray(gram), jnp.asarray(lower)
    m = gram.shape[0]
    max_iters = m + 10 if max_iters is None else max_iters
    # cold start: the bounds that the objective's gradient at v = u, G u, pushes against
    active = lower @ gram >= 0 if active is None else jnp.asarray(active, bool)
    v, active, count, converged = _primal_dual(gram, lower, active, max_iters)
    fallback, extra = jax.vmap(lambda u, done: _lawson_hanson(gram, u, done, 4 * m + 20))(
        lower, converged)
    v = jnp.where(converged[:, None], v, fallback)
    tol = _tolerance(gram, lower)
    active = jnp.where(converged[:, None], active, v <= lower + tol)
    return v, active, count + jnp.max(extra)


def project_to_dual_cone(gram: jax.Array, u: jax.Array) -> jax.Array:
    """``argmin_{v >= u} v^T G v`` for a positive definite ``G`` (see
    :func:`solve_dual_cone`)."""
    return solve_dual_cone(gram, u[None])[0][0]


def _regularised(gram, norm_eps, reg_eps):
    trace = jnp.trace(gram)
    normalised = jnp.where(trace >= norm_eps, gram / jnp.where(trace >= norm_eps, trace, 1.0),
                           0.0)
    return normalised + reg_eps * jnp.eye(gram.shape[0], dtype=gram.dtype)


def _preference(pref, m, dtype):
    return jnp.full(m, 1.0 / m, dtype) if pref is None else jnp.asarray(pref, dtype)


def _dual_cone_weighting(bounds_fn, reduce, norm_eps, reg_eps) -> Weighting:
    """A weighting that solves ``argmin_{v >= u} v^T G_reg v`` for the rows ``u`` of
    ``bounds_fn(m, dtype)`` and reduces the solutions to the weights, warm-started from the
    last step's active bounds (kept in the state once ``num_objectives`` is known)."""
    def init(num_objectives, dtype):
        rows = bounds_fn(num_objectives, dtype).shape[0] if num_objectives else 0
        return DualConeState(jnp.zeros((rows, num_objectives or 0), bool),
                             jnp.zeros((), jnp.int32))

    def update(gram, state, values=None):
        lower = bounds_fn(gram.shape[0], gram.dtype)
        warm = state.active if state.active.shape == lower.shape else None
        v, active, iterations = solve_dual_cone(_regularised(gram, norm_eps, reg_eps), lower,
                                                warm)
        if state.active.shape != lower.shape:
            active = state.active  # no room for a warm start: num_objectives not given
        return reduce(v), DualConeState(active, jnp.asarray(iterations, jnp.int32))

    return Weighting(init, update)


def _upgrad_bounds(pref):
    return lambda m, dtype: jnp.diag(_preference(pref, m, dtype))


def _dualproj_bounds(pref):
    return lambda m, dtype: _preference(pref, m, dtype)[None]


def upgrad_weighting(*, pref=None, norm_eps=1e-4, reg_eps=1e-4) -> Weighting:
    """UPGrad's weighting: ``w = sum_i argmin_{v >= p_i e_i} v^T G v`` (warm-started)."""
    return _dual_cone_weighting(_upgrad_bounds(pref), lambda v: jnp.sum(v, axis=0),
                                norm_eps, reg_eps)


def dualproj_weighting(*, pref=None, norm_eps=1e-4, reg_eps=1e-4) -> Weighting:
    """DualProj's weighting: ``w = argmin_{v >= p} v^T G v`` (warm-started)."""
    return _dual_cone_weighting(_dualproj_bounds(pref), lambda v: v[0], norm_eps, reg_eps)


def upgrad_weights(gram, *, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """UPGrad weights: ``sum_i argmin_{v >= p_i e_i} v^T G v`` (no warm start)."""
    lower = _upgrad_bounds(pref)(gram.shape[0], gram.dtype)
    return jnp.sum(solve_dual_cone(_regularised(gram, norm_eps, reg_eps), lower)[0], axis=0)


def dualproj_weights(gram, *, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """DualProj weights: ``argmin_{v >= p} v^T G v`` (no warm start)."""
    lower = _dualproj_bounds(pref)(gram.shape[0], gram.dtype)
    return solve_dual_cone(_regularised(gram, norm_eps, reg_eps), lower)[0][0]


def upgrad(*, pref=None, norm_eps=1e-4, reg_eps=1e-4, num_objectives: int | None = None
           ) -> optax.GradientTransformation:
    """UPGrad: the sum of each (preference-weighted) gradient's projection onto the dual cone.

    Non-conflicting, linear under scaling, and equal to PCGrad for two objectives (with
    ``pref = (1, 1)`` and no normalisation). See the module docstring. With
    ``num_objectives`` the solver is warm-started from the last step's active bounds.
    """
    return from_weighting(upgrad_weighting(pref=pref, norm_eps=norm_eps, reg_eps=reg_eps),
                          num_objectives)


def dualproj(*, pref=None, norm_eps=1e-4, reg_eps=1e-4, num_objectives: int | None = None
             ) -> optax.GradientTransformation:
    """DualProj: the projection of the (preference-weighted) mean gradient onto the dual
    cone. Non-conflicting. See the module docstring."""
    return from_weighting(dualproj_weighting(pref=pref, norm_eps=norm_eps, reg_eps=reg_eps),
                          num_objectives)
