"""PCD against torchjd 0.18 (on the zoo and over consecutive calls), and its QP's KKT
conditions."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import as_tree, flat, golden, matrices, run

from jaxreg.multiobjective import gramian, priority

GOLDEN = golden("torchjd_new")
ZOO = dict(matrices())


@jax.jit
def _first_weights(gram, tau):  # tau traced: one compilation per number of objectives
    weighting = priority.pcd_weighting(gram.shape[0], tau=tau)
    return weighting.update(gram, weighting.init(gram.shape[0], gram.dtype))[0]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_torchjd_on_the_zoo(case):
    matrix = ZOO[case["name"]]
    jac = as_tree(matrix)
    for key, tau in (("pcd", 0.02), ("pcd_tau0.5", 0.5)):
        out = np.asarray(_first_weights(gramian(jac), tau)) @ flat(jac)
        scale = max(1.0, np.abs(matrix).max())
        np.testing.assert_allclose(out, case[key], rtol=1e-3, atol=1e-4 * scale,
                                   err_msg=f"{key} ({GOLDEN['source']})")


@pytest.mark.parametrize("name, kwargs", [("pcd", {}), ("pcd_beta0.5", {"tau": 0.3,
                                                                          "beta": 0.5})])
def test_matches_torchjd_over_consecutive_steps(name, kwargs):
    trajectory = GOLDEN["trajectories"]
    agg, state = priority.pcd(num_objectives=3, **kwargs), None
    for t, jac in enumerate(trajectory["jacobians"]):
        out, state = run(agg, np.asarray(jac), state)
        np.testing.assert_allclose(out, trajectory[name][t], rtol=1e-4, atol=1e-5,
                                   err_msg=f"step {t}")
    assert int(state.inner.count) == len(trajectory["jacobians"])


def test_qp_solution_satisfies_kkt():
    rng = np.random.default_rng(0)
    solve = jax.jit(priority.solve_pcd_qp)
    for m in (2, 3, 5, 8):
        for _ in range(5):
            matrix = rng.normal(size=(m, 10))
            taus = rng.uniform(0.0, 1.0, m - 1)
            gram = matrix @ matrix.T
            w = np.asarray(solve(jnp.asarray(gram, jnp.float32), jnp.asarray(taus, jnp.float32)),
                           np.float64)
            assert w[0] == 1.0 and np.all(w[1:] >= 0)
            d = w @ matrix
            slack = matrix[1:] @ d - taus * np.sum(matrix[1:] ** 2, axis=1)
            scale = np.abs(gram).max()
            assert np.all(slack >= -1e-4 * scale)  # primal feasibility
            assert np.all(np.abs(w[1:] * slack) <= 1e-3 * scale)  # complementary slackness


def test_special_cases():
    # a zero primary gradient: zero update
    matrix = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    out, _ = run(priority.pcd(num_objectives=2), matrix)
    np.testing.assert_array_equal(out, 0.0)
    # two anti-parallel secondaries (infeasible constraints): the primary gradient itself
    matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    out, _ = run(priority.pcd(tau=0.5, num_objectives=3), matrix)
    np.testing.assert_allclose(out, matrix[0], rtol=1e-6)
    # no conflict: the primary gradient, rescaled to its own norm (so unchanged)
    matrix = np.array([[1.0, 0.5, 0.0], [1.0, 0.0, 0.0]])
    out, _ = run(priority.pcd(tau=0.02, num_objectives=2), matrix)
    np.testing.assert_allclose(out, matrix[0], rtol=1e-6)
    # non-finite input: NaN weights, the moving average unchanged
    agg = priority.pcd(num_objectives=2)
    _, state = run(agg, np.eye(2))
    out, nan_state = run(agg, np.array([[np.nan, 0.0], [0.0, 1.0]]), state)
    assert np.all(np.isnan(out)) and np.all(np.isnan(nan_state.weights))
    np.testing.assert_array_equal(nan_state.inner.sq_norm_ema, state.inner.sq_norm_ema)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="give `num_objectives`"):
        priority.pcd(num_objectives=None)
    with pytest.raises(ValueError, match=r"`tau` must be in \[0, 1\]"):
        priority.pcd(num_objectives=3, tau=1.5)
    with pytest.raises(ValueError, match=r"`beta` must be in \[0, 1\)"):
        priority.pcd(num_objectives=3, beta=1.0)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        priority.pcd(num_objectives=3, eps=-1.0)
    with pytest.raises(ValueError, match="one value per secondary objective"):
        priority.pcd(num_objectives=3, tau=[0.1, 0.2, 0.3])
