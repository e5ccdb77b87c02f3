
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import J_BASE, golden, matrices, run

from jaxreg.multiobjective import bargaining

GOLDEN = golden("bargaining")
CASES = {"j_base": J_BASE, **dict(matrices())}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_torchjd_nash_mtl(case):
    matrix = CASES[case["name"]]
    out, _ = run(bargaining.nash_mtl(num_objectives=len(matrix)), matrix)
    # torchjd solves with cvxpy/ECOS to its own tolerance (stop at ||G a - 1/a|| < 1e-3)
    np.testing.assert_allclose(out, case["output"], atol=2e-3, err_msg=GOLDEN["source"])


def test_solution_is_the_bargaining_fixed_point():
    rng = np.random.default_rng(0)
    for m in (2, 3, 5):
        a = rng.standard_normal((m, 8))
        gram = jnp.asarray(a @ a.T / np.linalg.norm(a @ a.T), jnp.float32)
        power = jnp.asarray(rng.uniform(0.5, 2.0, m), jnp.float32)
        alpha = bargaining.solve_bargaining(gram, power, jnp.ones(m))
        assert np.all(np.asarray(alpha) > 0)
        np.testing.assert_allclose(gram @ alpha, power / alpha, rtol=1e-4, atol=1e-5)


def test_warm_start_and_max_norm():
    agg = bargaining.nash_mtl(num_objectives=2)
    out, state = run(agg, J_BASE)
    assert np.linalg.norm(out) <= 1.0 + 1e-5  # max_norm
    again, state2 = run(agg, J_BASE, state)  # warm start from the solution: unchanged
    np.testing.assert_allclose(again, out, rtol=1e-5)
    np.testing.assert_allclose(state2.inner, state.inner, rtol=1e-5)
    big, _ = run(bargaining.nash_mtl(num_objectives=2, max_norm=100.0), 0.01 * J_BASE)
    gram = 1e-4 * J_BASE @ J_BASE.T
    alpha = np.linalg.lstsq(0.01 * J_BASE.T, big, rcond=None)[0]
    np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-3)  # no clipping needed


def test_auxinash_preference_shifts_weight_to_the_main_task():
    matrix = dict(matrices())["m3n20r3"][:2]
    _, even = run(bargaining.auxinash(preference=(1.0, 1.0), num_objectives=2), matrix)
    _, main = run(bargaining.auxinash(preference=(1.0, 0.25), num_objectives=2), matrix)
    nash, _ = run(bargaining.nash_mtl(num_objectives=2), matrix)
    out_even, _ = run(bargaining.auxinash(preference=(1.0, 1.0), num_objectives=2), matrix)
    np.testing.assert_allclose(out_even, nash, rtol=1e-5, atol=1e-6)  # equal powers = Nash
    ratio = lambda w: float(w[0] / w[1])
    assert ratio(main.weights) > ratio(even.weights)
    with pytest.raises(ValueError, match="one value per objective"):
        run(bargaining.auxinash(preference=(1.0, 1.0, 1.0), num_objectives=2), matrix)


def test_num_objectives_is_required():
    with pytest.raises(ValueError, match="give `num_objectives`"):
        bargaining.nash_mtl()
