"""Output penalties against NumPy float64 formulas, their gradients and limiting cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.regularizers import outputs as o

LOGITS = np.random.default_rng(0).normal(size=(5, 4)) * 3


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy(z):
    p = _softmax(z)
    return -(p * np.log(p)).sum(-1)


def test_logit_z_loss_is_squared_log_partition():
    log_z = np.log(np.exp(LOGITS).sum(-1))
    np.testing.assert_allclose(o.logit_z_loss(jnp.asarray(LOGITS, jnp.float32)), 1e-4 * log_z**2,
                               rtol=1e-5)
    # Its gradient is 2 lambda log Z softmax(z): zero exactly when Z = 1.
    normalised = jnp.asarray(LOGITS - log_z[:, None], jnp.float32)
    grad = jax.grad(lambda z: o.logit_z_loss(z, strength=1.0).sum())(normalised)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_entropy_penalties_match_numpy_and_have_opposite_signs():
    z = jnp.asarray(LOGITS, jnp.float32)
    np.testing.assert_allclose(o.entropy_minimization(z, strength=0.5), 0.5 * _entropy(LOGITS),
                               rtol=1e-5)
    np.testing.assert_allclose(o.confidence_penalty(z, strength=0.5), -0.5 * _entropy(LOGITS),
                               rtol=1e-5)
    uniform = jnp.zeros((2, 4))
    np.testing.assert_allclose(o.entropy_minimization(uniform), np.log(4), rtol=1e-6)


def test_entropy_gradient_matches_the_closed_form():
    """dH/dz_k = -p_k (log p_k + H)."""
    z = jnp.asarray(LOGITS, jnp.float32)
    p = _softmax(LOGITS)
    expected = -p * (np.log(p) + _entropy(LOGITS)[:, None])
    np.testing.assert_allclose(jax.grad(lambda x: o.entropy_minimization(x).sum())(z), expected,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", [o.logit_z_loss, o.confidence_penalty, o.entropy_minimization])
def test_extreme_and_bfloat16_logits_stay_finite(fn):
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    value, grad = jax.value_and_grad(lambda x: fn(x).sum())(z)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    value = fn(jnp.asarray(LOGITS, jnp.bfloat16))
    assert value.dtype == jnp.float32 and np.all(np.isfinite(value))


def test_flooding_descends_above_and_ascends_below_the_level():
    losses = jnp.array([0.2, 0.4])
    assert float(o.flooding(losses, level=0.1)) == pytest.approx(0.3)
    assert float(o.flooding(losses, level=0.5)) == pytest.approx(0.7)
    above = jax.grad(lambda x: o.flooding(x, level=0.1))(losses)
    below = jax.grad(lambda x: o.flooding(x, level=0.5))(losses)
    np.testing.assert_allclose(above, [0.5, 0.5])
    np.testing.assert_allclose(below, [-0.5, -0.5])
    swept = jax.vmap(lambda b: o.flooding(losses, level=b))(jnp.array([0.0, 0.3, 0.6]))
    np.testing.assert_allclose(swept, [0.3, 0.3, 0.9], rtol=1e-6)


def test_knowledge_distillation_matches_numpy_and_hintons_gradient():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 4)) * 2, rng.normal(size=(5, 4)) * 2
    temperature = 3.0
    p, q = _softmax(t / temperature), _softmax(s / temperature)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    value = o.knowledge_distillation(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                     strength=0.5, temperature=temperature)
    np.testing.assert_allclose(value, 0.5 * temperature**2 * kl, rtol=1e-5)
    # d/ds [T^2 KL] = T (q - p) (Hinton et al., Sec. 2.1); nothing reaches the teacher.
    gs, gt = jax.grad(lambda a, b: o.knowledge_distillation(a, b, temperature=temperature).sum(),
                      argnums=(0, 1))(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(gs, temperature * (q - p), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(gt, 0.0)
    same = o.knowledge_distillation(jnp.asarray(s, jnp.float32), jnp.asarray(s, jnp.float32))
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_feature_distillation_is_half_squared_distance():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(3, 2, 4)), rng.normal(size=(3, 2, 4))
    value = o.feature_distillation(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                                   strength=2.0)
    np.testing.assert_allclose(value, ((s - t)**2).sum((1, 2)), rtol=1e-5)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="`logits`"):
        o.logit_z_loss(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="`teacher`"):
        o.knowledge_distillation(jnp.ones((2, 3)), jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="`loss`"):
        o.flooding(jnp.ones(3, jnp.int32), level=0.1)
