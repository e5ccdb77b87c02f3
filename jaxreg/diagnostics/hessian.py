"""Hessian-vector products and the two Hessian summaries used to measure sharpness.

Everything works on parameter pytrees through Hessian-vector products (forward-over-reverse,
``jax.jvp`` of ``jax.grad``, Pearlmutter 1994); the Hessian itself is never formed, so the cost
is a small multiple of a gradient and the functions jit.

* ``hessian_trace``: Hutchinson's estimator, ``tr(H) = E[v^T H v]`` for Rademacher ``v``
  (Hutchinson 1990; as in PyHessian, Yao et al. 2020, arXiv:1912.07145).
* ``hessian_top_eigenvalue``: power iteration on ``v -> H v`` (PyHessian's ``eigenvalues``).
  It converges to the eigenvalue of largest magnitude; near a minimum that is the largest
  (sharpness, as in Foret et al. 2021 and Cohen et al. 2021).
* ``hessian_spectral_density``: stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019,
  arXiv:1901.10159, Section 2; PyHessian's ``density``): the Ritz values and Gauss-quadrature
  weights of ``m`` Lanczos steps from random probes, and ``spectral_density`` to smooth them
  with a Gaussian kernel into the eigenvalue density.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

LossFn = Callable[[Any], jax.Array]


def hvp(loss_fn: LossFn, params, vector):
    """The Hessian of ``loss_fn`` at ``params`` times ``vector`` (a pytree like ``params``)."""
    return jax.jvp(jax.grad(loss_fn), (params,), (vector,))[1]


def _rademacher_like(key, params):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.rademacher(k, p.shape, p.dtype)
                                        for k, p in zip(keys, leaves)])


def hessian_trace(loss_fn: LossFn, params, key: jax.Array, *, num_samples: int = 32,
                  return_stderr: bool = False):
    """Hutchinson's estimate of ``tr(H)``: the mean of ``v^T H v`` over Rademacher probes.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params: the point at which the Hessian is taken.
        key: PRNG key for the probes.
        num_samples: number of probes (static); the estimator is unbiased, its variance is
            ``2 (||H||_F^2 - sum_i H_ii^2) / num_samples``.
        return_stderr: also return the standard error of the mean over probes.

    Returns:
        The estimate (and its standard error when asked).
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be at least 1, got {num_samples}.")

    def one(k):
        v = _rademacher_like(k, params)
        return optax.tree.vdot(v, hvp(loss_fn, params, v))

    samples = jax.lax.map(one, jax.random.split(key, num_samples))
    estimate = jnp.mean(samples)
    if not return_stderr:
        return estimate
    stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples) if num_samples > 1 else jnp.nan
    return estimate, stderr


def hessian_top_eigenvalue(loss_fn: LossFn, params, key: jax.Array, *,
                           num_iterations: int = 20):
    """The dominant eigenvalue of the Hessian and its unit eigenvector, by power iteration.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params: the point at which the Hessian is taken.
        key: PRNG key for the Gaussian starting vector.
        num_iterations: Hessian-vector products to spend (static).

    Returns:
        ``(eigenvalue, eigenvector)``: the Rayleigh quotient ``v^T H v`` of the final unit
        vector ``v`` (a pytree like ``params``), and ``v``.
    """
    if num_iterations < 1:
        raise ValueError(f"`num_iterations` must be at least 1, got {num_iterations}.")

    def normalize(v):
        norm = jnp.sqrt(optax.tree.vdot(v, v))
        return jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), v)

    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    start = normalize(jax.tree.unflatten(
        treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)]))
    vector = jax.lax.fori_loop(0, num_iterations,
                               lambda _, v: normalize(hvp(loss_fn, params, v)), start)
    return optax.tree.vdot(vector, hvp(loss_fn, params, vector)), vector


def _lanczos_quadrature(matvec, start, num_iterations: int):
    """``num_iterations`` Lanczos steps on the symmetric ``matvec`` from the unit vector
    ``start`` (flat); returns the Ritz values and their weights, the squared first components
    of the eigenvectors of the tridiagonal matrix.

    Each new vector is orthogonalized against the whole basis by classical Gram-Schmidt
    applied twice ("twice is enough"), which subsumes the three-term recurrence and
    PyHessian's single full reorthogonalization. After an exact breakdown (an invariant Krylov
    space, e.g. more steps than dimensions) the remaining basis vectors are zero: their Ritz
    values carry weight 0."""
    n = start.shape[0]
    # One spare row for the vector after the last step (computed, never used).
    basis = jnp.zeros((num_iterations + 1, n), start.dtype).at[0].set(start)
    # Relative breakdown threshold: beta below it means the Krylov space is invariant.
    tolerance = 10 * jnp.finfo(start.dtype).eps

    def step(i, carry):
        basis, alphas, betas = carry
        v = basis[i]
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        scale = jnp.linalg.norm(w)
        for _ in range(2):  # rows > i are still zero: this projects out span(v_0..v_i)
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        alive = beta > tolerance * jnp.maximum(scale, jnp.abs(alpha))
        following = jnp.where(alive, w / jnp.where(alive, beta, 1.0), 0.0)
        basis = basis.at[i + 1].set(following)
        return basis, alphas.at[i].set(alpha), betas.at[i].set(jnp.where(alive, beta, 0.0))

    zeros = jnp.zeros((num_iterations,), start.dtype)
    _, alphas, betas = jax.lax.fori_loop(0, num_iterations, step, (basis, zeros, zeros))
    tridiagonal = (jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1))
    nodes, vectors = jnp.linalg.eigh(tridiagonal)
    return nodes, jnp.square(vectors[0])


def hessian_spectral_density(loss_fn: LossFn, params, key: jax.Array, *,
                             num_iterations: int = 80, num_probes: int = 1):
    """Stochastic Lanczos quadrature of the Hessian's eigenvalue density (Ghorbani et al.
    2019, Eq. 5-6; PyHessian ``density`` uses 100 steps and one probe).

    For a unit Rademacher probe ``v``, ``m`` Lanczos steps give nodes ``theta_j`` and weights
    ``w_j`` (summing to 1) with ``sum_j w_j f(theta_j) = v^T f(H) v`` exactly for every
    polynomial ``f`` of degree below ``2m``; averaged over probes this estimates the spectral
    measure ``(1/n) sum_i delta(lambda_i)``.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params: the point at which the Hessian is taken.
        key: PRNG key for the probes.
        num_iterations: Lanczos steps ``m`` per probe (static); the basis is stored, so the
            memory is ``m`` times the parameter count.
        num_probes: independent probes (static).

    Returns:
        ``(nodes, weights)``, each ``[num_probes, num_iterations]``; smooth them with
        ``spectral_density``.
    """
    if num_iterations < 1:
        raise ValueError(f"`num_iterations` must be at least 1, got {num_iterations}.")
    if num_probes < 1:
        raise ValueError(f"`num_probes` must be at least 1, got {num_probes}.")
    flat, unravel = ravel_pytree(params)

    def matvec(v):
        return ravel_pytree(hvp(loss_fn, params, unravel(v)))[0]

    def one(k):
        probe = jax.random.rademacher(k, flat.shape, flat.dtype)
        return _lanczos_quadrature(matvec, probe / jnp.linalg.norm(probe), num_iterations)

    return jax.lax.map(one, jax.random.split(key, num_probes))


def spectral_density(nodes, weights, grid, *, variance) -> jax.Array:
    """The eigenvalue density of ``hessian_spectral_density`` on ``grid``: the probe mean of
    ``sum_j w_j N(grid; theta_j, variance)`` (Ghorbani et al. 2019, Eq. 7). It integrates to
    1 over the real line; PyHessian takes ``variance = 1e-5 * max(1, lambda_max - lambda_min)``
    and renormalizes on its grid.

    Args:
        nodes: Ritz values ``[num_probes, m]``.
        weights: their weights ``[num_probes, m]``.
        grid: points ``[g]`` at which to evaluate the density.
        variance: the Gaussian kernel's variance ``sigma^2`` (positive).

    Returns:
        The density at ``grid``, ``[g]``.
    """
    nodes, weights = jnp.atleast_2d(nodes), jnp.atleast_2d(weights)
    if nodes.shape != weights.shape:
        raise ValueError(f"`nodes` {nodes.shape} and `weights` {weights.shape} must match.")
    grid = jnp.asarray(grid)
    kernel = jnp.exp(-jnp.square(grid[:, None, None] - nodes) / (2 * variance))
    kernel = kernel / jnp.sqrt(2 * jnp.pi * variance)
    return jnp.mean(jnp.sum(kernel * weights, axis=-1), axis=-1)
