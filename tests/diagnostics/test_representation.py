"""Alignment, uniformity and neural-collapse measures against NumPy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics import representation


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_alignment_matches_the_official_formula(alpha):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 5)), rng.normal(size=(16, 5))
    expected = np.mean(np.linalg.norm(_unit(x) - _unit(y), axis=1) ** alpha)
    got = jax.jit(lambda a, b: representation.alignment(a, b, alpha=alpha))(x, y)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    raw = np.mean(np.linalg.norm(x - y, axis=1) ** alpha)
    np.testing.assert_allclose(representation.alignment(x, y, alpha=alpha, normalize=False), raw,
                               rtol=1e-5)


def test_alignment_of_identical_pairs_is_zero_with_finite_gradients():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
    for alpha in (1.0, 2.0):
        value, grad = jax.value_and_grad(lambda a: representation.alignment(a, x, alpha=alpha))(x)
        assert float(value) == 0.0
        assert np.all(np.isfinite(grad))
    with pytest.raises(ValueError, match="`x`"):
        representation.alignment(np.zeros((4, 3)), np.zeros((4, 2)))


@pytest.mark.parametrize("t", [2.0, 50.0])
def test_uniformity_matches_the_official_formula(t):
    rng = np.random.default_rng(2)
    x = _unit(rng.normal(size=(12, 4)))
    pairs = [np.sum((x[i] - x[j]) ** 2) for i in range(12) for j in range(i + 1, 12)]
    expected = np.log(np.mean(np.exp(-t * np.asarray(pairs))))
    np.testing.assert_allclose(jax.jit(lambda a: representation.uniformity(a, t=t))(x),
                               expected, rtol=1e-5)


def test_uniformity_limits_and_stability():
    # All features equal: every pair at distance 0, log E[1] = 0; the gradient stays finite.
    same = jnp.ones((5, 3), jnp.float32)
    value, grad = jax.value_and_grad(representation.uniformity)(same)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    assert np.all(np.isfinite(grad))
    # Two antipodal points at a huge t: exp underflows, the log-sum-exp form does not.
    antipodal = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(representation.uniformity(antipodal, t=1e4), -4e4, rtol=1e-6)
    # bfloat16 features are computed in float32.
    x = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(representation.uniformity(jnp.asarray(x, jnp.bfloat16)),
                               representation.uniformity(x), rtol=2e-2)
    with pytest.raises(ValueError, match="`x`"):
        representation.uniformity(np.ones((1, 3)))


def _collapse_reference(h, y, num_classes, w=None, b=None):
    """Papyan, Han & Donoho's measures written from their definitions in float64."""
    means = np.stack([h[y == c].mean(0) for c in range(num_classes)])
    m = means - h.mean(0)
    within = h - means[y]
    sigma_w = within.T @ within / len(h)
    sigma_b = m.T @ m / num_classes
    norms = np.linalg.norm(m, axis=1)
    cos = (m / norms[:, None]) @ (m / norms[:, None]).T
    off = cos[~np.eye(num_classes, dtype=bool)]
    out = {"nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=1e-8, hermitian=True))
           / num_classes,
           "equinorm": norms.std(ddof=1) / norms.mean(),
           "equiangularity": off.std(ddof=1),
           "max_angle": np.mean(np.abs(off + 1 / (num_classes - 1)))}
    if w is not None:
        out["self_duality"] = np.sum((w.T / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2)
        nearest = np.argmin(((h[:, None] - means[None]) ** 2).sum(-1), 1)
        out["ncc_mismatch"] = np.mean(np.argmax(h @ w + b, 1) != nearest)
    return out


def test_neural_collapse_matches_its_definitions_on_imbalanced_classes():
    rng = np.random.default_rng(4)
    num_classes, d = 4, 7
    y = np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, 56)])
    h = rng.normal(size=(num_classes, d))[y] * 2 + rng.normal(size=(60, d))
    w, b = rng.normal(size=(d, num_classes)), rng.normal(size=num_classes)
    got = jax.jit(lambda f, lbl, k, c: representation.neural_collapse(
        f, lbl, num_classes, classifier=k, bias=c))(h, y, w, b)
    expected = _collapse_reference(h, y, num_classes, w, b)
    assert set(got) == set(expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # NC1 does not change under a rotation and a scaling of the features.
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    moved = representation.neural_collapse(3.0 * h @ rotation, y, num_classes)
    np.testing.assert_allclose(moved["nc1"], expected["nc1"], rtol=1e-4)


def test_a_collapsed_simplex_frame_scores_zero():
    num_classes = 5
    etf = np.eye(num_classes) - 1 / num_classes  # a simplex equiangular tight frame
    y = np.repeat(np.arange(num_classes), 3)
    h = 4.0 * etf[y] + 1.0  # features at their class means, with an offset mu_G
    out = representation.neural_collapse(h, y, num_classes, classifier=etf.T)
    for name, value in out.items():
        np.testing.assert_allclose(value, 0.0, atol=1e-5, err_msg=name)


def test_neural_collapse_checks_its_arguments():
    h, y = np.zeros((6, 3)), np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="`labels`"):
        representation.neural_collapse(h, y[:5], 3)
    with pytest.raises(ValueError, match="`classifier`"):
        representation.neural_collapse(h, y, 3, classifier=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="`bias`"):
        representation.neural_collapse(h, y, 3, bias=np.zeros(3))
    with pytest.raises(ValueError, match="`num_classes`"):
        representation.neural_collapse(h, y * 0, 1)
