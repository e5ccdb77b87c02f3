"""Bargaining aggregators: Nash-MTL and its asymmetric form for auxiliary learning, AuxiNash.

Both take the update ``d = J^T alpha`` with ``alpha > 0`` solving ``G alpha = p / alpha``
(element-wise; ``p = 1`` for Nash-MTL, the bargaining powers for AuxiNash). That condition is
the stationarity of the strictly convex problem

    alpha* = argmin_{alpha > 0}  1/2 alpha^T G alpha - sum_i p_i log alpha_i,

which is solved here by damped Newton steps (Hessian ``G + diag(p / alpha^2)``) inside the
train step, warm-started from the previous solution kept in the state, instead of the
references' sequence of cvxpy programs. As the reference, the Gramian is first normalised by
its Frobenius norm (and the solution rescaled back), and the update is scaled down so that
``||J^T alpha|| <= max_norm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import Weighting, check_objectives, from_weighting

_RIDGE = 1e-6  # added to the normalised Gramian: keeps the problem bounded when G is singular


def solve_bargaining(gram: jax.Array, power: jax.Array, alpha0: jax.Array, *,
                     iterations: int = 20) -> jax.Array:
    """``alpha > 0`` with ``G alpha = power / alpha``, by damped Newton from ``alpha0``.

    Each step moves at most 99 % of the way to the boundary ``alpha = 0`` (fraction to the
    boundary), so the iterate stays positive; the objective is strictly convex, so the steps
    converge quadratically once full steps are taken.
    """
    def step(_, alpha):
        grad = gram @ alpha - power / alpha
        hess = gram + jnp.diag(power / alpha ** 2)
        delta = jnp.linalg.solve(hess, grad)
        ratio = jnp.where(delta > 0, alpha / jnp.where(delta > 0, delta, 1.0), jnp.inf)
        t = jnp.minimum(1.0, 0.99 * jnp.min(ratio))
        return alpha - t * delta

    return jax.lax.fori_loop(0, iterations, step, alpha0)


def _bargaining(power_fn, max_norm, iterations, num_objectives, name):
    if not num_objectives:
        raise ValueError(f"{name} keeps its last solution in its state: give `num_objectives`")
    m = num_objectives

    def init(num_objectives, dtype):
        return jnp.ones(m, dtype)  # the last solution for the normalised Gramian (warm start)

    def update(gram, alpha_n, values=None):
        check_objectives(name, m, gram.shape[0])
        # ||G||_F computed without squaring tiny entries (float32 underflows below 1e-38)
        peak = jnp.maximum(jnp.max(jnp.abs(gram)), jnp.finfo(gram.dtype).tiny)
        scale = jnp.maximum(peak * jnp.linalg.norm(gram / peak), jnp.finfo(gram.dtype).tiny)
        normalised = gram / scale + _RIDGE * jnp.eye(m, dtype=gram.dtype)
        alpha_n = solve_bargaining(normalised, power_fn(gram.dtype), alpha_n.astype(gram.dtype),
                                   iterations=iterations)
        alpha = alpha_n / jnp.sqrt(scale)
        norm = jnp.sqrt(jnp.maximum(alpha @ gram @ alpha, 0.0))
        return alpha * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30)), alpha_n

    return from_weighting(Weighting(init, update), m)


def nash_mtl(*, max_norm: float = 1.0, iterations: int = 20,
             num_objectives: int | None = None) -> optax.GradientTransformation:
    """Nash-MTL: the Nash bargaining solution among the objectives, ``G alpha = 1 / alpha``.

    Paper: Navon et al., "Multi-Task Learning as a Bargaining Game" (ICML 2022),
    arXiv:2202.01017. Matches the fixed point of ``AvivNavon/nash-mtl``'s ``NashMTL`` and of
    torchjd ``NashMTL`` (which copies it; ``max_norm = 1``); the solver differs (damped
    Newton on the convex form rather than cvxpy), and the solution is recomputed every step
    (the reference's ``update_weights_every`` is 1 by default).
    """
    return _bargaining(lambda dtype: jnp.ones(num_objectives or 0, dtype), max_norm,
                       iterations, num_objectives, "nash_mtl")


def auxinash(*, preference=None, max_norm: float = 1.0, iterations: int = 20,
             num_objectives: int | None = None) -> optax.GradientTransformation:
    """AuxiNash: asymmetric bargaining, ``G alpha = p / alpha`` with bargaining powers ``p``.

    ``p`` (one per objective, main task first by convention; equal powers, i.e. Nash-MTL,
    when None) is clamped at 1e-4 and
    normalised to sum to m, as in ``AvivSham/auxinash``'s ``AuxiNash``. The paper learns
    ``p`` by an implicit hypergradient on the main task's validation loss; that outer loop is
    not implemented here: ``preference`` is fixed (it may be a traced array, so it can be
    swept).

    Paper: Shamsian et al., "Auxiliary Learning as an Asymmetric Bargaining Game" (ICML
    2023), arXiv:2301.13501.
    """
    m = num_objectives

    def power(dtype):
        p = jnp.ones(m, dtype) if preference is None else jnp.asarray(preference, dtype)
        p = jnp.maximum(p, 1e-4)
        if p.shape != (m,):
            raise ValueError(f"`preference` must have one value per objective ({m}), got "
                             f"shape {p.shape}")
        return m * p / jnp.sum(p)

    return _bargaining(power, max_norm, iterations, num_objectives, "auxinash")
