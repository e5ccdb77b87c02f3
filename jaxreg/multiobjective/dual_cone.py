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
quadprog on the CPU; here by Lawson and Hanson's active-set method, in JAX).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import from_weighting


def project_to_dual_cone(gram: jax.Array, u: jax.Array, *, max_iters: int | None = None
                         ) -> jax.Array:
    """``argmin_{v >= u} v^T G v`` for a positive definite ``G``.

    Lawson and Hanson's active-set method (the one of NNLS) on ``s = v - u >= 0``: start with
    every bound active; free the coordinate whose bound the gradient ``G v`` pushes against
    hardest; solve exactly on the free set, stepping back to the bounds when the solution
    leaves them. Each iteration is one m x m solve; it ends, exactly, after a few times m
    iterations at most (``max_iters``, default ``4 m + 20``, guards against rounding cycles).
    """
    m = gram.shape[0]
    max_iters = 4 * m + 20 if max_iters is None else max_iters
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

    s, _, _, _ = jax.lax.while_loop(
        lambda c: ~c[2] & (c[3] < max_iters), step,
        (jnp.zeros_like(u), jnp.zeros(m, bool), jnp.asarray(False), 0))
    return u + s


def _regularised(gram, norm_eps, reg_eps):
    trace = jnp.trace(gram)
    normalised = jnp.where(trace >= norm_eps, gram / jnp.where(trace >= norm_eps, trace, 1.0),
                           0.0)
    return normalised + reg_eps * jnp.eye(gram.shape[0], dtype=gram.dtype)


def _preference(pref, m, dtype):
    return jnp.full(m, 1.0 / m, dtype) if pref is None else jnp.asarray(pref, dtype)


def upgrad_weights(gram, *, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """UPGrad weights: ``sum_i argmin_{v >= p_i e_i} v^T G v``."""
    m = gram.shape[0]
    reg = _regularised(gram, norm_eps, reg_eps)
    bounds = jnp.diag(_preference(pref, m, gram.dtype))
    return jnp.sum(jax.vmap(lambda u: project_to_dual_cone(reg, u))(bounds), axis=0)


def dualproj_weights(gram, *, pref=None, norm_eps=1e-4, reg_eps=1e-4):
    """DualProj weights: ``argmin_{v >= p} v^T G v``."""
    m = gram.shape[0]
    return project_to_dual_cone(_regularised(gram, norm_eps, reg_eps),
                                _preference(pref, m, gram.dtype))


def upgrad(*, pref=None, norm_eps=1e-4, reg_eps=1e-4, num_objectives: int | None = None
           ) -> optax.GradientTransformation:
    """UPGrad: the sum of each (preference-weighted) gradient's projection onto the dual cone.

    Non-conflicting, linear under scaling, and equal to PCGrad for two objectives (with
    ``pref = (1, 1)`` and no normalisation). See the module docstring.
    """
    return from_weighting(
        lambda g: upgrad_weights(g, pref=pref, norm_eps=norm_eps, reg_eps=reg_eps),
        num_objectives)


def dualproj(*, pref=None, norm_eps=1e-4, reg_eps=1e-4, num_objectives: int | None = None
             ) -> optax.GradientTransformation:
    """DualProj: the projection of the (preference-weighted) mean gradient onto the dual
    cone. Non-conflicting. See the module docstring."""
    return from_weighting(
        lambda g: dualproj_weights(g, pref=pref, norm_eps=norm_eps, reg_eps=reg_eps),
        num_objectives)
