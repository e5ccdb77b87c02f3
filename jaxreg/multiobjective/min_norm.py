"""Min-norm aggregators: MGDA (and MGDA-UB) and CAGrad, solved on the simplex in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import from_weighting


def mgda_weights(gram: jax.Array, *, epsilon=1e-3, max_iters: int = 100) -> jax.Array:
    """``argmin_{w in simplex} w^T G w`` by Frank-Wolfe with exact line search.

    From ``w = 1/m``: move towards the vertex ``e_t``, ``t = argmin (G w)``, by
    ``gamma = (b - a) / (b + c - 2a)`` clipped to [0, 1] (``a = (G w)_t``, ``b = w^T G w``,
    ``c = G_tt``); stop once ``gamma < epsilon`` (torchjd ``MGDAWeighting``).
    """
    m = gram.shape[0]

    def step(_, carry):
        w, done = carry
        gw = gram @ w
        t = jnp.argmin(gw)
        a, b, c = gw[t], w @ gw, gram[t, t]
        gamma = jnp.where(c <= a, 1.0, jnp.where(b <= a, 0.0,
                                                 (b - a) / jnp.where(b + c - 2 * a > 0,
                                                                     b + c - 2 * a, 1.0)))
        moved = (1.0 - gamma) * w + gamma * jax.nn.one_hot(t, m, dtype=w.dtype)
        return jnp.where(done, w, moved), done | (gamma < epsilon)

    w, _ = jax.lax.fori_loop(0, max_iters, step,
                             (jnp.full(m, 1.0 / m, gram.dtype), jnp.asarray(False)))
    return w


def mgda(*, epsilon=1e-3, max_iters: int = 100, num_objectives: int | None = None
         ) -> optax.GradientTransformation:
    """MGDA: the minimum-norm point of the convex hull of the gradients.

    Non-conflicting; its norm is zero exactly at Pareto-stationary points. For MGDA-UB give
    the aggregator to ``jaxreg.train.make_step(..., representation=...)``: the weights are
    then chosen from the gradients with respect to the shared representation.

    Papers: Desideri, "Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization" (2012); Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization" (NeurIPS 2018), arXiv:1810.04650. Matches torchjd ``MGDA`` (Frank-Wolfe,
    epsilon 1e-3, 100 iterations).
    """
    return from_weighting(lambda g: mgda_weights(g, epsilon=epsilon, max_iters=max_iters),
                          num_objectives)


def project_to_simplex(y: jax.Array) -> jax.Array:
    """The Euclidean projection of ``y`` onto ``{w >= 0, sum w = 1}``: ``max(y - t, 0)`` with
    ``t = (sum_{j <= i} y_(j) - 1) / i`` at the first i (in decreasing order) where it
    exceeds ``y_(i+1)``, else ``(sum y - 1) / m`` (the reference implementations' loop)."""
    m = y.shape[0]
    if m == 1:
        return jnp.ones_like(y)
    ordered = jnp.sort(y)[::-1]
    thresholds = (jnp.cumsum(ordered) - 1.0) / jnp.arange(1, m + 1, dtype=y.dtype)
    crossed = thresholds[:-1] > ordered[1:]
    first = jnp.argmax(crossed)
    t = jnp.where(jnp.any(crossed), thresholds[first], (jnp.sum(y) - 1.0) / m)
    return jnp.maximum(y - t, 0.0)


def cagrad_weights(gram: jax.Array, *, c=0.5, rescale: int = 0, iterations: int = 500):
    """CAGrad weights ``1/m + (sqrt(phi) / ||g_w||) w*`` (optionally rescaled), where

    ``w* = argmin_{w in simplex} w^T G 1/m + sqrt(phi) sqrt(w^T G w)``, ``phi = c^2 ||g_0||^2``,
    ``g_0`` the mean gradient; solved by projected gradient descent (step ``1 / lambda_max``)
    on the trace-normalised Gramian (the weights do not depend on the Gramian's scale).
    """
    m = gram.shape[0]
    trace = jnp.trace(gram)
    g = gram / jnp.where(trace > 0, trace, 1.0)
    mean = jnp.full(m, 1.0 / m, g.dtype)
    sqrt_phi = c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))
    lipschitz = jnp.maximum(jnp.linalg.eigvalsh(g)[-1], 1e-12)

    def objective(w):
        return w @ g @ mean + sqrt_phi * jnp.sqrt(jnp.maximum(w @ g @ w, 1e-20))

    def step(_, w):
        return project_to_simplex(w - jax.grad(objective)(w) / (lipschitz * (1.0 + c)))

    w = jax.lax.fori_loop(0, iterations, step, mean)
    norm_w = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
    weights = mean + jnp.where(norm_w > 1e-12, sqrt_phi / jnp.where(norm_w > 1e-12, norm_w, 1.0),
                               0.0) * w
    return weights / jnp.asarray([1.0, 1.0 + c ** 2, 1.0 + c])[rescale]


def cagrad(*, c=0.5, rescale: int = 0, num_objectives: int | None = None
           ) -> optax.GradientTransformation:
    """CAGrad: the update maximising the worst objective's improvement in a ball of radius
    ``c ||g_0||`` around the mean gradient ``g_0``.

    ``rescale``: 0 none (torchjd), 1 divide by ``1 + c^2`` (the official code's default,
    and LibMTL), 2 divide by ``1 + c`` (the official toy example). Non-conflicting for
    ``c >= 1``.

    Paper: Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS
    2021), arXiv:2110.14048. Matches torchjd ``CAGrad`` (which solves the same problem with
    cvxpy) and ``Cranial-XIX/CAGrad`` up to the solver.
    """
    if rescale not in (0, 1, 2):
        raise ValueError(f"`rescale` must be 0, 1 or 2, got {rescale!r}")
    return from_weighting(lambda g: cagrad_weights(g, c=c, rescale=rescale), num_objectives)
