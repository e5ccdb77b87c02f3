"""Proximal L1 and group-lasso transformations against their closed forms (NumPy float64),
their defining minimization, and ISTA's optimality conditions on a lasso problem."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.optim import proximal


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"kernel": jax.random.normal(k1, (4, 3)), "bias": jax.random.normal(k2, (3,))}


def _updates():
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {"kernel": 0.5 * jax.random.normal(k1, (4, 3)),
            "bias": 0.5 * jax.random.normal(k2, (3,))}


def _apply(opt, params, updates):
    out, _ = opt.update(updates, opt.init(params), params)
    return optax.apply_updates(params, out)


def _soft(z, t):
    return np.sign(z) * np.maximum(np.abs(z) - t, 0.0)


def _group(z, t, axis):
    norms = np.sqrt(np.sum(z**2, axis=tuple(i for i in range(z.ndim) if i != axis % z.ndim),
                           keepdims=True))
    return z * np.maximum(0.0, 1.0 - t / np.maximum(norms, 1e-300)) * (norms > 0)


def test_prox_l1_is_soft_thresholding_of_the_gradient_step():
    params, updates = _params(), _updates()
    got = _apply(proximal.prox_l1(0.7, 0.5), params, updates)
    z = np.asarray(params["kernel"], np.float64) + np.asarray(updates["kernel"], np.float64)
    np.testing.assert_allclose(got["kernel"], _soft(z, 0.35), atol=1e-6)
    assert np.sum(np.asarray(got["kernel"]) == 0.0) > 0  # exact zeros
    # The default mask leaves the bias to the plain step.
    np.testing.assert_allclose(got["bias"], params["bias"] + updates["bias"], atol=1e-7)


@pytest.mark.parametrize("axis", [-1, 0])
def test_prox_group_lasso_is_group_soft_thresholding(axis):
    params, updates = _params(), _updates()
    got = _apply(proximal.prox_group_lasso(1.5, 0.8, axis=axis), params, updates)
    z = np.asarray(params["kernel"], np.float64) + np.asarray(updates["kernel"], np.float64)
    expected = _group(z, 1.2, axis)
    np.testing.assert_allclose(got["kernel"], expected, atol=1e-6)
    # Groups are removed whole: a slice along `axis` is all zero or has no zero.
    zeros = np.take(np.asarray(got["kernel"]) == 0, range(z.shape[axis]), axis=axis)
    assert all(np.all(zeros.take(i, axis=axis)) or not np.any(zeros.take(i, axis=axis))
               for i in range(z.shape[axis]))


def test_group_soft_threshold_minimizes_its_objective():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 4, 2, 5))  # a convolution kernel, groups = output units
    t = 1.3
    x = np.asarray(proximal.group_soft_threshold(jnp.asarray(z, jnp.float32), t), np.float64)

    def objective(v):
        return 0.5 * np.sum((v - z) ** 2) + t * np.sum(
            np.sqrt(np.sum(v**2, axis=(0, 1, 2))))

    best = objective(x)
    for _ in range(200):
        assert objective(x + 1e-2 * rng.normal(size=z.shape)) >= best - 1e-6
    # A group whose norm is below the threshold is zeroed.
    small = z.copy()
    small[..., 0] *= 1e-3
    out = np.asarray(proximal.group_soft_threshold(jnp.asarray(small, jnp.float32), t))
    np.testing.assert_array_equal(out[..., 0], 0.0)


def test_ista_reaches_the_lasso_optimality_conditions():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6))
    theta_true = np.array([2.0, 0.0, -1.5, 0.0, 0.0, 0.5])
    y = x @ theta_true + 0.05 * rng.normal(size=40)
    lam = 0.3
    lr = 1.0 / np.linalg.eigvalsh(x.T @ x / 40).max()
    xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)

    def loss(params):
        return 0.5 * jnp.mean((xj @ params["w"][:, 0] - yj) ** 2)

    opt = optax.chain(optax.sgd(lr), proximal.prox_l1(lam, lr, mask={"w": True}))
    params = {"w": jnp.zeros((6, 1))}
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(2000):
        params, state = step(params, state)
    w = np.asarray(params["w"][:, 0], np.float64)
    correlation = x.T @ (y - x @ w) / 40  # KKT: = lam sign(w) on the support, |.| <= lam off
    on = w != 0
    np.testing.assert_allclose(correlation[on], lam * np.sign(w[on]), atol=1e-4)
    assert np.all(np.abs(correlation[~on]) <= lam + 1e-4)
    assert on.sum() < 6


def test_schedule_scales_the_threshold():
    params, updates = _params(), _updates()
    schedule = optax.linear_schedule(1.0, 0.0, 4)
    opt = proximal.prox_l1(0.4, schedule)
    state = opt.init(params)
    _, state = opt.update(updates, state, params)
    out, _ = opt.update(updates, state, params)  # count 1: eta = 0.75
    z = np.asarray(params["kernel"], np.float64) + np.asarray(updates["kernel"], np.float64)
    np.testing.assert_allclose(params["kernel"] + out["kernel"], _soft(z, 0.3), atol=1e-6)


def test_jit_and_vmap_over_the_strength():
    params, updates = _params(), _updates()

    def run(strength):
        return _apply(proximal.prox_group_lasso(strength, 0.5), params, updates)["kernel"]

    strengths = jnp.array([0.0, 0.5, 2.0])
    swept = jax.jit(jax.vmap(run))(strengths)
    for i, s in enumerate(strengths):
        np.testing.assert_allclose(swept[i], run(float(s)), atol=1e-6)
    np.testing.assert_allclose(swept[0], params["kernel"] + updates["kernel"], atol=1e-6)


def test_extreme_inputs_bfloat16_and_zero_groups():
    params = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}
    zeros = jax.tree.map(jnp.zeros_like, params)
    for opt in (proximal.prox_l1(1.0, 0.1), proximal.prox_group_lasso(1.0, 0.1)):
        out = _apply(opt, params, zeros)
        assert np.all(np.isfinite(out["kernel"]))
        big = _apply(opt, jax.tree.map(lambda p: p + 1e4, params), zeros)
        assert np.all(np.isfinite(big["kernel"]))
    low = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    out = _apply(proximal.prox_group_lasso(0.3, 0.5), low,
                 jax.tree.map(lambda p: p.astype(jnp.bfloat16), _updates()))
    assert out["kernel"].dtype == jnp.bfloat16 and np.all(np.isfinite(
        np.asarray(out["kernel"], np.float32)))


def test_bad_inputs():
    params = _params()
    opt = proximal.prox_l1(0.1, 0.1, mask={"kernel": True})
    with pytest.raises(ValueError, match="mask"):
        opt.update(params, opt.init(params), params)
    opt = proximal.prox_l1(0.1, 0.1)
    with pytest.raises(ValueError, match="params"):
        opt.update(params, opt.init(params))
