"""The projection-based equivariance regularizer (PER) against group averages (Reynolds
operators) computed in NumPy float64, and its penalty against ``1/2 ||w - P w||^2``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric import central_difference

from jaxreg.regularizers import equivariance as eq


def _shift(n):
    return np.roll(np.eye(n), 1, axis=0)


def _rotation(theta):
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _reynolds(kernel, rhos_in, rhos_out):
    """Group average of ``rho_in K rho_out^T`` over every element (orthogonal reps)."""
    return np.mean([ri @ kernel @ ro.T for ri, ro in zip(rhos_in, rhos_out)], axis=0)


def test_cyclic_projector_is_the_group_average():
    n_in, n_out = 5, 5
    projector = np.asarray(eq.equivariant_projector(_shift(n_in)[None], _shift(n_out)[None]),
                           np.float64)
    np.testing.assert_allclose(projector, projector.T, atol=1e-6)
    np.testing.assert_allclose(projector @ projector, projector, atol=1e-5)
    kernel = np.random.default_rng(0).normal(size=(n_in, n_out))
    elements_in = [np.linalg.matrix_power(_shift(n_in), k) for k in range(n_in)]
    elements_out = [np.linalg.matrix_power(_shift(n_out), k) for k in range(n_in)]
    expected = _reynolds(kernel, elements_in, elements_out)
    np.testing.assert_allclose((projector @ kernel.reshape(-1)).reshape(n_in, n_out), expected,
                               atol=1e-5)
    assert np.trace(projector) == pytest.approx(5.0, abs=1e-4)  # circulant matrices


def test_rectangular_kernel_between_different_representations():
    # C_3 acts on R^3 by cyclic shift (inputs) and on R^6 = R^3 + R^3 (outputs).
    rho_in = _shift(3)
    rho_out = np.kron(np.eye(2), _shift(3))
    projector = np.asarray(eq.equivariant_projector(rho_in, rho_out), np.float64)
    kernel = np.random.default_rng(1).normal(size=(3, 6))
    elements = [(np.linalg.matrix_power(rho_in, k), np.linalg.matrix_power(rho_out, k))
                for k in range(3)]
    expected = _reynolds(kernel, *zip(*elements))
    np.testing.assert_allclose((projector @ kernel.reshape(-1)).reshape(3, 6), expected,
                               atol=1e-5)


def test_lie_algebra_so2_projector_is_the_haar_average():
    generator = np.array([[0.0, -1.0], [1.0, 0.0]])
    projector = np.asarray(eq.equivariant_projector(algebra_in=generator,
                                                    algebra_out=generator), np.float64)
    kernel = np.random.default_rng(2).normal(size=(2, 2))
    angles = 2 * np.pi * np.arange(16) / 16  # exact for the degree-2 trigonometric integrand
    rotations = [_rotation(t) for t in angles]
    expected = _reynolds(kernel, rotations, rotations)
    np.testing.assert_allclose((projector @ kernel.reshape(-1)).reshape(2, 2), expected,
                               atol=1e-5)
    assert np.trace(projector) == pytest.approx(2.0, abs=1e-4)  # a I + b J


def test_bias_projector_from_the_trivial_representation():
    projector = eq.equivariant_projector(np.ones((1, 1, 1)), _shift(4)[None])
    bias = np.array([1.0, 2.0, 3.0, 6.0])
    np.testing.assert_allclose(projector @ bias, np.full(4, 3.0), atol=1e-5)


def _setup():
    rng = np.random.default_rng(3)
    cyclic = eq.equivariant_projector(_shift(4), _shift(4))
    # The subgroup {e, shift^2} has a larger equivariant subspace.
    half = eq.equivariant_projector(np.linalg.matrix_power(_shift(4), 2),
                                    np.linalg.matrix_power(_shift(4), 2))
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
                        "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
              "head": {"kernel": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)}}
    projectors = {"dense": {"kernel": jnp.stack([cyclic, half]), "bias": None}, "head": None}
    return params, projectors, np.asarray(cyclic, np.float64), np.asarray(half, np.float64)


def _numpy_penalty(w, cyclic, half, strength):
    w = w.reshape(-1)
    return (strength[0] * 0.5 * np.sum((w - cyclic @ w) ** 2)
            + strength[1] * 0.5 * np.sum((w - half @ w) ** 2))


def test_penalty_value_per_group_coefficients():
    params, projectors, cyclic, half = _setup()
    strength = np.array([2.0, 0.5])
    got = eq.soft_equivariance(params, projectors, strength=jnp.asarray(strength))
    expected = _numpy_penalty(np.asarray(params["dense"]["kernel"], np.float64), cyclic, half,
                              strength)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    scalar = eq.soft_equivariance(params, projectors, strength=3.0)
    assert float(scalar) == pytest.approx(
        _numpy_penalty(np.asarray(params["dense"]["kernel"], np.float64), cyclic, half,
                       np.array([3.0, 3.0])), rel=1e-5)


def test_zero_for_equivariant_weights_positive_otherwise():
    params, projectors, cyclic, _ = _setup()
    circulant = (cyclic @ np.asarray(params["dense"]["kernel"], np.float64).reshape(-1))
    equivariant = {**params, "dense": {**params["dense"],
                                       "kernel": jnp.asarray(circulant.reshape(4, 4))}}
    assert float(eq.soft_equivariance(equivariant, projectors)) == pytest.approx(0.0, abs=1e-9)
    assert float(eq.soft_equivariance(params, projectors)) > 0.1
    assert float(eq.equivariance_error(
        jnp.asarray(circulant.reshape(4, 4)), _shift(4)[None], _shift(4)[None])) < 1e-6
    assert float(eq.equivariance_error(
        params["dense"]["kernel"], _shift(4)[None], _shift(4)[None])) > 0.1


def test_gradient_against_finite_differences():
    params, projectors, cyclic, half = _setup()
    strength = np.array([2.0, 0.5])
    grads = jax.grad(eq.soft_equivariance)(params, projectors, strength=jnp.asarray(strength))
    expected = central_difference(lambda w: _numpy_penalty(w, cyclic, half, strength),
                                  np.asarray(params["dense"]["kernel"], np.float64))
    np.testing.assert_allclose(grads["dense"]["kernel"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(grads["dense"]["bias"], 0.0)
    np.testing.assert_array_equal(grads["head"]["kernel"], 0.0)


def test_jit_and_vmap_over_strength():
    params, projectors, _, _ = _setup()
    fn = jax.jit(lambda s: eq.soft_equivariance(params, projectors, strength=s))
    strengths = jnp.array([0.0, 1.0, 4.0])
    swept = jax.vmap(fn)(strengths)
    one = eq.soft_equivariance(params, projectors, strength=1.0)
    np.testing.assert_allclose(swept, strengths * one, rtol=1e-5)


def test_extreme_and_bfloat16_inputs():
    params, projectors, _, _ = _setup()
    big = jax.tree.map(lambda p: 1e4 * p, params)
    assert np.isfinite(float(eq.soft_equivariance(big, projectors)))
    low = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    value = eq.soft_equivariance(low, projectors)
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    np.testing.assert_allclose(value, eq.soft_equivariance(params, projectors), rtol=2e-2)
    grads = jax.grad(eq.soft_equivariance)(jax.tree.map(jnp.zeros_like, params), projectors)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bad_inputs_name_the_argument():
    params, projectors, _, _ = _setup()
    with pytest.raises(ValueError, match="projectors"):
        eq.soft_equivariance(params, {"dense": {"kernel": jnp.eye(16)}}, strength=1.0)
    with pytest.raises(ValueError, match="projectors"):
        eq.soft_equivariance(params, {**projectors, "head": {"kernel": jnp.eye(3)}})
    with pytest.raises(ValueError, match="strength"):
        eq.soft_equivariance(params, projectors, strength=jnp.ones(3))
    with pytest.raises(TypeError, match="params"):
        eq.soft_equivariance({**params, "dense": {**params["dense"],
                                                  "kernel": jnp.ones((4, 4), jnp.int32)}},
                             projectors)
    with pytest.raises(ValueError, match="algebra_out"):
        eq.equivariant_projector(algebra_in=np.eye(2))
    with pytest.raises(ValueError, match="rho_out"):
        eq.equivariant_projector(_shift(3)[None], np.stack([_shift(3)] * 2))
    with pytest.raises(TypeError, match="rho_in"):
        jax.jit(lambda r: eq.equivariant_projector(r, r))(jnp.eye(3)[None])
