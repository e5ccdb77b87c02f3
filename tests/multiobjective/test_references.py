"""UPGrad, DualProj, MGDA, CAGrad, ConFIG, PCGrad, M-ConFIG against torchjd and conflictfree."""


import jax.numpy as jnp
import numpy as np
import pytest
from zoo import J_BASE, golden, matrices, run

from jaxreg.multiobjective import conflict_free, dual_cone, min_norm, surgery

GOLDEN = golden("references")
ZOO = dict(matrices())


# torchjd tests/unit/aggregation/test_values.py, J_base = [[-4, 1, 1], [6, 1, 1]], atol 1e-4
@pytest.mark.parametrize("build, output, weights", [
    (lambda: dual_cone.upgrad(num_objectives=2), [0.2929, 1.9004, 1.9004], [1.1109, 0.7894]),
    (lambda: dual_cone.dualproj(num_objectives=2), [0.5563, 1.1109, 1.1109], [0.6109, 0.5]),
    (lambda: min_norm.mgda(num_objectives=2), [0.0, 1.0, 1.0], [0.6, 0.4]),
    (lambda: min_norm.cagrad(c=0.5, num_objectives=2), [0.1835, 1.2041, 1.2041],
     [0.7041, 0.5]),
    (lambda: conflict_free.config(), [0.1588, 2.0706, 2.0706], None),
    (lambda: surgery.pcgrad(num_objectives=2), [0.5848, 3.8012, 3.8012], [2.2222, 1.5789]),
], ids=["upgrad", "dualproj", "mgda", "cagrad", "config", "pcgrad"])
def test_torchjd_values_on_j_base(build, output, weights):
    out, state = run(build(), J_BASE)
    np.testing.assert_allclose(out, output, atol=1e-4)
    if weights is not None:
        np.testing.assert_allclose(state.weights, weights, atol=1e-4)


AGGREGATORS = {"upgrad": dual_cone.upgrad, "dualproj": dual_cone.dualproj,
               "mgda": min_norm.mgda, "cagrad": min_norm.cagrad,
               "config_torchjd": conflict_free.config, "config_conflictfree": conflict_free.config,
               "pcgrad": surgery.pcgrad}
# Tolerances: the references' own solvers (quadprog, Frank-Wolfe stopping at epsilon 1e-3,
# cvxpy) and conflictfree's float32.
ATOL = {"mgda": 5e-3, "cagrad": 2e-3}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_the_reference_packages_on_the_zoo(case):
    matrix = ZOO[case["name"]]
    scale = max(1.0, np.abs(matrix).max())
    for name, build in AGGREGATORS.items():
        if name not in case:
            continue
        out, _ = run(build(), matrix)
        np.testing.assert_allclose(out, case[name], atol=ATOL.get(name, 5e-4) * scale,
                                   rtol=1e-3, err_msg=f"{name} vs {GOLDEN['source']}")


def test_dual_cone_projection_satisfies_kkt():
    rng = np.random.default_rng(0)
    for name, matrix in matrices():
        gram = jnp.asarray(matrix @ matrix.T / np.trace(matrix @ matrix.T), jnp.float32)
        gram = gram + 1e-4 * jnp.eye(len(matrix))
        u = jnp.asarray(rng.uniform(0, 1, len(matrix)), jnp.float32)
        v = np.asarray(dual_cone.project_to_dual_cone(gram, u), np.float64)
        g = np.asarray(gram, np.float64)
        assert np.all(v >= np.asarray(u) - 1e-5), name  # primal feasibility
        assert np.all(g @ v >= -1e-5), name  # dual feasibility
        assert abs((v - np.asarray(u)) @ g @ v) < 1e-5, name  # complementary slackness


def test_pcgrad_two_objectives_equals_upgrad_without_normalisation():
    for name, matrix in matrices():
        if len(matrix) != 2:
            continue
    rng = np.random.default_rng(3)
    for _ in range(5):
        matrix = rng.standard_normal((2, 6))
        gram = jnp.asarray(matrix @ matrix.T, jnp.float32)
        up = dual_cone.upgrad_weights(gram, pref=(1.0, 1.0), norm_eps=0.0, reg_eps=0.0)
        pc = surgery.pcgrad_weights(gram, jnp.asarray([[0, 1], [1, 0]]))
        np.testing.assert_allclose(up, pc, rtol=1e-4, atol=1e-5)


def test_pcgrad_matches_algorithm_1_with_the_same_orders():
    rng = np.random.default_rng(1)
    matrix = ZOO["m9n11r9"]
    orders = np.stack([rng.permutation(9) for _ in range(9)])
    rows = []
    for i in range(9):
        g = matrix[i].copy()
        for j in orders[i]:
            if j != i and g @ matrix[j] < 0:
                g -= (g @ matrix[j]) / (matrix[j] @ matrix[j]) * matrix[j]
        rows.append(g)
    weights = surgery.pcgrad_weights(jnp.asarray(matrix @ matrix.T, jnp.float32), orders)
    np.testing.assert_allclose(np.asarray(weights) @ matrix, np.sum(rows, axis=0), rtol=1e-4,
                               atol=1e-4)


def test_mgda_weights_satisfy_kkt():
    for name, matrix in matrices():
        gram = matrix @ matrix.T
        w = np.asarray(min_norm.mgda_weights(jnp.asarray(gram, jnp.float32), epsilon=1e-6,
                                             max_iters=2000), np.float64)
        assert np.all(w >= -1e-7) and abs(w.sum() - 1) < 1e-5, name
        # (G w)_i >= w^T G w for every i (the min-norm point's optimality)
        assert np.all(gram @ w >= w @ gram @ w - 1e-3 * np.trace(gram)), name


def test_cagrad_weights_are_optimal_for_two_objectives():
    matrix = ZOO["m3n20r3"][:2]
    gram = matrix @ matrix.T / np.trace(matrix @ matrix.T)
    c, mean = 0.5, np.full(2, 0.5)
    sqrt_phi = c * np.sqrt(mean @ gram @ mean)
    grid = np.linspace(0, 1, 20001)
    values = [np.array([x, 1 - x]) @ gram @ mean
              + sqrt_phi * np.sqrt(np.array([x, 1 - x]) @ gram @ np.array([x, 1 - x]))
              for x in grid]
    w_star = np.array([grid[np.argmin(values)], 1 - grid[np.argmin(values)]])
    expected = mean + sqrt_phi / np.sqrt(w_star @ gram @ w_star) * w_star
    got = min_norm.cagrad_weights(jnp.asarray(gram, jnp.float32), c=c)
    np.testing.assert_allclose(got, expected, rtol=2e-3)
    with pytest.raises(ValueError, match="`rescale` must be"):
        min_norm.cagrad(rescale=3)


def test_config_projections_are_equal_and_positive():
    for name, matrix in matrices():
        if np.linalg.matrix_rank(matrix) < len(matrix):
            continue
        out, _ = run(conflict_free.config(), matrix)
        proj = matrix @ out / np.linalg.norm(matrix, axis=1)
        np.testing.assert_allclose(proj, proj[0], rtol=1e-3, err_msg=name)
        assert proj[0] > 0


def test_momentum_config_matches_conflictfree_step_by_step():
    agg, state = conflict_free.momentum_config(num_objectives=3), None
    for t, step in enumerate(GOLDEN["momentum_config_steps"]):
        out, state = run(agg, np.asarray(step["jacobian"]), state)
        np.testing.assert_allclose(out, step["output"], rtol=1e-4, atol=1e-5, err_msg=f"step {t}")


def test_graddrop_keeps_one_sign_per_element():
    jac = {"w": jnp.asarray([[1.0, -2.0, 3.0], [-1.0, -1.0, 1.0]])}
    purity = np.array([0.5, 0.0, 1.0])  # P per element: (1 + sum/sum|.|)/2
    low = surgery.graddrop_direction(jac, {"w": jnp.full(3, 0.25)})["w"]
    high = surgery.graddrop_direction(jac, {"w": jnp.full(3, 0.75)})["w"]
    # element 0: P=0.5 > 0.25 keeps positives (1), < 0.75 keeps negatives (-1)
    np.testing.assert_allclose(low, [1.0, -3.0, 4.0])
    np.testing.assert_allclose(high, [-1.0, -3.0, 4.0])
    leaky = surgery.graddrop_direction(jac, {"w": jnp.full(3, 0.25)}, leak=1.0)["w"]
    np.testing.assert_allclose(leaky, [0.0, -3.0, 4.0])  # leak 1: the plain sum
    assert purity.shape == (3,)
