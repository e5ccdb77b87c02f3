"""The weight compander (arXiv:2306.16993) against a NumPy float64 re-implementation of its
Eqs. 1-4, the properties the paper states (odd, increasing, bounded by a pi / 2, slope a / b
at 0, derivative largest near 0), finite differences, and a training step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numeric import central_difference

from jaxreg.regularizers import reparameterization as rp


def _psi(v, a, b):  # Eq. 1
    return a * np.arctan(v / b)


def _dpsi(v, a, b):  # Eq. 3
    return a / (b * (1.0 + v ** 2 / b ** 2))


def _params(key, dtype=jnp.float32):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"hidden": {"kernel": 0.15 * jax.random.normal(k1, (4, 6), dtype),
                       "bias": 0.1 * jax.random.normal(k2, (6,), dtype)},
            "out": {"kernel": 0.15 * jax.random.normal(k3, (6, 3), dtype),
                    "bias": 0.1 * jax.random.normal(k4, (3,), dtype)}}


def _apply(params, x):
    hidden = jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    return hidden @ params["out"]["kernel"] + params["out"]["bias"]


V = np.linspace(-5.0, 5.0, 41)
SHAPES = [(1.0, 1.0), (1.0, 0.6), (0.5, 1.0), (0.8, 0.5), (2.0, 3.0)]


@pytest.mark.parametrize("a,b", SHAPES)
def test_value_and_derivative_match_the_papers_equations(a, b):
    np.testing.assert_allclose(rp.compand(V, a=a, b=b), _psi(V, a, b), rtol=1e-6, atol=1e-7)
    grad = jax.vmap(jax.grad(lambda v: rp.compand(v, a=a, b=b)))(jnp.asarray(V, jnp.float32))
    np.testing.assert_allclose(grad, _dpsi(V, a, b), rtol=1e-5, atol=1e-7)


def test_negative_b_still_follows_equation_1():
    np.testing.assert_allclose(rp.compand(V, a=0.7, b=-0.8), _psi(V, 0.7, -0.8), rtol=1e-6,
                               atol=1e-7)


def test_defaults_are_plain_arctan_and_learned_init_is_half_one():
    np.testing.assert_allclose(rp.compand(V), np.arctan(V), rtol=1e-6, atol=1e-7)
    shape = rp.init_shape_params(_params(jax.random.PRNGKey(0)))
    assert all(float(x) == 0.5 for x in jax.tree.leaves(shape["a"]))
    assert all(float(x) == 1.0 for x in jax.tree.leaves(shape["b"]))


@pytest.mark.parametrize("a,b", SHAPES)
def test_properties_stated_in_the_paper(a, b):
    half = jnp.linspace(0.0, 50.0, 1001)
    v = jnp.concatenate([-half[:0:-1], half])  # exactly symmetric around 0
    w = np.asarray(rp.compand(v, a=a, b=b), np.float64)
    np.testing.assert_allclose(w, -w[::-1], atol=1e-6)  # odd (rotational symmetry)
    assert np.all(np.diff(w) > 0)  # strictly increasing
    assert np.all(np.abs(w) < a * np.pi / 2)  # bounded: |w| < a pi / 2
    big = float(rp.compand(1e8, a=a, b=b))
    assert big == pytest.approx(a * np.pi / 2, rel=1e-6)  # saturates at a pi / 2
    assert float(rp.compand(0.0, a=a, b=b)) == 0.0
    tiny = 1e-4
    assert float(rp.compand(tiny, a=a, b=b)) == pytest.approx(a / b * tiny, rel=1e-6)
    slope = jax.vmap(jax.grad(lambda x: rp.compand(x, a=a, b=b)))(jnp.abs(v[1000:]))
    assert np.all(np.diff(np.asarray(slope)) < 0)  # derivative decreases in |v|
    assert float(slope[0]) == pytest.approx(a / b, rel=1e-6)  # and is largest at 0


def test_inverse_is_equation_4_and_round_trips():
    a, b = 0.6, 0.7
    w = np.linspace(-0.9, 0.9, 19)  # inside a pi / 2 = 0.94
    v = rp.compand_inverse(w, a=a, b=b)
    np.testing.assert_allclose(v, b * np.tan(w / a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rp.compand(v, a=a, b=b), w, rtol=1e-5, atol=1e-6)
    # Just past the bound: float32(a pi / 2) itself rounds to either side of it (jax >= 0.11
    # divides exactly and finds it inside).
    outside = rp.compand_inverse(np.array([a * np.pi / 2 * (1 + 1e-6), -1.0, 2.0]), a=a, b=b)
    assert np.all(np.isnan(outside))


def test_gradients_in_v_a_and_b_match_central_differences():
    v = np.array([-2.0, -0.3, 0.0, 0.1, 1.7])
    a, b = 0.8, 0.6
    with jax.enable_x64(True):
        for name, x0 in (("v", v), ("a", np.array(a)), ("b", np.array(b))):
            def f_np(x, name=name):
                args = {"v": v, "a": a, "b": b, name: x}
                return float(np.sum(np.sin(3 * args["v"]) * _psi(args["v"], args["a"],
                                                                  args["b"])))

            def f_jax(x, name=name):
                args = {"v": v, "a": a, "b": b, name: x}
                return jnp.sum(jnp.sin(3 * args["v"])
                               * rp.compand(args["v"], a=args["a"], b=args["b"]))

            grad = jax.jit(jax.grad(f_jax))(jnp.asarray(x0))
            np.testing.assert_allclose(grad, central_difference(f_np, x0), rtol=1e-6,
                                       atol=1e-8, err_msg=name)
            check_grads(jax.jit(f_jax), (jnp.asarray(x0),), order=2, modes=("rev",))


def test_gradients_are_finite_at_zero_and_at_extremes():
    def f(v, a, b):
        return jnp.sum(rp.compand(v, a=a, b=b))

    v = jnp.array([0.0, -0.0, 1e-30, 1e30, -1e30, 3e38])
    for b in (1.0, 1e-3):
        grads = jax.grad(f, argnums=(0, 1, 2))(v, 0.7, b)
        assert all(np.all(np.isfinite(g)) for g in grads), b
        assert np.all(np.isfinite(rp.compand(v, a=0.7, b=b)))
    assert float(jax.grad(f)(jnp.zeros(()), 0.7, 0.5)) == pytest.approx(1.4)


def test_weight_compander_defaults_to_kernels_and_leaves_biases_alone():
    params = _params(jax.random.PRNGKey(1))
    out = rp.weight_compander(params, a=0.7, b=0.8)
    for layer in ("hidden", "out"):
        np.testing.assert_array_equal(out[layer]["bias"], params[layer]["bias"])
        np.testing.assert_allclose(out[layer]["kernel"],
                                   _psi(np.asarray(params[layer]["kernel"], np.float64),
                                        0.7, 0.8), rtol=1e-6, atol=1e-7)
    only_hidden = {"hidden": {"kernel": True, "bias": False},
                   "out": {"kernel": False, "bias": False}}
    for mask in (only_hidden, lambda p: only_hidden):
        out = rp.weight_compander(params, mask=mask)
        np.testing.assert_array_equal(out["out"]["kernel"], params["out"]["kernel"])
        np.testing.assert_allclose(out["hidden"]["kernel"],
                                   np.arctan(np.asarray(params["hidden"]["kernel"])),
                                   rtol=1e-6)


def test_per_layer_shapes_are_used_layer_by_layer():
    params = _params(jax.random.PRNGKey(2))
    shape = rp.init_shape_params(params)
    shape["a"]["out"]["kernel"] = jnp.asarray(1.3)
    shape["b"]["hidden"]["kernel"] = jnp.asarray(0.55)
    out = rp.weight_compander(params, **shape)
    np.testing.assert_allclose(out["hidden"]["kernel"],
                               _psi(np.asarray(params["hidden"]["kernel"]), 0.5, 0.55),
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["out"]["kernel"],
                               _psi(np.asarray(params["out"]["kernel"]), 1.3, 1.0),
                               rtol=1e-6, atol=1e-7)
    per_column = dict(shape, a={**shape["a"], "out": {"kernel": jnp.array([0.5, 1.0, 2.0]),
                                                      "bias": 0.5}})
    out = rp.weight_compander(params, **per_column)
    np.testing.assert_allclose(out["out"]["kernel"],
                               _psi(np.asarray(params["out"]["kernel"]),
                                    np.array([0.5, 1.0, 2.0]), 1.0), rtol=1e-6, atol=1e-7)


def test_init_raw_params_reproduces_the_initialization():
    params = _params(jax.random.PRNGKey(3))
    for shape in ({"a": 1.0, "b": 0.6}, rp.init_shape_params(params)):
        raw = rp.init_raw_params(params, **shape)
        np.testing.assert_array_equal(raw["out"]["bias"], params["out"]["bias"])
        back = rp.weight_compander(raw, **shape)
        for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_jit_and_vmap_over_each_shape_parameter():
    params = _params(jax.random.PRNGKey(4))
    eager = rp.weight_compander(params, a=0.7, b=0.9)
    jitted = jax.jit(lambda p, a, b: rp.weight_compander(p, a=a, b=b))(params, 0.7, 0.9)
    for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    values = jnp.array([0.5, 0.8, 1.0])
    for name in ("a", "b"):
        swept = jax.jit(jax.vmap(lambda s, name=name: rp.weight_compander(params,
                                                                          **{name: s})))(values)
        for i, s in enumerate(values):
            one = rp.weight_compander(params, **{name: float(s)})
            for got, want in zip(jax.tree.leaves(swept), jax.tree.leaves(one)):
                np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-7)
        kernels = np.asarray(swept["hidden"]["kernel"])
        assert not np.allclose(kernels[0], kernels[1]), name


def test_bfloat16_is_computed_in_float32():
    v = jnp.linspace(-3, 3, 13, dtype=jnp.bfloat16)
    out = rp.compand(v, a=0.7, b=0.6)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, _psi(np.asarray(v, np.float64), 0.7, 0.6), rtol=1e-6,
                               atol=1e-7)
    params = _params(jax.random.PRNGKey(5), jnp.bfloat16)
    shape = rp.init_shape_params(params)
    tree = rp.weight_compander(params, **shape)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(tree))
    x = jnp.ones((2, 4), jnp.bfloat16)

    def loss(raw, shape):
        return jnp.sum(_apply(rp.weight_compander(raw, **shape), x).astype(jnp.float32) ** 2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, shape)
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grads))


def test_malformed_inputs_name_the_argument():
    params = _params(jax.random.PRNGKey(6))
    with pytest.raises(ValueError, match="`mask`"):
        rp.weight_compander(params, mask={"hidden": {"kernel": True}})
    with pytest.raises(ValueError, match="`a`"):
        rp.weight_compander(params, a={"hidden": {"kernel": 1.0}})
    with pytest.raises(ValueError, match="`b`"):
        rp.weight_compander(params, b=jax.tree.map(lambda p: jnp.ones((7,)), params))
    bad = {**params, "hidden": {**params["hidden"],
                                "kernel": params["hidden"]["kernel"].astype(jnp.int32)}}
    with pytest.raises(TypeError, match="`params`"):
        rp.weight_compander(bad)
    with pytest.raises(TypeError, match="`v`"):
        rp.compand(jnp.arange(3))
    with pytest.raises(TypeError, match="`a`"):
        rp.compand(1.0, a="wide")


def test_a_training_step_reaches_raw_weights_and_learned_shapes():
    key = jax.random.PRNGKey(7)
    params = _params(key)
    x = jax.random.normal(jax.random.fold_in(key, 1), (16, 4))
    y = jax.random.randint(jax.random.fold_in(key, 2), (16,), 0, 3)
    shape = rp.init_shape_params(params)
    trainable = {"raw": rp.init_raw_params(params, **shape), "shape": shape}

    def nll(weights):
        logits = _apply(weights, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def loss_fn(t):
        return nll(rp.weight_compander(t["raw"], **t["shape"]))

    loss0, grads = jax.jit(jax.value_and_grad(loss_fn))(trainable)
    for layer in ("hidden", "out"):
        for leaf in ("kernel", "bias"):
            assert np.any(np.asarray(grads["raw"][layer][leaf]) != 0), (layer, leaf)
        assert float(grads["shape"]["a"][layer]["kernel"]) != 0.0
        assert float(grads["shape"]["b"][layer]["kernel"]) != 0.0
        assert float(grads["shape"]["a"][layer]["bias"]) == 0.0  # biases are not companded
    # Chain rule (Eq. 2): dL/dv = dL/dw * dPsi/dv, with dL/dw the plain model's gradient.
    plain = jax.grad(nll)(params)  # the initial effective weights are `params` (Eq. 4)
    raw_k = np.asarray(trainable["raw"]["out"]["kernel"], np.float64)
    np.testing.assert_allclose(grads["raw"]["out"]["kernel"],
                               np.asarray(plain["out"]["kernel"]) * _dpsi(raw_k, 0.5, 1.0),
                               rtol=1e-4, atol=1e-7)
    step = jax.tree.map(lambda p, g: p - 0.5 * g, trainable, grads)
    assert float(loss_fn(step)) < float(loss0)
    # However large the step, the effective weights stay inside (-a pi / 2, a pi / 2).
    huge = jax.tree.map(lambda p, g: p - 1e4 * g, trainable["raw"], grads["raw"])
    for layer in ("hidden", "out"):
        w = rp.weight_compander(huge, **shape)[layer]["kernel"]
        assert float(jnp.max(jnp.abs(w))) <= 0.5 * np.pi / 2
