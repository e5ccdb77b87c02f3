"""MoDo, SDMGrad and CR-MOGM against torchjd 0.18 (on the zoo and over consecutive calls),
and the simplex projection they share."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import as_tree, flat, golden, matrices

from jaxreg.multiobjective import gramian, imtl_g, mgda, stochastic, upgrad
from jaxreg.multiobjective.weighted import imtl_g_weights

GOLDEN = golden("torchjd_new")
TRAJECTORY = GOLDEN["trajectories"]
ZOO = dict(matrices())


def _weights_over_steps(weighting, m=3, jacobians=None, dtype=jnp.float32):
    """The weights of consecutive calls on the golden trajectory's Gramians."""
    jacobians = TRAJECTORY["jacobians"] if jacobians is None else jacobians
    state = weighting.init(m, dtype)
    update = jax.jit(weighting.update)
    out = []
    for jac in jacobians:
        tree = jax.tree.map(lambda x: jnp.asarray(x, dtype), as_tree(np.asarray(jac)))
        w, state = update(gramian(tree), state, None)
        out.append(np.asarray(w))
    return np.stack(out), state


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_first_call_matches_torchjd_on_the_zoo(case):
    matrix = ZOO[case["name"]]
    m = len(matrix)
    # SDMGrad's 20 steps of size 10 amplify float32 rounding (exact in float64, below)
    for key, build, atol in (("modo_weights", stochastic.modo_weighting, 1e-5),
                             ("sdmgrad_weights", stochastic.sdmgrad_weighting, 1e-4)):
        got, _ = _weights_over_steps(build(m), m, [matrix])
        np.testing.assert_allclose(got[0], case[key], rtol=1e-4, atol=atol, err_msg=key)


def test_sdmgrad_matches_torchjd_over_consecutive_steps_in_float64():
    """SDMGrad's defaults (20 momentum steps of size 10 on the simplex) bounce between faces,
    so float32 rounding can send a later call elsewhere; in float64 it is torchjd's to 1e-9."""
    with jax.enable_x64(True):
        got, _ = _weights_over_steps(stochastic.sdmgrad_weighting(3), dtype=jnp.float64)
        assert got.dtype == np.float64
    np.testing.assert_allclose(got, TRAJECTORY["sdmgrad"], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, build", [
    ("modo", lambda: stochastic.modo_weighting(3)),
    ("modo_g0.5_r0", lambda: stochastic.modo_weighting(3, gamma=0.5, rho=0.0)),
    ("sdmgrad_pref", lambda: stochastic.sdmgrad_weighting(
        3, lr=2.0, momentum=0.0, n_iter=5, lambda_=1.0, pref=[0.5, 0.3, 0.2])),
    ("cr_mogm_imtlg", lambda: stochastic.cr_mogm_weighting(3, imtl_g())),
    ("cr_mogm_imtlg_init", lambda: stochastic.cr_mogm_weighting(
        3, imtl_g_weights, alpha=0.5, initial_weights=[1.0, 0.0, 0.0])),
], ids=lambda x: x if isinstance(x, str) else "")
def test_matches_torchjd_over_consecutive_steps(name, build):
    got, _ = _weights_over_steps(build())
    np.testing.assert_allclose(got, TRAJECTORY[name], rtol=1e-4, atol=1e-5,
                               err_msg=f"{name} ({GOLDEN['source']})")
    assert not np.allclose(got[-1], got[0])  # the state moves the weights


def test_cr_mogm_around_mgda_and_its_limits():
    # torchjd's MGDA and jaxreg's stop Frank-Wolfe at the same epsilon (1e-3)
    got, _ = _weights_over_steps(stochastic.cr_mogm_weighting(3))  # MGDA by default
    np.testing.assert_allclose(got, TRAJECTORY["cr_mogm_mgda"], atol=5e-3)
    raw, _ = _weights_over_steps(stochastic.cr_mogm_weighting(3, imtl_g(), alpha=0.0))
    np.testing.assert_allclose(raw, _weights_over_steps(stochastic.cr_mogm_weighting(
        3, imtl_g_weights, alpha=0.0))[0], rtol=1e-6)  # alpha = 0: the wrapped weighting
    first = raw[0]
    frozen, _ = _weights_over_steps(stochastic.cr_mogm_weighting(3, imtl_g(), alpha=1.0))
    np.testing.assert_allclose(frozen, np.broadcast_to(first, frozen.shape), rtol=1e-6)
    # a stateful wrapped weighting keeps its own state inside
    agg = stochastic.cr_mogm(upgrad(num_objectives=3), num_objectives=3)
    jac = as_tree(np.asarray(TRAJECTORY["jacobians"][0]))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    state = agg.init(params)
    for _ in range(2):
        update, state = jax.jit(agg.update)(jac, state, params)
    assert state.inner.inner.active.shape == (3, 3)
    np.testing.assert_allclose(flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0],
                               np.asarray(state.weights) @ flat(jac), rtol=1e-5, atol=1e-6)


def test_the_aggregators_give_j_transpose_w():
    matrix = ZOO["m9n11r9"]
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    for agg in (stochastic.modo(num_objectives=9), stochastic.sdmgrad(num_objectives=9),
                stochastic.cr_mogm(mgda(), num_objectives=9)):
        update, state = jax.jit(agg.update)(jac, agg.init(params), params)
        np.testing.assert_allclose(flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0],
                                   np.asarray(state.weights) @ flat(jac), rtol=1e-4, atol=1e-6)
        assert np.asarray(state.weights).sum() == pytest.approx(1.0, rel=1e-5)


def test_simplex_projection():
    rng = np.random.default_rng(0)
    project = jax.jit(stochastic.project_to_simplex)
    for m in (1, 2, 5, 9):
        for _ in range(5):
            y = rng.normal(size=m) * 3
            p = np.asarray(project(jnp.asarray(y, jnp.float32)))
            assert np.all(p >= 0) and p.sum() == pytest.approx(1.0, rel=1e-5)
            # optimality: y - p is constant on the support and no larger off it
            support = p > 0
            gap = y - p
            np.testing.assert_allclose(gap[support], gap[support][0], atol=1e-5)
            assert np.all(gap[~support] <= gap[support][0] + 1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="give `num_objectives`"):
        stochastic.modo(num_objectives=None)
    with pytest.raises(ValueError, match="`gamma` must be > 0"):
        stochastic.modo(num_objectives=2, gamma=0.0)
    with pytest.raises(ValueError, match="`rho` must be >= 0"):
        stochastic.modo(num_objectives=2, rho=-0.1)
    with pytest.raises(ValueError, match="`lr` must be > 0"):
        stochastic.sdmgrad(num_objectives=2, lr=-1.0)
    with pytest.raises(ValueError, match=r"`momentum` must be in \[0, 1\)"):
        stochastic.sdmgrad(num_objectives=2, momentum=1.0)
    with pytest.raises(ValueError, match="`lambda_` must be >= 0"):
        stochastic.sdmgrad(num_objectives=2, lambda_=-1.0)
    with pytest.raises(ValueError, match="`n_iter` must be a positive int"):
        stochastic.sdmgrad(num_objectives=2, n_iter=0)
    with pytest.raises(ValueError, match="`pref` must have one value per objective"):
        stochastic.sdmgrad(num_objectives=2, pref=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0, 1\]"):
        stochastic.cr_mogm(num_objectives=2, alpha=1.5)
    with pytest.raises(ValueError, match="`initial_weights` must have one value"):
        stochastic.cr_mogm(num_objectives=2, initial_weights=[1.0])
    with pytest.raises(TypeError, match="`weighting` must be a Weighting"):
        stochastic.cr_mogm("upgrad", num_objectives=2)
    with pytest.raises(ValueError, match="built for num_objectives=3"):
        _weights_over_steps(stochastic.modo_weighting(3), 3, [ZOO["m2n5r2"]])
