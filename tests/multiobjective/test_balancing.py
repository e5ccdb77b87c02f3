"""FairGrad and ExcessMTL against torchjd 0.18, and FairGrad's optimality condition."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import as_tree, flat, golden, matrices, run

from jaxreg.multiobjective import balancing, gramian, mean

GOLDEN = golden("torchjd_new")
ZOO = dict(matrices())
# alpha traced: one compilation per number of objectives
_FAIRGRAD = jax.jit(lambda gram, alpha: balancing.fairgrad_weights(gram, alpha=alpha))


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_fairgrad_matches_torchjd_where_a_root_exists(case):
    matrix = ZOO[case["name"]]
    jac = as_tree(matrix)
    for alpha in (0.5, 1.0, 2.0):
        ref = case[f"fairgrad_{alpha:g}"]
        weights = np.asarray(_FAIRGRAD(gramian(jac), alpha))
        out = weights @ flat(jac)
        if ref["residual"] < 1e-6:  # torchjd found the root
            scale = max(1.0, np.abs(ref["output"]).max())
            np.testing.assert_allclose(out, ref["output"], rtol=1e-4, atol=5e-5 * scale,
                                       err_msg=f"alpha={alpha}")
            np.testing.assert_allclose(weights, ref["weights"], rtol=5e-4,
                                       err_msg=f"alpha={alpha}")
        else:  # no root: a positive combination of the gradients vanishes; zero update here
            assert np.linalg.matrix_rank(matrix) < len(matrix)
            np.testing.assert_array_equal(out, 0.0)
            assert np.abs(ref["output"]).max() < 2e-2  # torchjd's stopping point


def test_fairgrad_solves_its_optimality_condition():
    rng = np.random.default_rng(0)
    for alpha in (0.3, 1.0, 4.0):
        for m in (2, 5):
            matrix = rng.normal(size=(m, 7)) * rng.uniform(0.1, 10.0, (m, 1))
            gram = matrix @ matrix.T
            w = np.asarray(_FAIRGRAD(jnp.asarray(gram, jnp.float32), alpha), np.float64)
            assert np.all(w > 0)
            np.testing.assert_allclose(gram @ w, w ** (-1.0 / alpha), rtol=2e-3)
            # covariant under scaling: G -> c G gives w -> c^(-alpha / (alpha + 1)) w
            w2 = np.asarray(_FAIRGRAD(jnp.asarray(9.0 * gram, jnp.float32), alpha))
            np.testing.assert_allclose(w2, 9.0 ** (-alpha / (alpha + 1)) * w, rtol=2e-4)


def test_fairgrad_aggregator_and_its_limits():
    matrix = ZOO["m3n20r3"]  # the aggregator gives J^T w and logs w
    out, state = run(balancing.fairgrad(num_objectives=3), matrix)
    ref = GOLDEN["cases"][[c["name"] for c in GOLDEN["cases"]].index("m3n20r3")]["fairgrad_2"]
    np.testing.assert_allclose(out, ref["output"], rtol=1e-4, atol=5e-5)
    np.testing.assert_allclose(state.weights, ref["weights"], rtol=5e-4)
    matrix = ZOO["m9n11r9"]
    out, _ = run(balancing.fairgrad(alpha=0.0, num_objectives=9), matrix)
    np.testing.assert_allclose(out, run(mean(), matrix)[0], rtol=1e-6)
    opposite = np.array([[1.0, 2.0, 0.5], [-2.0, -4.0, -1.0]])
    out, state = run(balancing.fairgrad(num_objectives=2), opposite)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(state.weights, 0.0)
    with pytest.raises(ValueError, match="`alpha` must be >= 0"):
        balancing.fairgrad(alpha=-1.0)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_excess_mtl_first_call_matches_torchjd(case):
    matrix = ZOO[case["name"]]
    out, state = run(balancing.excess_mtl(num_objectives=len(matrix)), matrix)
    np.testing.assert_allclose(out, case["excess_mtl"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.sum(state.weights), 1.0, rtol=1e-6)


@pytest.mark.parametrize("name, kwargs", [
    ("excess_mtl", {}),
    ("excess_mtl_warmup2", {"robust_step_size": 0.5, "n_warmup_steps": 2}),
])
def test_excess_mtl_matches_torchjd_over_consecutive_steps(name, kwargs):
    trajectory = GOLDEN["trajectories"]
    agg, state = balancing.excess_mtl(num_objectives=3, **kwargs), None
    update = jax.jit(agg.update)
    outputs = []
    for jac in trajectory["jacobians"]:
        tree = as_tree(np.asarray(jac))
        params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), tree)
        state = agg.init(params) if state is None else state
        out, state = update(tree, state, params)
        outputs.append(flat(jax.tree.map(lambda x: np.asarray(x)[None], out))[0])
    np.testing.assert_allclose(outputs, trajectory[name], rtol=1e-4, atol=1e-5,
                               err_msg=GOLDEN["source"])
    assert int(state.count) == len(outputs)
    if kwargs:  # the warm-up keeps the weights uniform, then they move
        np.testing.assert_allclose(outputs[0], np.mean(trajectory["jacobians"][0], axis=0),
                                   rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(state.weights), 1 / 3)


def test_excess_mtl_arguments():
    with pytest.raises(ValueError, match="give `num_objectives`"):
        balancing.excess_mtl(num_objectives=None)
    with pytest.raises(ValueError, match="`robust_step_size` must be > 0"):
        balancing.excess_mtl(num_objectives=2, robust_step_size=0.0)
    with pytest.raises(ValueError, match="`n_warmup_steps` must be a non-negative int"):
        balancing.excess_mtl(num_objectives=2, n_warmup_steps=-1)
    with pytest.raises(ValueError, match="built for num_objectives=2"):
        run(balancing.excess_mtl(num_objectives=2), ZOO["m3n20r3"])
