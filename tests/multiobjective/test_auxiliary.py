import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import as_tree, flat, matrices, zero_matrices

from jaxreg.multiobjective import auxiliary, combine

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "auxiliary.json").read_text())


def _numpy_bloop(jacobians, *, lbda=0.1, ema=0.1, init="zeros", use_ratio_only=False,
                 rescale=False, dynamic_barrier=False):
    """The algorithm in float64, written from the paper and apple/ml-bloop's optim.py."""
    m, outs = None, []
    for jac in jacobians:
        main, aux = jac[0], jac[1:].sum(axis=0)
        m = (main if init == "grad" else np.zeros_like(main)) if m is None else m
        m = m + ema * (main - m)
        ratio = m @ aux / (m @ m + 1e-7)
        if dynamic_barrier:
            ratio = min(ratio, 1 / lbda)
        scale = 1 / (1 + lbda) if rescale else 1.0
        if use_ratio_only:
            outs.append(scale * ((1 - lbda * ratio) * main + lbda * aux))
        else:
            outs.append(scale * (main + lbda * (aux - ratio * m)))
    return outs, m


def _run(agg, jacobians, split=None):
    trees = [as_tree(jac, split) for jac in jacobians]
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), trees[0])
    state, outs = agg.init(params), []
    for tree in trees:
        out, state = jax.jit(agg.update)(tree, state, params)
        outs.append(flat(jax.tree.map(lambda x: np.asarray(x)[None], out))[0])
    return outs, state


def _ema_vector(state):
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], state.main_ema))[0]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_the_official_code(case):
    agg = auxiliary.bloop(lbda=case["lbda"], ema=case["ema"], init=case["init"],
                          use_ratio_only=case["use_ratio_only"], rescale=case["rescale"],
                          dynamic_barrier=case["fn"] == "dynamic_barrier_direction")
    outs, state = _run(agg, [np.asarray(j) for j in case["jac"]], split=3)
    if case["rescale"]:
        # the official code scales by 1 + lbda (`1.0 / 1.0 + lbda`), the paper by 1 / (1 + lbda)
        outs = [out * (1 + case["lbda"]) ** 2 for out in outs]
    np.testing.assert_allclose(np.stack(outs), case["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_ema_vector(state), case["main_ema"][-1], rtol=1e-5, atol=1e-5)


FLAGS = [dict(), dict(lbda=0.3, ema=0.2), dict(lbda=0.5, ema=0.3, dynamic_barrier=True),
         dict(lbda=0.3, ema=0.2, use_ratio_only=True), dict(lbda=0.3, rescale=True),
         dict(lbda=0.2, ema=0.5, init="grad")]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("m", [2, 3])
def test_matches_numpy_over_several_steps(flags, m):
    rng = np.random.default_rng(m)
    # auxiliaries correlated with the main gradient, so the dynamic barrier's clip is active
    jacobians = [rng.standard_normal((m, 7)) + np.outer([1.0] + [2.0] * (m - 1), base)
                 for base in rng.standard_normal((5, 7))]
    outs, state = _run(auxiliary.bloop(num_objectives=m, **flags), jacobians)
    expected, ema = _numpy_bloop(jacobians, **flags)
    np.testing.assert_allclose(np.stack(outs), np.stack(expected), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_ema_vector(state), ema, rtol=1e-5, atol=1e-6)


def test_dynamic_barrier_clips_the_ratio():
    main = np.array([1.0, 0.0, 0.0])
    jac = np.stack([main, [10.0, 1.0, 0.0]])  # ratio 10 > 1 / lbda = 2
    (clipped,), _ = _run(auxiliary.bloop(lbda=0.5, ema=1.0, dynamic_barrier=True), [jac], 1)
    (projected,), _ = _run(auxiliary.bloop(lbda=0.5, ema=1.0), [jac], 1)
    np.testing.assert_allclose(clipped, main + 0.5 * (jac[1] - 2.0 * main), atol=1e-5)
    np.testing.assert_allclose(projected, main + 0.5 * np.array([0.0, 1.0, 0.0]), atol=1e-5)


@pytest.mark.parametrize("init", ["zeros", "random"])
def test_ema_one_keeps_the_current_main_gradient_and_projects_it_out(init):
    rng = np.random.default_rng(1)
    jacobians = [rng.standard_normal((2, 6)) for _ in range(3)]
    agg = auxiliary.bloop(lbda=1.0, ema=1.0, init=init)
    trees = [as_tree(j) for j in jacobians]
    state = agg.init(jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), trees[0]))
    for jac, tree in zip(jacobians, trees):
        out, state = agg.update(tree, state)
        np.testing.assert_allclose(_ema_vector(state), jac[0], rtol=1e-6)
        projected = flat(jax.tree.map(lambda x: np.asarray(x)[None], out))[0] - jac[0]
        np.testing.assert_allclose(projected @ jac[0], 0.0, atol=1e-5 * jac[0] @ jac[0])
        assert np.linalg.norm(projected) > 0.1  # the auxiliary gradient is not just dropped


def test_random_init_draws_one_normal_per_leaf_from_the_seed():
    params = {"b": jnp.zeros(2), "w": jnp.zeros((3, 2))}
    state = auxiliary.bloop(init="random", seed=3).init(params)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)  # leaves in order: b, w
    np.testing.assert_array_equal(state.main_ema["b"], jax.random.normal(keys[0], (2,)))
    np.testing.assert_array_equal(state.main_ema["w"], jax.random.normal(keys[1], (3, 2)))
    other = auxiliary.bloop(init="random", seed=4).init(params)
    assert not np.allclose(other.main_ema["w"], state.main_ema["w"])


def test_weights_combine_the_gradients_only_with_use_ratio_only():
    rng = np.random.default_rng(2)
    jacobians = [rng.standard_normal((3, 5)) for _ in range(3)]
    outs, state = _run(auxiliary.bloop(lbda=0.4, ema=0.3, use_ratio_only=True, rescale=True,
                                       num_objectives=3), jacobians)
    combined = combine(state.weights, as_tree(jacobians[-1]))
    np.testing.assert_allclose(flat(jax.tree.map(lambda x: np.asarray(x)[None], combined))[0],
                               outs[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.weights[1:], 0.4 / 1.4, rtol=1e-6)
    _, state = _run(auxiliary.bloop(num_objectives=3), jacobians)
    assert state.weights.shape == (3,) and np.all(np.isnan(state.weights))


def test_scan_and_vmap_over_hyperparameters():
    rng = np.random.default_rng(3)
    jacobians = np.stack([rng.standard_normal((2, 4)) for _ in range(4)]).astype(np.float32)
    lbdas, emas = jnp.array([0.1, 0.5]), jnp.array([0.2, 0.9])

    def trajectory(lbda, ema):
        agg = auxiliary.bloop(lbda=lbda, ema=ema, init="grad")
        state = agg.init({"w": jnp.zeros(4)})
        step = lambda s, j: agg.update({"w": j}, s)[::-1]
        return jax.lax.scan(step, state, jnp.asarray(jacobians))[1]["w"]

    swept = jax.jit(jax.vmap(trajectory))(lbdas, emas)
    for i in range(2):
        expected, _ = _numpy_bloop(jacobians.astype(np.float64), lbda=float(lbdas[i]),
                                   ema=float(emas[i]), init="grad")
        np.testing.assert_allclose(swept[i], np.stack(expected), rtol=1e-5, atol=1e-5)


def test_chains_with_sgd_under_jit():
    jac = matrices()[-1][1]  # 2 x 6
    tree = as_tree(jac)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), tree)
    chain = optax.chain(auxiliary.bloop(lbda=0.3, ema=0.5), optax.sgd(0.1))
    state = chain.init(params)
    expected, _ = _numpy_bloop([jac] * 3, lbda=0.3, ema=0.5)
    for want in expected:
        update, state = jax.jit(chain.update)(tree, state, params)
        got = flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0]
        np.testing.assert_allclose(got, -0.1 * want, rtol=1e-5, atol=1e-6)


def test_finite_on_zero_and_scaled_jacobians():
    base = matrices()[-1][1]
    cases = [m for _, m in zero_matrices() if len(m) >= 2]
    cases += [base * s for s in (0.0, 1e-15, 1e-10, 1e3, 1e5, 1e10, 1e15)]
    for jac in cases:
        for flags in FLAGS:
            outs, state = _run(auxiliary.bloop(num_objectives=len(jac), **flags), [jac, jac])
            assert np.all(np.isfinite(outs)), (flags, np.abs(jac).max())
            assert np.all(np.isfinite(_ema_vector(state)))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="`num_objectives` must be at least 2"):
        auxiliary.bloop(num_objectives=1)
    with pytest.raises(ValueError, match="`init` must be one of"):
        auxiliary.bloop(init="gradients")
    agg = auxiliary.bloop()
    state = agg.init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="built for num_objectives=2 but received 3"):
        agg.update({"w": jnp.ones((3, 3))}, state)
    with pytest.raises(ValueError, match="at least one auxiliary one, got 1"):
        auxiliary.bloop(num_objectives=None).update({"w": jnp.ones((1, 3))}, state)
    with pytest.raises(ValueError, match="same leading objective axis"):
        agg.update({"w": jnp.ones((2, 3)), "b": jnp.ones((3, 1))},
                   agg.init({"w": jnp.zeros(3), "b": jnp.zeros(1)}))
