import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.optim import multi_adam


def _numpy_multi_adam(grads, lr, b1=0.99, b2=0.99, eps=1e-8, weights=None):
    m = len(grads[0])
    weights = np.full(m, 1.0 / m) if weights is None else np.asarray(weights)
    mu = np.zeros_like(grads[0])
    nu = np.zeros_like(grads[0])
    outs = []
    for t, g in enumerate(grads, start=1):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g ** 2
        per = mu / (np.sqrt(nu) / np.sqrt(1 - b2 ** t) + eps)
        outs.append(-lr / (1 - b1 ** t) * np.tensordot(weights, per, axes=1))
    return outs


def _run(tx, grads):
    params = {"w": jnp.zeros(grads[0].shape[1:])}
    state, outs = tx.init(params), []
    for g in grads:
        out, state = jax.jit(tx.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
        outs.append(np.asarray(out["w"]))
    return outs


def test_matches_the_reference_update_over_several_steps():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 4)) * np.array([[1.0], [100.0], [0.01]]) for _ in range(5)]
    got = _run(multi_adam(1e-2, num_objectives=3, group_weights=(0.5, 0.3, 0.2)), grads)
    expected = _numpy_multi_adam(grads, 1e-2, weights=(0.5, 0.3, 0.2))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_each_group_is_scale_invariant():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((2, 4)) for _ in range(3)]
    scaled = [g * np.array([[1.0], [1e4]]) for g in grads]
    a = _run(multi_adam(1e-3, num_objectives=2, eps=0.0), grads)
    b = _run(multi_adam(1e-3, num_objectives=2, eps=0.0), scaled)
    np.testing.assert_allclose(a[-1], b[-1], rtol=1e-4)


def test_schedule_and_injected_learning_rate():
    grads = [np.ones((2, 3))] * 2
    constant = _run(multi_adam(1e-3, num_objectives=2), grads)
    scheduled = _run(multi_adam(optax.constant_schedule(1e-3), num_objectives=2), grads)
    injected = _run(optax.inject_hyperparams(multi_adam, static_args=("num_objectives",))(
        learning_rate=1e-3, num_objectives=2), grads)
    np.testing.assert_allclose(scheduled[-1], constant[-1], rtol=1e-6)
    np.testing.assert_allclose(injected[-1], constant[-1], rtol=1e-6)
    with pytest.raises(ValueError, match="give `num_objectives`"):
        multi_adam(1e-3)
