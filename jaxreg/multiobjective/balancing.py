"""Balancing the objectives by how well each is served: FairGrad (alpha-fair allocation of
the update) and ExcessMTL (weights that follow the excess risks).

FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
arXiv:2402.15638) treats the update ``d`` as a resource shared by the objectives, whose
utilities are their first-order decreases ``g_i^T d``, and maximises the alpha-fair utility
``sum_i (g_i^T d)^(1 - alpha) / (1 - alpha)`` (``sum_i log g_i^T d`` for ``alpha = 1``) over a
ball. With ``d = J^T w`` the optimality condition is (their Eq. 4)

    G w = w^(-1/alpha)        (element-wise, w > 0),

which is the stationarity of the strictly convex problem

    min_{w > 0}  1/2 w^T G w - sum_i h(w_i),    h'(w) = w^(-1/alpha),

so it is solved here by damped Newton steps on that problem (Hessian ``G + diag(w^(-1/alpha
- 1) / alpha)``) inside the train step, instead of torchjd's ``scipy.optimize.least_squares``
on the residual. ``alpha = 1`` is proportional fairness (Nash-MTL's condition), ``alpha -> inf``
max-min fairness, ``alpha = 0`` the mean (uniform weights). The condition is covariant under
scaling: for ``G = s G_n``, ``w = s^(-alpha / (alpha + 1)) w_n``, so the problem is solved on
the Gramian divided by its Frobenius norm and rescaled.

ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024,
arXiv:2402.02009) raises the weights of the objectives that are furthest from convergence,
estimating each one's excess risk by a second-order Taylor expansion with an AdaGrad-style
diagonal Hessian (their Eqs. 6-7) and taking an exponentiated-gradient step on the weights
(Eq. 9). It needs the gradients element by element, not only their Gramian.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import _validate
from jaxreg.multiobjective.base import (
    accumulation_dtype,
    check_objectives,
    combine,
    from_weighting,
    stateless,
)
from jaxreg.multiobjective.base import num_objectives as count_objectives

_RIDGE = 1e-9  # added to the normalised Gramian: a root exists even when G is singular
_PROBE = 1e-6  # the ridge of the first solve, which tells whether G w = w^(-1/alpha) has a root


def _barrier(w, p, alpha):
    """``-sum_i h(w_i)`` with ``h' = w^(-p)``, ``p = 1 / alpha``: ``-log w`` for ``alpha = 1``,
    ``-(w^(1-p) - 1) / (1 - p)`` otherwise (convex)."""
    one = jnp.abs(alpha - 1.0) < 1e-6
    q = jnp.where(one, 0.5, 1.0 - p)  # any nonzero value where alpha = 1
    power = -(jnp.exp(q * jnp.log(w)) - 1.0) / q
    return jnp.sum(jnp.where(one, -jnp.log(w), power))


def solve_fairgrad(gram: jax.Array, alpha, start=None, *, iterations: int = 60) -> jax.Array:
    """``w > 0`` with ``G w = w^(-1/alpha)`` for a positive definite ``G``, by damped Newton
    from ``start`` (default ``w = 1``) on ``1/2 w^T G w - sum_i h(w_i)``.

    Each step goes at most 99 % of the way to the boundary ``w = 0`` and is halved until the
    objective or the residual norm decreases enough (Armijo, ``1e-4``); the problem is
    strictly convex, so the iterates converge quadratically once full steps are taken.
    """
    m = gram.shape[0]
    alpha = jnp.asarray(alpha, gram.dtype)
    p = 1.0 / alpha
    halvings = 0.5 ** jnp.arange(30, dtype=gram.dtype)

    def objective(w):
        return 0.5 * w @ gram @ w + _barrier(w, p, alpha)

    def residual(w):
        return gram @ w - jnp.exp(-p * jnp.log(w))

    def step(_, w):
        grad = residual(w)
        hess = gram + jnp.diag(p * jnp.exp((-p - 1.0) * jnp.log(w)))
        delta = jnp.linalg.solve(hess, grad)
        ratio = jnp.where(delta > 0, w / jnp.where(delta > 0, delta, 1.0), jnp.inf)
        steps = jnp.minimum(1.0, 0.99 * jnp.min(ratio)) * halvings
        trials = w[None, :] - steps[:, None] * delta[None, :]
        slope = grad @ delta
        norm = jnp.linalg.norm(grad)
        decrease = jax.vmap(objective)(trials) <= objective(w) - 1e-4 * steps * slope
        closer = jax.vmap(lambda x: jnp.linalg.norm(residual(x)))(trials) <= (
            1.0 - 1e-4 * steps) * norm
        ok = (decrease | closer) & jnp.all(trials > 0, axis=1)
        chosen = jnp.where(jnp.any(ok), jnp.argmax(ok), steps.shape[0] - 1)
        moved = trials[chosen]
        return jnp.where(jnp.all(jnp.isfinite(moved)) & (norm > 0), moved, w)

    start = jnp.ones(m, gram.dtype) if start is None else start
    return jax.lax.fori_loop(0, iterations, step, start)


def fairgrad_weights(gram: jax.Array, *, alpha=2.0, iterations: int = 60) -> jax.Array:
    """FairGrad's weights: ``G w = w^(-1/alpha)`` solved on ``G / ||G||_F + 1e-9 I`` (from
    the solution with the ridge 1e-6) and
    rescaled by ``||G||_F^(-alpha / (alpha + 1))``; uniform ``1/m`` for ``alpha = 0`` or a zero
    Gramian (whose update is zero whatever the weights); zero where ``G w = w^(-1/alpha)`` has
    no root (see :func:`fairgrad`)."""
    m = gram.shape[0]
    alpha = jnp.asarray(alpha, gram.dtype)
    active = alpha > 0
    safe_alpha = jnp.where(active, alpha, 1.0)
    peak = jnp.max(jnp.abs(gram))
    tiny = jnp.finfo(gram.dtype).tiny
    # ||G||_F computed without squaring tiny entries (float32 underflows below 1e-38)
    scale = jnp.maximum(peak * jnp.linalg.norm(gram / jnp.maximum(peak, tiny)), tiny)
    normalised = gram / scale
    eye = jnp.eye(m, dtype=gram.dtype)
    # Without a root (a nonnegative null vector v of G: J^T v = 0, a Pareto-stationary
    # point) the weights on v's support grow until a ridge's pull r w_i balances
    # w_i^(-1/alpha). A first solve with the well-conditioned ridge _PROBE tells the cases
    # apart (r w^(1 + 1/alpha) is ~1 there, below 1e-2 at the zoo's roots); with a root, a
    # second solve from there with the negligible ridge _RIDGE finds it.
    probe = solve_fairgrad(normalised + _PROBE * eye, safe_alpha, iterations=iterations)
    rootless = jnp.max(_PROBE * jnp.exp((1.0 + 1.0 / safe_alpha) * jnp.log(probe))) > 0.5
    w = solve_fairgrad(normalised + _RIDGE * eye, safe_alpha, probe, iterations=iterations)
    # there the update goes to zero as the ridge vanishes (when v has full support), and is
    # taken as zero
    w = w * jnp.exp(-safe_alpha / (safe_alpha + 1.0) * jnp.log(scale))
    w = jnp.where(rootless, 0.0, jnp.minimum(w, jnp.finfo(gram.dtype).max / (4 * m)))
    return jnp.where(active & (peak > 0), w, jnp.full(m, 1.0 / m, gram.dtype))


def fairgrad(*, alpha=2.0, iterations: int = 60, num_objectives: int | None = None
             ) -> optax.GradientTransformation:
    """FairGrad: the update ``J^T w`` whose weights solve ``G w = w^(-1/alpha)``, the optimality
    condition of alpha-fair allocation of the update among the objectives (module docstring).

    Paper: Ban & Ji, "Fair Resource Allocation in Multi-Task Learning" (ICML 2024),
    arXiv:2402.15638, Eq. 4 and Algorithm 1. Matches torchjd ``FairGrad`` wherever the
    condition has a root (``max_iters`` of its least-squares solver aside); torchjd
    requires ``alpha``, here it defaults to 2, the official code's value in its experiments.
    A root exists unless some convex combination of the gradients with positive weights
    vanishes (a positive null vector of G: a Pareto-stationary point, e.g. two opposite
    gradients). There torchjd returns wherever its bounded least-squares iterations stop (an
    update of size ~1e-2 on the zoo, which conflicts with some objective); here the weights
    and the update are zero, the limit of the roots with the ridge ``1e-9 ||G||_F I`` as it
    vanishes (told apart by a first solve with the ridge ``1e-6 ||G||_F I``, whose pull then
    matches ``w^(-1/alpha)``). So the update never
    conflicts: ``J d = G w = w^(-1/alpha) > 0`` or ``d = 0``. Solved by damped Newton
    (``iterations`` steps, jittable); ``alpha`` may be traced.
    """
    _validate.nonnegative(alpha, "alpha")
    return from_weighting(stateless(lambda g: fairgrad_weights(g, alpha=alpha,
                                                                iterations=iterations)),
                          num_objectives)


class ExcessMTLState(NamedTuple):
    """``weights``: those of the last step (uniform at first), logged; ``squares``: the sum
    of the squared gradients, leaf by leaf ``[m, *shape]``; ``baseline``: the excess risks
    that scale later ones (NaN until set); ``warmup``: the sum of the excess risks during
    the warm-up; ``count``: the calls so far."""
    weights: jax.Array
    squares: object
    baseline: jax.Array
    warmup: jax.Array
    count: jax.Array


def excess_mtl(*, num_objectives: int, robust_step_size=1.0, n_warmup_steps: int = 0
               ) -> optax.GradientTransformation:
    """ExcessMTL: weights that grow with each objective's estimated excess risk.

    With ``S_i`` the running sum of objective i's squared gradient (element-wise, over the
    calls so far, this one included), its excess risk is ``E_i = sum g_i^2 / sqrt(S_i +
    1e-7)`` (Eqs. 6-7, a diagonal AdaGrad Hessian); divided by the baseline ``E_i^0`` (plus
    1e-7) from the first call after the warm-up (Section 3.2's scale processing), it drives
    the exponentiated-gradient step ``w <- softmax(log w + eta E)`` (Eq. 9, ``eta =
    robust_step_size``), from ``w = 1/m``. The update is ``J^T w`` with the new weights.

    ``n_warmup_steps``: calls that keep ``w = 1/m`` and average ``E`` for the baseline
    (Appendix C.1); with 0, the first call's ``E`` is the baseline and is used unscaled at
    that call (the official code's and LibMTL's behaviour).

    Paper: He et al., "Robust Multi-Task Learning with Excess Risks" (ICML 2024),
    arXiv:2402.02009. Matches torchjd ``ExcessMTL`` (weights from ``1/m`` as the paper, not
    the official code's 1). It needs the Jacobian element-wise (``engine="jacobian"``, the
    default for it; not ``make_step(representation=...)``, whose feature Jacobians do not
    have the parameters' shapes), and its state holds one squared-gradient sum per
    objective: m times the parameters.
    """
    m = num_objectives
    if not m:
        raise ValueError("excess_mtl keeps per-objective weights: give `num_objectives`")
    _validate.positive(robust_step_size, "robust_step_size")
    if not isinstance(n_warmup_steps, int) or n_warmup_steps < 0:
        raise ValueError(f"`n_warmup_steps` must be a non-negative int, got {n_warmup_steps!r}")

    def init(params):
        dtype = accumulation_dtype(params)
        squares = jax.tree.map(lambda p: jnp.zeros((m, *jnp.shape(p)), dtype), params)
        return ExcessMTLState(jnp.full(m, 1.0 / m, dtype), squares, jnp.full(m, jnp.nan, dtype),
                              jnp.zeros(m, dtype), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params
        check_objectives("excess_mtl", m, count_objectives(updates))
        dtype = state.weights.dtype
        current = jax.tree.map(lambda g: jnp.square(g.astype(dtype)), updates)
        squares = jax.tree.map(jnp.add, state.squares, current)
        risk = sum(jnp.sum((c / jnp.sqrt(s + 1e-7)).reshape(m, -1), axis=1)
                   for c, s in zip(jax.tree.leaves(current), jax.tree.leaves(squares)))
        warming = state.count < n_warmup_steps
        first = jnp.isnan(state.baseline[0])
        if n_warmup_steps > 0:
            # the average excess risk of the warm-up calls (read once they are over)
            baseline = jnp.where(first, state.warmup / n_warmup_steps, state.baseline)
            scaled = risk / (baseline + 1e-7)
        else:
            baseline = jnp.where(first, risk, state.baseline)
            scaled = jnp.where(first, risk, risk / (baseline + 1e-7))
        stepped = jax.nn.softmax(jnp.log(state.weights) + robust_step_size * scaled)
        weights = jnp.where(warming, state.weights, stepped)
        new = ExcessMTLState(weights, squares, jnp.where(warming, state.baseline, baseline),
                             jnp.where(warming, state.warmup + risk, state.warmup),
                             state.count + 1)
        return combine(weights, updates), new

    return optax.GradientTransformation(init, update)
