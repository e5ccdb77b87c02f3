"""IRMv1, V-REx, Fishr and Hessian alignment against float64 NumPy re-implementations for a
linear head (closed-form per-example gradients), explicit Hessians (jax.hessian as the oracle),
and the papers' limiting cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg.regularizers import domain_generalization as dg

B, D, K, E = 10, 3, 3, 2

# Jitted entry points (one compilation per call pattern keeps the file fast).
irm = jax.jit(dg.irm_penalty, static_argnums=0, static_argnames=("num_environments", "unbiased"))
vrex = jax.jit(dg.vrex_penalty, static_argnums=0, static_argnames=("num_environments",))
fishr = jax.jit(dg.fishr_penalty, static_argnums=0,
                static_argnames=("num_environments", "coordinate_mean"))
alignment = jax.jit(dg.hessian_alignment, static_argnums=0, static_argnames=(
    "num_environments", "estimator", "num_samples", "detach_mean"))


def _linear(params, inputs):
    return inputs @ params["kernel"] + params["bias"]


def _mlp(params, inputs):
    return jnp.tanh(inputs @ params["hidden"]) @ params["out"] + params["bias"]


def _problem(seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = {"kernel": jax.random.normal(ks[0], (D, K), dtype),
              "bias": 0.3 * jax.random.normal(ks[1], (K,), dtype)}
    x = jax.random.normal(ks[2], (B, D), dtype)
    y = jax.random.randint(ks[3], (B,), 0, K)
    env = jnp.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0])
    return params, x, y, env


def _mlp_problem(seed=1, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"hidden": 0.7 * jax.random.normal(ks[0], (D, 4), dtype),
              "out": 0.7 * jax.random.normal(ks[1], (4, K), dtype),
              "bias": 0.1 * jax.random.normal(ks[2], (K,), dtype)}
    _, x, y, env = _problem(seed, dtype)
    return params, x, y, env


# -- float64 NumPy oracles for the linear head -------------------------------------------------

def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _np_parts(params, x, y):
    W, b = np.asarray(params["kernel"], np.float64), np.asarray(params["bias"], np.float64)
    x = np.asarray(x, np.float64)
    z = x @ W + b
    p = _np_softmax(z)
    onehot = np.eye(K)[np.asarray(y)]
    loss = -np.log(p[np.arange(len(y)), np.asarray(y)])
    residual = p - onehot  # d loss / d logits
    # per-example gradients: dW = x (p - y)^T, db = p - y, flattened as ravel_pytree does
    # (dict keys in sorted order: bias, kernel)
    grads = np.concatenate([residual, np.einsum("bd,bk->bdk", x, residual).reshape(len(y), -1)],
                           axis=1)
    dscale = np.sum(residual * z, axis=1)  # d loss(w z) / dw at w = 1
    return loss, grads, dscale


def _np_irm(params, x, y, env, unbiased=False):
    _, _, d = _np_parts(params, x, y)
    env = np.asarray(env)
    out = []
    for e in range(E):
        de = d[env == e]
        out.append(de[::2].mean() * de[1::2].mean() if unbiased else de.mean() ** 2)
    return np.mean(out)


def _np_vrex(params, x, y, env):
    loss, _, _ = _np_parts(params, x, y)
    risks = np.array([loss[np.asarray(env) == e].mean() for e in range(E)])
    return np.mean((risks - risks.mean()) ** 2)


def _np_fishr(params, x, y, env):
    _, g, _ = _np_parts(params, x, y)
    env = np.asarray(env)
    v = np.stack([g[env == e].var(axis=0) for e in range(E)])
    return np.mean(np.sum((v - v.mean(axis=0)) ** 2, axis=1))


# -- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("unbiased", [False, True])
def test_irm_matches_numpy(unbiased):
    params, x, y, env = _problem()
    got = irm(_linear, params, x, y, env, num_environments=E, strength=1.0,
                         unbiased=unbiased)
    np.testing.assert_allclose(got, _np_irm(params, x, y, env, unbiased), rtol=1e-5, atol=1e-7)
    assert got != 0.0


def test_vrex_matches_numpy():
    params, x, y, env = _problem()
    got = vrex(_linear, params, x, y, env, num_environments=E, strength=1.0)
    np.testing.assert_allclose(got, _np_vrex(params, x, y, env), rtol=1e-5, atol=1e-8)
    assert got > 0.0


def test_fishr_matches_numpy_and_coordinate_mean():
    params, x, y, env = _problem()
    want = _np_fishr(params, x, y, env)
    got = fishr(_linear, params, x, y, env, num_environments=E, strength=1.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8)
    mean = fishr(_linear, params, x, y, env, num_environments=E, strength=1.0,
                            coordinate_mean=True)
    np.testing.assert_allclose(mean, want / (D * K + K), rtol=1e-4)


def _explicit_alignment(apply_fn, params, x, y, env, curvature, alpha, beta):
    """The penalty from explicit Hessians of each environment's risk (jax.hessian, float64)."""
    with jax.enable_x64(True):
        flat, unravel = jax.flatten_util.ravel_pytree(
            jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params))
        x64 = jnp.asarray(x, jnp.float64)

        def risk(theta, weights):
            logits = apply_fn(unravel(theta), x64)
            return jnp.sum(weights * -jax.nn.log_softmax(logits)[jnp.arange(B), y])

        @jax.jit
        def gradient_and_hessian(weights):
            return (jax.grad(risk)(flat, weights), jax.hessian(risk)(flat, weights))

        rows = [np.asarray(env == e, np.float64) / np.sum(env == e) for e in range(E)]

        def terms(weights):
            g, h = (np.asarray(a) for a in gradient_and_hessian(jnp.asarray(weights)))
            return g, curvature(h, g)

        envs = [terms(w) for w in rows]
        mean = terms(sum(rows) / E)
        return np.mean([alpha * np.sum((a - mean[1]) ** 2) + beta * np.sum((g - mean[0]) ** 2)
                        for g, a in envs])


def test_hgp_matches_explicit_hessians():
    params, x, y, env = _mlp_problem()
    got = alignment(_mlp, params, x, y, env, num_environments=E, alpha=0.3, beta=0.7)
    want = _explicit_alignment(_mlp, params, x, y, env, lambda h, g: h @ g, 0.3, 0.7)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def _separable(params, inputs):
    """Example i uses only parameter ``params[index_i]``: every risk has a diagonal Hessian."""
    x, index = inputs
    return jnp.stack([params["theta"][index] * x, jnp.zeros_like(x)], axis=1)


def test_hutchinson_is_exact_for_diagonal_hessians():
    x = jax.random.normal(jax.random.PRNGKey(3), (B,))
    index = jnp.arange(B) % 4
    y = jax.random.randint(jax.random.PRNGKey(4), (B,), 0, 2)
    env = jnp.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0])
    params = {"theta": jnp.array([0.5, -1.0, 2.0, 0.3])}
    got = alignment(_separable, params, (x, index), y, env, jax.random.PRNGKey(0),
                               num_environments=E, estimator="hutchinson", alpha=0.3, beta=0.7,
                               num_samples=3)

    def apply64(p, inputs64):
        return _separable(p, (inputs64, index))
    want = _explicit_alignment(apply64, params, x, y, env, lambda h, g: np.diag(h), 0.3, 0.7)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_hutchinson_converges_to_the_hessian_diagonal():
    params, x, y, env = _mlp_problem()
    kwargs = dict(num_environments=E, estimator="hutchinson", alpha=1.0, beta=0.0)
    want = _explicit_alignment(_mlp, params, x, y, env, lambda h, g: np.diag(h), 1.0, 0.0)
    few = [alignment(_mlp, params, x, y, env, jax.random.PRNGKey(s), num_samples=4,
                                **kwargs) for s in range(3)]
    many = alignment(_mlp, params, x, y, env, jax.random.PRNGKey(0),
                                num_samples=4000, **kwargs)
    assert abs(many - want) < 0.1 * want
    assert abs(many - want) < max(abs(f - want) for f in few)


# -- properties --------------------------------------------------------------------------------

def _duplicated(seed=0):
    """The same examples in both environments: equal risks and gradient statistics."""
    params, x, y, _ = _problem(seed)
    x2, y2 = jnp.concatenate([x, x]), jnp.concatenate([y, y])
    env = jnp.concatenate([jnp.zeros(B, jnp.int32), jnp.ones(B, jnp.int32)])
    return params, x2, y2, env


def test_vrex_fishr_and_alignment_vanish_when_environments_match():
    params, x, y, env = _duplicated()
    # zero up to float32 rounding of sums taken in a different order
    assert vrex(_linear, params, x, y, env, num_environments=E, strength=1.0) < 1e-10
    assert fishr(_linear, params, x, y, env, num_environments=E, strength=1.0) < 1e-10
    assert alignment(_linear, params, x, y, env, num_environments=E, alpha=1.0,
                                beta=1.0) < 1e-10
    assert irm(_linear, params, x, y, env, num_environments=E) > 0.0


def test_irm_vanishes_at_a_stationary_scale():
    params, x, y, _ = _problem()
    env = jnp.zeros(B, jnp.int32)
    scaled = lambda s: jax.tree.map(lambda p: s * p, params)
    z = np.asarray(_linear(params, x), np.float64)
    onehot = np.eye(K)[np.asarray(y)]
    slope = lambda s: np.mean(np.sum((_np_softmax(s * z) - onehot) * z, axis=1))
    lo, hi = -50.0, 50.0  # the risk is convex in the scale: bisect its derivative
    assert slope(lo) < 0 < slope(hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    s = np.float32((lo + hi) / 2)
    assert irm(_linear, scaled(s), x, y, env, num_environments=1,
                          strength=1.0) < 1e-10
    assert irm(_linear, scaled(1.3 * s), x, y, env, num_environments=1,
                          strength=1.0) > 1e-4


def test_empty_environments_are_left_out():
    params, x, y, env = _problem()
    for fn in (irm, vrex, fishr, alignment):
        two = fn(_linear, params, x, y, env, num_environments=2)
        three = fn(_linear, params, x, y, 2 * env, num_environments=3)  # env 1 empty
        np.testing.assert_allclose(three, two, rtol=1e-5, err_msg=str(fn))


def test_detach_mean_keeps_the_value_and_changes_the_gradient():
    params, x, y, env = _mlp_problem()

    def f(p, detach):
        return alignment(_mlp, p, x, y, env, num_environments=E,
                                    detach_mean=detach, alpha=1.0, beta=1.0)
    np.testing.assert_allclose(f(params, True), f(params, False), rtol=1e-6)
    grad = jax.jit(jax.grad(f), static_argnums=1)
    g_true, g_false = grad(params, True), grad(params, False)
    assert not np.allclose(g_true["out"], g_false["out"])


# -- gradients, jit / vmap, extremes, errors ---------------------------------------------------

CALLS = {
    "irm": lambda p, x, y, e, **kw: irm(_mlp, p, x, y, e, num_environments=E, **kw),
    "irm_unbiased": lambda p, x, y, e, **kw: irm(
        _mlp, p, x, y, e, num_environments=E, unbiased=True, **kw),
    "vrex": lambda p, x, y, e, **kw: vrex(_mlp, p, x, y, e, num_environments=E, **kw),
    "fishr": lambda p, x, y, e, **kw: fishr(_mlp, p, x, y, e, num_environments=E,
                                                        **kw),
    "hgp": lambda p, x, y, e, **kw: alignment(_mlp, p, x, y, e, num_environments=E,
                                                          **kw),
    "hutchinson": lambda p, x, y, e, **kw: alignment(
        _mlp, p, x, y, e, jax.random.PRNGKey(7), num_environments=E, estimator="hutchinson",
        num_samples=8, **kw),
}


@pytest.mark.parametrize("name", CALLS)
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        params, x, y, env = _mlp_problem(dtype=jnp.float64)
        f = lambda p: CALLS[name](p, x, y, env, strength=1.0)
        check_grads(jax.jit(f), (params,), order=1, modes=("rev",), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", CALLS)
def test_jit_and_vmap_over_strength(name):
    params, x, y, env = _mlp_problem()
    one = CALLS[name](params, x, y, env, strength=1.0)
    strengths = jnp.array([0.0, 0.5, 2.0])
    swept = jax.jit(jax.vmap(lambda s: CALLS[name](params, x, y, env, strength=s)))(strengths)
    np.testing.assert_allclose(swept, strengths * one, rtol=2e-5, atol=1e-9)


def test_vmap_over_alpha_and_beta():
    params, x, y, env = _mlp_problem()
    for hparam in ("alpha", "beta"):
        values = jnp.array([1e-3, 1e-2, 1e-1])
        swept = jax.jit(jax.vmap(lambda v: CALLS["hgp"](params, x, y, env, **{hparam: v})))(
            values)
        loop = [CALLS["hgp"](params, x, y, env, **{hparam: v}) for v in values]
        np.testing.assert_allclose(swept, loop, rtol=2e-5)
        assert len(set(np.asarray(swept).tolist())) == 3


@pytest.mark.parametrize("name", CALLS)
def test_extreme_logits_and_bfloat16(name):
    params, x, y, env = _mlp_problem()
    huge = jax.tree.map(lambda p: 3e3 * p, params)  # logits of order 1e4
    value, grad = jax.jit(jax.value_and_grad(lambda p: CALLS[name](p, x, y, env)))(huge)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    params16, x16, y, env = _mlp_problem(dtype=jnp.bfloat16)
    value, grad = jax.jit(jax.value_and_grad(lambda p: CALLS[name](p, x16, y, env)))(params16)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grad))


@pytest.mark.parametrize("name", CALLS)
def test_bad_inputs_are_named(name):
    params, x, y, env = _mlp_problem()
    with pytest.raises(TypeError, match="`environments`"):
        CALLS[name](params, x, y, env.astype(jnp.float32))
    with pytest.raises(ValueError, match="`environments`"):
        CALLS[name](params, x, y, env[:-1])
    with pytest.raises(TypeError, match="`labels`"):
        CALLS[name](params, x, y.astype(jnp.float32), env)
    with pytest.raises(TypeError, match="`params`"):
        CALLS[name]({**params, "bias": jnp.zeros(K, jnp.int32)}, x, y, env)


def test_bad_static_arguments_are_named():
    params, x, y, env = _mlp_problem()
    with pytest.raises(ValueError, match="`num_environments`"):
        dg.vrex_penalty(_mlp, params, x, y, env, num_environments=0)
    with pytest.raises(ValueError, match="`estimator`"):
        dg.hessian_alignment(_mlp, params, x, y, env, num_environments=E, estimator="exact")
    with pytest.raises(ValueError, match="`key`"):
        dg.hessian_alignment(_mlp, params, x, y, env, num_environments=E,
                             estimator="hutchinson")
