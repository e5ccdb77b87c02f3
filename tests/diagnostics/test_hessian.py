"""Hessian diagnostics against the explicit Hessian of small problems (NumPy eigh and trace)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxreg.diagnostics import hessian


def _problem():
    """A small non-quadratic loss over a two-leaf pytree, and its flat explicit Hessian."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (12, 3))
    y = jax.random.normal(k2, (12,))
    params = {"w": jax.random.normal(k3, (3, 2)), "v": jnp.asarray([0.5, -1.0])}

    def loss_fn(p):
        return jnp.mean((jnp.tanh(x @ p["w"]) @ p["v"] - y) ** 2) + 0.1 * jnp.sum(p["w"] ** 4)

    flat, unravel = ravel_pytree(params)
    explicit = np.asarray(jax.hessian(lambda z: loss_fn(unravel(z)))(flat), np.float64)
    return loss_fn, params, flat, unravel, explicit


def test_hvp_matches_the_explicit_hessian():
    loss_fn, params, flat, unravel, explicit = _problem()
    v = jax.random.normal(jax.random.PRNGKey(1), flat.shape)
    got = ravel_pytree(hessian.hvp(loss_fn, params, unravel(v)))[0]
    np.testing.assert_allclose(got, explicit @ np.asarray(v), rtol=1e-4, atol=1e-5)


def test_hutchinson_trace_is_unbiased_and_reports_its_error():
    loss_fn, params, _, _, explicit = _problem()
    est, stderr = jax.jit(lambda k: hessian.hessian_trace(
        loss_fn, params, k, num_samples=2000, return_stderr=True))(jax.random.PRNGKey(2))
    assert float(stderr) > 0
    assert abs(float(est) - np.trace(explicit)) < 4 * float(stderr)
    # Rademacher probes are exact for a diagonal Hessian, whatever the number of samples.
    diag = jnp.asarray([1.0, -2.0, 5.0])
    exact = hessian.hessian_trace(lambda z: 0.5 * jnp.sum(diag * z**2), jnp.ones(3),
                                  jax.random.PRNGKey(3), num_samples=1)
    np.testing.assert_allclose(exact, 4.0, rtol=1e-6)


def test_power_iteration_finds_the_top_eigenpair():
    loss_fn, params, _, _, explicit = _problem()
    values, vectors = np.linalg.eigh(explicit)
    top = np.argmax(np.abs(values))
    value, vector = jax.jit(lambda k: hessian.hessian_top_eigenvalue(
        loss_fn, params, k, num_iterations=200))(jax.random.PRNGKey(4))
    np.testing.assert_allclose(value, values[top], rtol=1e-3)
    flat = np.asarray(ravel_pytree(vector)[0])
    np.testing.assert_allclose(abs(flat @ vectors[:, top]), 1.0, atol=1e-3)


def _probes(key, num_probes, size):
    """The unit Rademacher probes ``hessian_spectral_density`` draws from ``key``."""
    probes = np.stack([np.asarray(jax.random.rademacher(k, (size,), jnp.float32))
                       for k in jax.random.split(key, num_probes)])
    return probes / np.sqrt(size)


@pytest.mark.parametrize("extra", [0, 3])
def test_full_lanczos_recovers_the_spectrum_and_the_probe_weights(extra):
    """With at least as many steps as dimensions the quadrature is the probe's spectral
    measure: nodes at the eigenvalues, weights ``(q_i . v)^2``; extra steps after the
    breakdown carry weight 0."""
    loss_fn, params, flat, _, explicit = _problem()
    n = flat.shape[0]
    key = jax.random.PRNGKey(5)
    nodes, weights = jax.jit(lambda k: hessian.hessian_spectral_density(
        loss_fn, params, k, num_iterations=n + extra, num_probes=2))(key)
    assert nodes.shape == weights.shape == (2, n + extra)
    values, vectors = np.linalg.eigh(explicit)
    for probe, got_nodes, got_weights in zip(_probes(key, 2, n), nodes, weights):
        np.testing.assert_allclose(np.sum(got_weights), 1.0, rtol=1e-5)
        # Each eigenvalue's weight: the quadrature mass within a small window around it.
        mass = [np.sum(np.where(np.abs(np.asarray(got_nodes) - lam) < 1e-3, got_weights, 0))
                for lam in values]
        np.testing.assert_allclose(mass, (vectors.T @ probe) ** 2, atol=2e-4)


def test_partial_lanczos_is_gauss_quadrature():
    """``m`` steps integrate ``v^T H^k v`` exactly for ``k < 2m``."""
    loss_fn, params, flat, _, explicit = _problem()
    m, key = 3, jax.random.PRNGKey(6)
    nodes, weights = hessian.hessian_spectral_density(loss_fn, params, key, num_iterations=m)
    probe = _probes(key, 1, flat.shape[0])[0]
    for k in range(2 * m):
        expected = probe @ np.linalg.matrix_power(explicit, k) @ probe
        got = np.sum(np.asarray(weights[0], np.float64) * np.asarray(nodes[0], np.float64) ** k)
        scale = np.abs(explicit).max() ** k
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * scale)


def test_spectral_density_is_a_normalized_gaussian_mixture():
    nodes = jnp.asarray([[-1.0, 0.5, 2.0], [0.0, 1.0, 3.0]])
    weights = jnp.asarray([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    grid = jnp.linspace(-6.0, 8.0, 20001)
    density = jax.jit(hessian.spectral_density)(nodes, weights, grid, variance=0.04)
    step = float(grid[1] - grid[0])
    np.testing.assert_allclose(np.sum(density) * step, 1.0, rtol=1e-4)
    mean = np.mean(np.sum(np.asarray(nodes) * np.asarray(weights), axis=1))
    np.testing.assert_allclose(np.sum(density * grid) * step, mean, rtol=1e-4)
    peak = np.exp(0) / np.sqrt(2 * np.pi * 0.04)  # one isolated node of weight 1
    single = hessian.spectral_density(jnp.asarray([1.0]), jnp.asarray([1.0]), jnp.asarray([1.0]),
                                      variance=0.04)
    np.testing.assert_allclose(single, [peak], rtol=1e-6)
    with pytest.raises(ValueError, match="`nodes`"):
        hessian.spectral_density(nodes, weights[:, :2], grid, variance=0.04)


@pytest.mark.parametrize("fn, name", [(hessian.hessian_trace, "num_samples"),
                                      (hessian.hessian_top_eigenvalue, "num_iterations"),
                                      (hessian.hessian_spectral_density, "num_iterations"),
                                      (hessian.hessian_spectral_density, "num_probes")])
def test_counts_are_checked(fn, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        fn(lambda z: jnp.sum(z**2), jnp.ones(2), jax.random.PRNGKey(0), **{name: 0})
