"""Decoupled weight decay against Algorithm 2 of Loshchilov & Hutter and against optax.adamw;
decay toward anchors; the perpendicular gradient against its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.optim import weight_decay as wd


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))}


def _grads(t):
    k1, k2 = jax.random.split(jax.random.PRNGKey(100 + t))
    return {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))}


def _run(opt, params, steps=6):
    state = opt.init(params)
    for t in range(steps):
        updates, state = opt.update(_grads(t), state, params)
        params = optax.apply_updates(params, updates)
    return params


def _schedule(count):
    return 0.5 * (1 + jnp.cos(jnp.pi * count / 10.0))


def test_adam_with_decoupled_decay_is_algorithm_2():
    alpha, lam, b1, b2, eps = 1e-2, 0.1, 0.9, 0.999, 1e-8
    opt = optax.chain(optax.adam(lambda t: alpha * _schedule(t), b1=b1, b2=b2, eps=eps),
                      wd.decoupled_weight_decay(lam, schedule=_schedule, mask=lambda p: {
                          "kernel": True, "bias": True}))
    got = _run(opt, _params())
    theta = {k: np.asarray(v, np.float64) for k, v in _params().items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    for t in range(6):
        g = {k: np.asarray(x, np.float64) for k, x in _grads(t).items()}
        eta = 0.5 * (1 + np.cos(np.pi * t / 10.0))
        for k in theta:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - b1 ** (t + 1)), v[k] / (1 - b2 ** (t + 1))
            theta[k] = theta[k] - eta * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * theta[k])
    for k in theta:
        np.testing.assert_allclose(got[k], theta[k], rtol=1e-5, atol=1e-6)


def test_optax_adamw_is_decoupled_decay_scaled_by_the_learning_rate():
    alpha, lam = 3e-3, 0.2
    everything = lambda p: {"kernel": True, "bias": True}
    ours = optax.chain(optax.adam(alpha), wd.decoupled_weight_decay(alpha * lam, mask=everything))
    theirs = optax.adamw(alpha, weight_decay=lam)
    a, b = _run(ours, _params()), _run(theirs, _params())
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)
    c = _run(optax.chain(optax.adam(alpha), wd.decoupled_weight_decay(lam, mask=everything)),
             _params())
    assert not np.allclose(c["kernel"], b["kernel"])  # the same lambda means different decay


def test_default_mask_decays_kernels_only_and_anchor_decay():
    params = _params()
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    opt = wd.decoupled_weight_decay(0.1)
    updates, _ = opt.update(zero_grads, opt.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * params["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], 0.0)
    anchor = jax.tree.map(lambda p: p + 1.0, params)
    to_anchor = wd.decay_to_anchor(0.1, anchor)
    updates, _ = to_anchor.update(zero_grads, to_anchor.init(params), params)
    np.testing.assert_allclose(updates["kernel"], 0.1 * np.ones((4, 3)), rtol=1e-6)
    zero_anchor = wd.decay_to_anchor(0.1, zero_grads)
    same, _ = zero_anchor.update(zero_grads, zero_anchor.init(params), params)
    np.testing.assert_allclose(same["kernel"], -0.1 * params["kernel"], rtol=1e-6)


def test_weight_decay_can_be_traced():
    opt = optax.inject_hyperparams(wd.decoupled_weight_decay)(weight_decay=0.1)
    params = _params()
    state = opt.init(params)

    def kernel_update(lam):
        hp = {**state.hyperparams, "weight_decay": lam}
        return opt.update(_grads(0), state._replace(hyperparams=hp), params)[0]["kernel"]

    out = jax.jit(jax.vmap(kernel_update))(jnp.array([0.1, 0.3]))
    np.testing.assert_allclose(out[1] - _grads(0)["kernel"], 3 * (out[0] - _grads(0)["kernel"]),
                               rtol=1e-5)


def test_orthogonal_gradient_is_perpendicular_and_keeps_the_norm():
    params, grads = _params(), _grads(0)
    opt = wd.orthogonal_gradient()
    out, _ = opt.update(grads, opt.init(params), params)
    for k in params:
        w, g = np.asarray(params[k], np.float64).ravel(), np.asarray(grads[k], np.float64).ravel()
        perp = g - (w @ g) / (w @ w) * w
        expected = perp * np.linalg.norm(g) / np.linalg.norm(perp)
        np.testing.assert_allclose(np.ravel(out[k]), expected, rtol=1e-5, atol=1e-6)
        assert abs(np.ravel(out[k]) @ w) < 1e-4
    aligned, _ = opt.update(params, opt.init(params), params)  # gradient along the weights
    assert all(np.all(np.isfinite(x)) and np.allclose(x, 0.0, atol=1e-3)
               for x in jax.tree.leaves(aligned))
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out16, _ = opt.update(half, opt.init(half), half)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out16))


def test_params_are_required():
    with pytest.raises(ValueError, match="needs `params`"):
        wd.decoupled_weight_decay(0.1).update(_params(), optax.ScaleByScheduleState(
            count=jnp.zeros([], jnp.int32)))
    with pytest.raises(ValueError, match="orthogonal_gradient needs `params`"):
        wd.orthogonal_gradient().update(_params(), optax.EmptyState())
