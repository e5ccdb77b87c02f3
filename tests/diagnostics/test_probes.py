"""Linear probe, weighted kNN and SimSiam's collapse measure against hand-built cases and a
NumPy re-implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics import effective_rank, knn_accuracy, linear_probe, normalized_std

RNG = np.random.default_rng(0)


def _clusters(n, num_classes=4, dim=6, spread=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim)) * 3
    labels = rng.integers(0, num_classes, n)
    return (centers[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_linear_probe_separates_separable_classes_and_not_random_labels():
    x, y = _clusters(200)
    x_test, y_test = _clusters(100, seed=0)
    assert float(linear_probe(x, y, x_test, y_test, 4, steps=300)) == 1.0
    noise = RNG.normal(size=(200, 6)).astype(np.float32)
    chance = float(linear_probe(noise, RNG.integers(0, 4, 200), noise[:100],
                                RNG.integers(0, 4, 100), 4, steps=300))
    assert chance < 0.5
    # vmapped over seeds' features, as the experiments call it
    batched = jax.vmap(lambda a, c: linear_probe(a * x + c, y, a * x_test + c, y_test, 4,
                                                 steps=100))(jnp.array([1.0, 5.0]),
                                                             jnp.array([0.0, 3.0]))
    np.testing.assert_allclose(batched[0], batched[1], atol=1e-6)  # standardized features


def _knn_numpy(x, y, x_test, k, temperature, num_classes):
    unit = lambda f: f / np.linalg.norm(f, axis=-1, keepdims=True)
    s = unit(x_test) @ unit(x).T
    predictions = []
    for row in s:
        top = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(num_classes)
        np.add.at(votes, y[top], np.exp(row[top] / temperature))
        predictions.append(np.argmax(votes))
    return np.asarray(predictions)


def test_knn_matches_a_numpy_vote():
    x, y = _clusters(120, spread=2.0)
    x_test, y_test = _clusters(60, spread=2.0, seed=1)
    for k, t in ((1, 0.07), (10, 0.07), (25, 1.0)):
        expected = np.mean(_knn_numpy(x, y, x_test, k, t, 4) == y_test)
        np.testing.assert_allclose(knn_accuracy(x, y, x_test, y_test, 4, k=k, temperature=t),
                                   expected, atol=1e-6)
    with pytest.raises(ValueError, match="`k`"):
        knn_accuracy(x, y, x_test, y_test, 4, k=0)


def test_normalized_std_is_zero_when_collapsed_and_one_over_root_d_when_isotropic():
    collapsed = np.tile(RNG.normal(size=(1, 16)), (64, 1)) * RNG.uniform(1, 2, (64, 1))
    assert float(normalized_std(collapsed)) < 1e-6
    isotropic = RNG.normal(size=(4096, 16))
    np.testing.assert_allclose(normalized_std(isotropic), 1 / np.sqrt(16), rtol=0.02)


def test_effective_rank_counts_the_used_dimensions():
    line = np.outer(RNG.normal(size=100), RNG.normal(size=8))
    np.testing.assert_allclose(effective_rank(line), 1.0, rtol=1e-4)
    orthogonal = np.linalg.qr(RNG.normal(size=(100, 8)))[0] * 3.0  # equal singular values
    np.testing.assert_allclose(effective_rank(orthogonal), 8.0, rtol=1e-4)
    sigma = np.array([4.0, 2.0, 1.0, 1.0])
    p = sigma / sigma.sum() + 1e-7
    np.testing.assert_allclose(effective_rank(np.diag(sigma)), np.exp(-np.sum(p * np.log(p))),
                               rtol=1e-5)
    # a large common offset: one direction uncentred, the spread's rank once centred
    spread = RNG.normal(size=(500, 8))
    assert float(effective_rank(spread + 100.0)) < 1.5
    np.testing.assert_allclose(effective_rank(spread + 100.0, center=True),
                               effective_rank(spread - spread.mean(0)), rtol=1e-4)
    assert float(effective_rank(spread, center=True)) > 7


def test_labels_must_match_features():
    x, y = _clusters(20)
    with pytest.raises(ValueError, match="`train_features`"):
        linear_probe(x, y.astype(np.float32), x, y, 4)
    with pytest.raises(ValueError, match="`test_features`"):
        knn_accuracy(x, y, x, y[:5], 4)
