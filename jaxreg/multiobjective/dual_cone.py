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
quadprog on the CPU; here by coordinate descent and an exact active-set polish, in JAX).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import from_weighting


def project_to_dual_cone(gram: jax.Array, u: jax.Array, *, max_sweeps: int = 1000) -> jax.Array:
    """``argmin_{v >= u} v^T G v`` for a positive semi-definite ``G``.

    Projected coordinate descent (``v_k <- max(u_k, v_k - (G v)_k / G_kk)``) from ``u``, until
    a sweep moves nothing or after ``max_sweeps``, estimates the active set; a few exact solves on the estimated active set (each clipped to
    the bounds and used to re-estimate it) then polish the solution, which is kept when it
    satisfies the KKT conditions (otherwise the descent iterate is returned).
    """
    m = gram.shape[0]
    diag = jnp.diag(gram)
    safe = jnp.where(diag > 0, diag, 1.0)

    def coordinate(k, v):
        moved = jnp.maximum(u[k], v[k] - (gram[k] @ v) / safe[k])
        return v.at[k].set(jnp.where(diag[k] > 0, moved, u[k]))

    scale = jnp.maximum(jnp.max(jnp.abs(u)), 1e-30)

    def sweep(carry):
        v, _, count = carry
        new = jax.lax.fori_loop(0, m, coordinate, v)
        return new, jnp.max(jnp.abs(new - v)), count + 1

    v, _, _ = jax.lax.while_loop(  # until a sweep moves nothing (relative 1e-9)
        lambda c: (c[2] < max_sweeps) & (c[1] > 1e-9 * scale), sweep,
        (u, jnp.asarray(jnp.inf, u.dtype), 0))
    tol = 1e-6 * scale * jnp.maximum(jnp.max(diag), 1e-30)

    def polish(_, v):
        # Solve exactly with the bounds that bind at v (free: above the bound, or pushed
        # inwards by the gradient); keep the result if feasible, else its clipped version.
        free = (v > u + 1e-6 * scale) | (gram @ v < -tol)
        system = jnp.where(free[:, None] & free[None, :], gram, 0.0) + jnp.diag(
            jnp.where(free, 0.0, 1.0))
        rhs = jnp.where(free, -(gram @ jnp.where(free, 0.0, u)), u)
        solved = jnp.linalg.solve(system, rhs)
        return jnp.where(jnp.all(jnp.isfinite(solved)), jnp.maximum(solved, u), v)

    polished = jax.lax.fori_loop(0, 4, polish, v)
    optimal = jnp.all(gram @ polished >= -tol) & (
        jnp.abs((polished - u) @ gram @ polished) <= tol * jnp.maximum(jnp.sum(polished), 1.0))
    return jnp.where(optimal, polished, v)


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
