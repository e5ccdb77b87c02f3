"""Smoothness regularizers against NumPy float64 re-implementations with hand-written
gradients (VAT), closed forms (input gradients, R1/R2, Hessian trace), an explicit
``jax.jacfwd`` Jacobian (contractive penalty, in the test only), and mixup's properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg.regularizers import smoothness as sm

B, D, H, K = 5, 4, 6, 3


def _mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def _mlp_params(seed=0, dtype=jnp.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    shapes = {"w1": (D, H), "b1": (H,), "w2": (H, K), "b2": (K,)}
    return {k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in shapes.items()}


def _inputs(seed=1, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, D)), dtype)


# -- VAT: a NumPy float64 re-implementation of vat_tf with the gradient written by hand ----

def _np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _np_normalize(d):
    d = d / (1e-12 + np.abs(d).max(axis=1, keepdims=True))
    return d / np.sqrt(1e-6 + (d**2).sum(axis=1, keepdims=True))


def _np_kl_mean(p, logits):
    q = _np_softmax(logits)
    return np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1))


def _np_vat(params, x, d, epsilon, xi, iterations):
    w1, b1, w2, b2 = (np.asarray(params[k], np.float64) for k in ("w1", "b1", "w2", "b2"))

    def forward(z):
        h = np.tanh(z @ w1 + b1)
        return h, h @ w2 + b2

    p = _np_softmax(forward(x)[1])
    for _ in range(iterations):
        d = xi * _np_normalize(d)
        h, logits = forward(x + d)
        # d KL(p || softmax(m)) / d m = (softmax(m) - p) / B, back through the MLP.
        upstream = (_np_softmax(logits) - p) / x.shape[0]
        d = ((upstream @ w2.T) * (1 - h**2)) @ w1.T
    r_adv = epsilon * _np_normalize(d)
    return _np_kl_mean(p, forward(x + r_adv)[1]), r_adv


@pytest.mark.parametrize("iterations", [0, 1, 3])
@pytest.mark.parametrize("epsilon", [8.0, 0.5])
def test_vat_matches_numpy_float64(iterations, epsilon):
    with jax.enable_x64(True):
        params = _mlp_params(dtype=jnp.float64)
        x = _inputs(dtype=jnp.float64)
        key = jax.random.PRNGKey(7)
        d = np.asarray(jax.random.normal(key, x.shape, jnp.float64))  # the draw vat_tf makes
        got = sm.virtual_adversarial(_mlp, params, x, key, epsilon=epsilon,
                                     num_power_iterations=iterations)
        expected, _ = _np_vat(params, np.asarray(x), d, epsilon, 1e-6, iterations)
        np.testing.assert_allclose(got, expected, rtol=1e-7)
        assert expected > 1e-3
        # The exact Hessian-vector product is the xi -> 0 limit: O(xi) from the reference.
        hvp = sm.virtual_adversarial(_mlp, params, x, key, epsilon=epsilon,
                                     num_power_iterations=iterations, finite_difference=False)
        np.testing.assert_allclose(hvp, expected, rtol=1e-5)


def test_vat_exact_hvp_is_stable_in_float32_at_the_default_xi():
    params, x, key = _mlp_params(), _inputs(), jax.random.PRNGKey(7)
    d = np.asarray(jax.random.normal(key, x.shape), np.float64)
    expected, _ = _np_vat(params, np.asarray(x, np.float64), d, 8.0, 1e-6, 1)

    def call(p, z):
        return sm.virtual_adversarial(_mlp, p, z, key, finite_difference=False)

    np.testing.assert_allclose(call(params, x), expected, rtol=1e-4)
    np.testing.assert_allclose(jax.jit(call)(params, x), expected, rtol=1e-4)


def test_vat_float32_matches_numpy_at_a_moderate_xi():
    params, x, key = _mlp_params(), _inputs(), jax.random.PRNGKey(3)
    d = np.asarray(jax.random.normal(key, x.shape), np.float64)
    got = sm.virtual_adversarial(_mlp, params, x, key, strength=2.0, xi=1e-2)
    expected, _ = _np_vat(params, np.asarray(x, np.float64), d, 8.0, 1e-2, 1)
    np.testing.assert_allclose(got, 2.0 * expected, rtol=1e-4)


def test_vat_power_iteration_finds_the_most_sensitive_direction():
    """With many iterations r_adv is the top eigenvector of J^T diag-Fisher J, which at a
    small epsilon makes LDS ~ epsilon^2 / 2 * lambda_max per example."""
    with jax.enable_x64(True):
        params = _mlp_params(dtype=jnp.float64)
        x = _inputs(dtype=jnp.float64)[:1]
        epsilon = 1e-3
        got = sm.virtual_adversarial(_mlp, params, x, jax.random.PRNGKey(0), epsilon=epsilon,
                                     num_power_iterations=30)
        jac = np.asarray(jax.jacfwd(lambda z: _mlp(params, z[None])[0])(x[0]))
        p = _np_softmax(np.asarray(_mlp(params, x)))[0]
        fisher = jac.T @ (np.diag(p) - np.outer(p, p)) @ jac
        top = np.linalg.eigvalsh(fisher)[-1]
        np.testing.assert_allclose(got, epsilon**2 / 2 * top, rtol=1e-2)


def test_vat_gradient_treats_the_perturbation_and_clean_prediction_as_constants():
    with jax.enable_x64(True):
        params = _mlp_params(dtype=jnp.float64)
        x = _inputs(dtype=jnp.float64)
        key = jax.random.PRNGKey(11)
        d = np.asarray(jax.random.normal(key, x.shape, jnp.float64))
        grad = jax.grad(lambda p: sm.virtual_adversarial(_mlp, p, x, key))(params)
        _, r_adv = _np_vat(params, np.asarray(x), d, 8.0, 1e-6, 1)
        w1, b1, w2 = (np.asarray(params[k]) for k in ("w1", "b1", "w2"))
        z = np.asarray(x) + r_adv
        h = np.tanh(z @ w1 + b1)
        p = _np_softmax(np.asarray(_mlp(params, x)))
        upstream = (_np_softmax(h @ w2 + np.asarray(params["b2"])) - p) / B
        np.testing.assert_allclose(grad["w2"], h.T @ upstream, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(grad["b2"], upstream.sum(0), rtol=1e-6, atol=1e-12)
        back = (upstream @ w2.T) * (1 - h**2)
        np.testing.assert_allclose(grad["w1"], z.T @ back, rtol=1e-6, atol=1e-12)


def test_vat_is_nonnegative_and_vanishes_for_a_constant_model():
    x = _inputs()
    for seed in range(4):
        value = sm.virtual_adversarial(_mlp, _mlp_params(seed), x, jax.random.PRNGKey(seed))
        assert value >= 0.0
    def constant(params, inputs):
        return jnp.broadcast_to(params["b2"], (inputs.shape[0], K))
    assert sm.virtual_adversarial(constant, _mlp_params(), x, jax.random.PRNGKey(0)) == 0.0
    assert sm.virtual_adversarial(_mlp, _mlp_params(), x, jax.random.PRNGKey(0),
                                  epsilon=0.0) == 0.0


def test_vat_on_image_shaped_inputs_normalizes_per_example():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 2, 2, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, K)), jnp.float32)

    def flat(params, inputs):
        return inputs.reshape(inputs.shape[0], -1) @ params

    value = sm.virtual_adversarial(flat, w, x, jax.random.PRNGKey(0), xi=1e-2)
    key = jax.random.PRNGKey(0)
    d = np.asarray(jax.random.normal(key, x.shape), np.float64).reshape(3, 4)
    x2 = np.asarray(x, np.float64).reshape(3, 4)
    w64 = np.asarray(w, np.float64)
    p = _np_softmax(x2 @ w64)
    d = 1e-2 * _np_normalize(d)
    d = ((_np_softmax((x2 + d) @ w64) - p) / 3) @ w64.T
    expected = _np_kl_mean(p, (x2 + 8.0 * _np_normalize(d)) @ w64)
    np.testing.assert_allclose(value, expected, rtol=1e-4)


# -- input gradients, Jacobians, R1/R2 ------------------------------------------------------

def test_input_gradient_penalty_of_a_quadratic_score():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(D, D))
    a = a + a.T
    w = rng.normal(size=D)
    x = rng.normal(size=(B, D))
    params = {"a": jnp.asarray(a, jnp.float32), "w": jnp.asarray(w, jnp.float32)}

    def score(p, inputs):  # s(x) = w.x + x^T A x / 2, gradient w + A x
        return inputs @ p["w"] + 0.5 * jnp.einsum("bi,ij,bj->b", inputs, p["a"], inputs)

    expected = np.mean(np.sum((w + x @ a) ** 2, axis=1))
    got = sm.input_gradient_penalty(score, params, jnp.asarray(x, jnp.float32), strength=0.3)
    np.testing.assert_allclose(got, 0.3 * expected, rtol=1e-5)


def test_input_gradient_penalty_default_sums_outputs_and_output_fn_selects():
    params, x = _mlp_params(), _inputs()
    w = np.asarray(params["w2"], np.float64)

    def linear(p, inputs):
        return inputs @ p["w1"][:, :K]

    w1 = np.asarray(params["w1"], np.float64)[:, :K]
    np.testing.assert_allclose(sm.input_gradient_penalty(linear, params, x),
                               np.sum(w1.sum(axis=1) ** 2), rtol=1e-5)
    got = sm.input_gradient_penalty(linear, params, x, output_fn=lambda out: out[:, 1])
    np.testing.assert_allclose(got, np.sum(w1[:, 1] ** 2), rtol=1e-5)
    del w


def _exact_frobenius(params, x):
    jac = jax.jacfwd(lambda z: _mlp(params, z[None])[0])
    return np.mean([np.sum(np.asarray(jac(row), np.float64) ** 2) for row in x])


def test_jacobian_penalty_exact_matches_jacfwd():
    params, x = _mlp_params(), _inputs()
    got = sm.jacobian_penalty(_mlp, params, x, None, strength=0.5, exact=True)
    np.testing.assert_allclose(got, 0.5 * _exact_frobenius(params, x), rtol=1e-5)


def test_jacobian_projections_are_unbiased():
    params, x = _mlp_params(), _inputs()
    exact = _exact_frobenius(params, x)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    samples = np.asarray(jax.jit(jax.vmap(
        lambda k: sm.jacobian_penalty(_mlp, params, x, k)))(keys), np.float64)
    stderr = samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(samples.mean() - exact) < 4 * stderr
    assert samples.std() > 0
    many = sm.jacobian_penalty(_mlp, params, x, jax.random.PRNGKey(1), num_projections=64)
    assert abs(float(many) - exact) < 4 * samples.std() / 8


def test_jacobian_projection_is_exact_for_one_output():
    params, x = _mlp_params(), _inputs()

    def scalar(p, inputs):
        return _mlp(p, inputs)[:, :1]

    exact = sm.jacobian_penalty(scalar, params, x, exact=True)
    np.testing.assert_allclose(sm.jacobian_penalty(scalar, params, x, jax.random.PRNGKey(5)),
                               exact, rtol=1e-6)


@pytest.mark.parametrize("fn, name", [(sm.r1_penalty, "real_inputs"),
                                      (sm.r2_penalty, "fake_inputs")])
def test_r1_r2_hand_computed(fn, name):
    rng = np.random.default_rng(6)
    w = rng.normal(size=(2, 3))
    c = rng.normal()
    x = rng.normal(size=(B, 2, 3))  # image-like samples

    def critic(p, inputs):  # D(x) = <w, x> + c ||x||^2 / 2, gradient w + c x
        return jnp.sum(inputs * p["w"], axis=(1, 2)) + 0.5 * p["c"] * jnp.sum(inputs**2, (1, 2))

    params = {"w": jnp.asarray(w, jnp.float32), "c": jnp.asarray(c, jnp.float32)}
    gamma = 0.05
    expected = gamma / 2 * np.mean(np.sum((w + c * x) ** 2, axis=(1, 2)))
    np.testing.assert_allclose(fn(critic, params, jnp.asarray(x, jnp.float32), strength=gamma),
                               expected, rtol=1e-5)
    with pytest.raises(TypeError, match=name):
        fn(critic, params, jnp.zeros((B, 2, 3), jnp.int32))


# -- Hessian trace ------------------------------------------------------------------------

def test_hessian_trace_penalty_expectation_for_a_quadratic():
    rng = np.random.default_rng(8)
    m = rng.normal(size=(6, 6))
    a = m @ m.T
    params = {"u": jnp.zeros(4), "v": jnp.zeros(2)}

    def loss(p):
        flat = jnp.concatenate([p["u"], p["v"]])
        return 0.5 * flat @ jnp.asarray(a, jnp.float32) @ flat

    keys = jax.random.split(jax.random.PRNGKey(0), 1000)
    samples = np.asarray(jax.jit(jax.vmap(
        lambda k: sm.hessian_trace_penalty(loss, params, k, strength=2.0)))(keys), np.float64)
    stderr = samples.std(ddof=1) / np.sqrt(len(samples))
    assert abs(samples.mean() - 2.0 * np.trace(a)) < 4 * stderr
    assert samples.std() > 0


def test_hessian_trace_penalty_gradient_in_params():
    """For L = sum c p^3 / 6 the Hessian is diag(c p): every Rademacher probe gives the trace
    sum(c p) exactly, whose gradient in p is c."""
    c = jnp.asarray([0.5, -1.0, 2.0, 3.0])

    def loss(p):
        return jnp.sum(c * p["w"] ** 3) / 6

    params = {"w": jnp.asarray([1.0, 2.0, -0.5, 0.3])}
    value, grad = jax.value_and_grad(
        lambda p: sm.hessian_trace_penalty(loss, p, jax.random.PRNGKey(1), strength=0.7,
                                           num_samples=3))(params)
    np.testing.assert_allclose(value, 0.7 * float(jnp.sum(c * params["w"])), rtol=1e-6)
    np.testing.assert_allclose(grad["w"], 0.7 * c, rtol=1e-6)


# -- mixup --------------------------------------------------------------------------------

def _recover(mixed_targets):
    """Per row ``i`` (targets one-hot of class i): the partner ``j`` and the weight ``lam``
    (None when the row was mixed with itself)."""
    rows = np.asarray(mixed_targets, np.float64)
    out = []
    for i, row in enumerate(rows):
        others = np.delete(np.arange(len(row)), i)
        j = others[np.argmax(row[others])]
        out.append((i, None) if row[j] == 0 else (j, row[i]))
    return out


@pytest.mark.parametrize("per_example", [False, True])
def test_mixup_is_a_convex_combination_with_a_permutation(per_example):
    n = 8
    x = np.random.default_rng(9).normal(size=(n, 3, 2))
    labels = np.arange(n)
    mixed_x, mixed_y = sm.mixup(jnp.asarray(x, jnp.float32), labels, jax.random.PRNGKey(4),
                                num_classes=n, per_example=per_example)
    assert mixed_x.shape == x.shape and mixed_y.shape == (n, n)
    np.testing.assert_allclose(np.sum(mixed_y, axis=1), 1.0, rtol=1e-6)
    recovered = _recover(mixed_y)
    partners = [j for j, _ in recovered]
    assert sorted(partners) == list(range(n))  # a permutation
    lams = [lam for _, lam in recovered if lam is not None]
    assert lams and all(0.0 <= lam <= 1.0 for lam in lams)
    if not per_example:
        np.testing.assert_allclose(lams, lams[0], rtol=1e-6)
    elif len(lams) > 1:
        assert len(set(lams)) > 1
    for i, (j, lam) in enumerate(recovered):
        want = x[i] if lam is None else lam * x[i] + (1 - lam) * x[j]
        np.testing.assert_allclose(mixed_x[i], want, rtol=1e-5, atol=1e-6)


def test_mixup_alpha_zero_returns_the_originals_and_small_alpha_nearly_so():
    x = jnp.asarray(np.random.default_rng(10).normal(size=(6, 3)), jnp.float32)
    y = jax.nn.one_hot(jnp.arange(6) % 3, 3)
    mixed_x, mixed_y = sm.mixup(x, y, jax.random.PRNGKey(0), alpha=0.0)
    np.testing.assert_array_equal(mixed_x, x)
    np.testing.assert_array_equal(mixed_y, y)
    for seed in range(5):  # lam -> 0 or 1: the batch, or its permutation
        mixed_x, _ = sm.mixup(x, y, jax.random.PRNGKey(seed), alpha=1e-3)
        rows = {tuple(np.round(np.asarray(r), 3)) for r in mixed_x}
        assert rows == {tuple(np.round(np.asarray(r), 3)) for r in x}


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_mixup_lambda_has_the_beta_moments(alpha):
    n = 8
    x = jnp.zeros((n, 1))

    def first_row(key):
        return sm.mixup(x, jnp.arange(n), key, alpha=alpha, num_classes=n)[1][0]

    rows = np.asarray(jax.jit(jax.vmap(first_row))(
        jax.random.split(jax.random.PRNGKey(1), 6000)), np.float64)
    lam = rows[rows[:, 1:].max(axis=1) > 0, 0]  # drop draws that paired row 0 with itself
    mean, var = 0.5, 1 / (4 * (2 * alpha + 1))
    assert abs(lam.mean() - mean) < 4 * np.sqrt(var / len(lam))
    # the variance of a sample variance of a Beta is below var^2 * 2 / n * 3 (kurtosis < 3)
    assert abs(lam.var() - var) < 4 * var * np.sqrt(6 / len(lam))


def test_mixup_jit_vmap_over_alpha_and_bfloat16():
    x = jnp.asarray(np.random.default_rng(12).normal(size=(6, 3)), jnp.bfloat16)
    labels = jnp.arange(6) % 3
    alphas = jnp.asarray([0.0, 0.2, 1.0])

    def call(a):
        return sm.mixup(x, labels, jax.random.PRNGKey(2), alpha=a, num_classes=3)

    swept = jax.jit(jax.vmap(call))(alphas)
    for i, a in enumerate(alphas):
        loop = call(a)
        np.testing.assert_allclose(swept[0][i], loop[0], rtol=1e-6)
        np.testing.assert_allclose(swept[1][i], loop[1], rtol=1e-6)
    assert swept[0].dtype == jnp.float32 and np.all(np.isfinite(swept[0]))
    grad = jax.grad(lambda z: jnp.sum(sm.mixup(z, labels, jax.random.PRNGKey(2),
                                               num_classes=3)[0] ** 2))(x)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_mixup_bad_inputs_are_named():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="num_classes"):
        sm.mixup(x, jnp.arange(4), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="targets"):
        sm.mixup(x, jnp.zeros((3, 2)), jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="inputs"):
        sm.mixup(jnp.zeros((4, 2), jnp.int32), jnp.zeros((4, 2)), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="alpha"):
        sm.mixup(x, jnp.zeros((4, 2)), jax.random.PRNGKey(0), alpha=jnp.ones(2))


# -- shared contract: jit, vmap over hyperparameters, gradients, extremes, bad inputs -----

KEY = jax.random.PRNGKey(0)


def _loss(p):
    return jnp.mean(_mlp(p, _inputs()) ** 2)


CALLS = {
    # xi = 0.1 here: at 1e-6 the float32 finite difference is rounding noise (see the module).
    "vat": lambda p, x, **h: sm.virtual_adversarial(_mlp, p, x, KEY, **{"xi": 0.1, **h}),
    "vat_hvp": lambda p, x, **h: sm.virtual_adversarial(_mlp, p, x, KEY,
                                                        finite_difference=False, **h),
    "input_gradient": lambda p, x, **h: sm.input_gradient_penalty(_mlp, p, x, **h),
    "jacobian": lambda p, x, **h: sm.jacobian_penalty(_mlp, p, x, KEY, num_projections=2, **h),
    "jacobian_exact": lambda p, x, **h: sm.jacobian_penalty(_mlp, p, x, exact=True, **h),
    "r1": lambda p, x, **h: sm.r1_penalty(_mlp, p, x, **h),
    "r2": lambda p, x, **h: sm.r2_penalty(_mlp, p, x, **h),
    "hessian_trace": lambda p, x, **h: sm.hessian_trace_penalty(
        lambda q: jnp.mean(_mlp(q, x) ** 2), p, KEY, **h),
}
HPARAMS = {"vat": {"strength": [1.0, 0.5, 2.0], "epsilon": [8.0, 1.0, 0.1],
                   "xi": [0.1, 0.05, 0.2]},
           "vat_hvp": {"strength": [1.0, 0.5, 2.0], "epsilon": [8.0, 1.0, 0.1]}}


@pytest.mark.parametrize("name", CALLS)
def test_jit_and_vmap_over_hyperparameters(name):
    params, x = _mlp_params(), _inputs()
    np.testing.assert_allclose(jax.jit(lambda p, z: CALLS[name](p, z))(params, x),
                               CALLS[name](params, x), rtol=1e-5)
    for hparam, values in HPARAMS.get(name, {"strength": [1.0, 0.5, 2.0]}).items():
        swept = jax.jit(jax.vmap(lambda v: CALLS[name](params, x, **{hparam: v})))(
            jnp.asarray(values))
        loop = [CALLS[name](params, x, **{hparam: v}) for v in values]
        np.testing.assert_allclose(swept, loop, rtol=1e-4, err_msg=hparam)
        assert len(set(np.asarray(swept).tolist())) == 3, hparam


@pytest.mark.parametrize("name", [n for n in CALLS if not n.startswith("vat")])
def test_gradients_match_finite_differences(name):
    with jax.enable_x64(True):
        params, x = _mlp_params(dtype=jnp.float64, scale=0.5), _inputs(dtype=jnp.float64)
        check_grads(lambda p: CALLS[name](p, x), (params,), order=1,
                                  modes=("rev",), atol=1e-5, rtol=1e-4)
        check_grads(lambda z: CALLS[name](params, z), (x,), order=1,
                                  modes=("rev",), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CALLS)
def test_extreme_logits_and_bfloat16(name):
    params, x = _mlp_params(), _inputs()
    huge = jax.tree.map(lambda p: 100.0 * p, params)  # logits of order 1e4
    value, grad = jax.jit(jax.value_and_grad(lambda p: CALLS[name](p, x)))(huge)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    params16, x16 = _mlp_params(dtype=jnp.bfloat16), _inputs(dtype=jnp.bfloat16)
    value, grad = jax.jit(jax.value_and_grad(lambda p: CALLS[name](p, x16)))(params16)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grad))


def test_bad_inputs_are_named():
    params, x = _mlp_params(), _inputs()
    with pytest.raises(TypeError, match="`inputs`"):
        sm.virtual_adversarial(_mlp, params, x.astype(jnp.int32), KEY)
    with pytest.raises(ValueError, match="`apply_fn`"):
        sm.virtual_adversarial(lambda p, z: _mlp(p, z)[:, 0], params, x, KEY)
    with pytest.raises(ValueError, match="`num_power_iterations`"):
        sm.virtual_adversarial(_mlp, params, x, KEY, num_power_iterations=-1)
    with pytest.raises(ValueError, match="`epsilon`"):
        sm.virtual_adversarial(_mlp, params, x, KEY, epsilon=jnp.ones(2))
    with pytest.raises(TypeError, match="`params`"):
        sm.input_gradient_penalty(_mlp, {**params, "b2": jnp.zeros(K, jnp.int32)}, x)
    with pytest.raises(ValueError, match="`output_fn`"):
        sm.input_gradient_penalty(_mlp, params, x, output_fn=lambda out: out)
    with pytest.raises(ValueError, match="`key`"):
        sm.jacobian_penalty(_mlp, params, x)
    with pytest.raises(ValueError, match="`num_projections`"):
        sm.jacobian_penalty(_mlp, params, x, KEY, num_projections=0)
    with pytest.raises(TypeError, match="`num_samples`"):
        sm.hessian_trace_penalty(_loss, params, KEY, num_samples=1.5)
