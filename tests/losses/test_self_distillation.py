"""Tests for jaxreg.losses.self_distillation (PS-KD).

Oracles: a float64 NumPy re-implementation, the analytic gradient ``softmax - target``, and
golden numbers from lgcnsai/PS-KD-Pytorch (``golden/noisy_labels.json``, key ``pskd``).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.losses import self_distillation as sd

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "noisy_labels.json").read_text())


def assert_close(actual, expected, rtol=1e-5):
    """float32 against a float64 oracle: relative 1e-5, absolute 1e-6 of the oracle's scale."""
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * 0.1 * scale)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_soft_target(y, prev, alpha, num_classes):
    return (1 - alpha) * np.eye(num_classes)[y] + alpha * prev


def np_pskd(z, y, prev, alpha):
    m = z.max(-1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    return -np.sum(np_soft_target(y, prev, alpha, z.shape[-1]) * log_p, -1)


def random_batch(seed, shape=(8,), num_classes=10, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    prev = np_softmax(rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    return z, rng.integers(0, num_classes, shape), prev


@pytest.mark.parametrize("seed,shape,num_classes", [(0, (8,), 10), (1, (2, 3), 5), (2, (4,), 100)])
@pytest.mark.parametrize("alpha", [0.8, 0.25])
def test_matches_numpy_and_returns_the_predictions(seed, shape, num_classes, alpha):
    z, y, prev = random_batch(seed, shape, num_classes)
    loss, new_probs = sd.progressive_self_distillation(z, y, prev, alpha=alpha)
    assert loss.shape == y.shape and new_probs.shape == z.shape
    assert_close(loss, np_pskd(z.astype(np.float64), y, prev, alpha))
    assert_close(new_probs, np_softmax(z.astype(np.float64)))


def test_default_alpha_is_the_final_alpha_of_the_paper():
    z, y, prev = random_batch(3)
    assert_close(sd.progressive_self_distillation(z, y, prev)[0],
                 np_pskd(z.astype(np.float64), y, prev, 0.8))


@pytest.mark.parametrize("case", GOLDEN["pskd"],
                         ids=lambda c: f"alpha{c['kwargs']['alpha']}-{c['input']}")
def test_matches_official_pskd_code(case):
    inputs = GOLDEN["inputs"][case["input"]]
    z = np.asarray(inputs["logits"], np.float32)
    y = np.asarray(inputs["labels"], np.int32)
    prev = np.asarray(case["prev_probs"], np.float32)
    loss, new_probs = sd.progressive_self_distillation(z, y, prev, **case["kwargs"])
    assert_close(loss, case["loss_per_example"])
    assert_close(jnp.mean(loss), case["loss_mean"])
    assert_close(new_probs, case["new_probs"])
    grad = jax.grad(
        lambda x: jnp.mean(sd.progressive_self_distillation(x, y, prev, **case["kwargs"])[0]))(z)
    assert_close(grad, case["grad_of_mean"])


def test_gradient_is_softmax_minus_target_and_target_is_constant():
    z, y, prev = random_batch(4)
    grad_z, grad_prev = jax.grad(
        lambda x, p: jnp.sum(sd.progressive_self_distillation(x, y, p, alpha=0.6)[0]),
        (0, 1))(z, prev)
    expected = np_softmax(z.astype(np.float64)) - np_soft_target(y, prev, 0.6, z.shape[-1])
    assert_close(grad_z, expected)
    assert not np.any(grad_prev)
    jac = jax.jacobian(lambda x: sd.progressive_self_distillation(x, y, prev)[1])(z)
    assert not np.any(jac)


def test_reduces_to_cross_entropy():
    z, y, prev = random_batch(5)
    ce = -np.log(np_softmax(z.astype(np.float64))[np.arange(len(y)), y])
    assert_close(sd.progressive_self_distillation(z, y, prev, alpha=0.0)[0], ce)
    one_hot = sd.initial_predictions(y, z.shape[-1])
    for alpha in (0.1, 0.8, 1.0):
        assert_close(sd.progressive_self_distillation(z, y, one_hot, alpha=alpha)[0], ce)


def test_alpha_can_be_traced_and_vmapped():
    z, y, prev = random_batch(6)
    alphas = jnp.array([0.0, 0.3, 0.8])
    sweep = jax.jit(jax.vmap(lambda a: sd.progressive_self_distillation(z, y, prev, alpha=a)))
    losses, probs = sweep(alphas)
    for i, a in enumerate([0.0, 0.3, 0.8]):
        loss_i, probs_i = sd.progressive_self_distillation(z, y, prev, alpha=a)
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-6)
        np.testing.assert_allclose(probs[i], probs_i, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_extreme_logits_give_finite_values_and_gradients(dtype):
    z = jnp.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [0.0, 0.0, 0.0]], dtype)
    y = jnp.array([0, 1, 2])
    prev = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype)
    loss, probs = sd.progressive_self_distillation(z, y, prev)
    grad = jax.grad(lambda x: jnp.sum(sd.progressive_self_distillation(x, y, prev)[0]))(z)
    assert loss.dtype == jnp.float32 and probs.dtype == jnp.float32
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    expected = np_pskd(np.asarray(z, np.float64), np.asarray(y), np.asarray(prev, np.float64), 0.8)
    assert_close(loss, expected)
    assert 0.8 * 1.9e4 < loss[0] < 0.8 * 2.1e4 and 0.2 * 1.9e4 < loss[1] < 0.2 * 2.1e4


def test_pskd_alpha_schedule():
    assert sd.pskd_alpha(0, num_epochs=300) == pytest.approx(0.8 / 300)
    assert sd.pskd_alpha(299, num_epochs=300) == pytest.approx(0.8)
    assert sd.pskd_alpha(4, alpha_final=0.5, num_epochs=10) == pytest.approx(0.25)
    traced = jax.jit(lambda e, a: sd.pskd_alpha(e, alpha_final=a, num_epochs=300))(
        jnp.arange(300), jnp.float32(0.8))
    np.testing.assert_allclose(traced, 0.8 * np.arange(1, 301) / 300, rtol=1e-6)


def test_initial_predictions_are_one_hot_labels():
    buffer = sd.initial_predictions(np.array([2, 0, 1]), 4)
    assert buffer.dtype == jnp.float32
    np.testing.assert_array_equal(buffer, np.eye(4)[[2, 0, 1]])
    with pytest.raises(TypeError, match="`labels` must hold integer"):
        sd.initial_predictions(np.array([2.0, 0.0]), 4)


def test_bad_inputs_raise_clear_errors():
    z, y, prev = random_batch(7)
    with pytest.raises(ValueError, match="`prev_probs` must have the shape of `logits`"):
        sd.progressive_self_distillation(z, y, prev[:, :-1])
    with pytest.raises(TypeError, match="`prev_probs` must be a floating"):
        sd.progressive_self_distillation(z, y, prev.astype(np.int32))
    with pytest.raises(TypeError, match="`labels` must hold integer"):
        sd.progressive_self_distillation(z, y.astype(np.float32), prev)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        sd.progressive_self_distillation(z, y[:-1], prev)
