"""The dual-cone QP ``argmin_{v >= u} v^T G v`` of UPGrad and DualProj: the primal-dual
active-set solver against scipy's NNLS (an independent reference), its warm start, its
Lawson-Hanson fallback, and the iterations it reports."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.optimize import nnls

from jaxreg.multiobjective import dual_cone


def _per_example_gramian(m, seed):
    """The Gramian of per-example gradients of softmax regression: strongly conflicting (the
    examples of different classes pull the weights apart), as in IWRM."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (m, 20))
    labels = rng.integers(0, 5, m)
    logits = x @ rng.normal(0, 0.3, (20, 5))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    jac = np.einsum("bi,bk->bik", x, p - np.eye(5)[labels]).reshape(m, -1)
    gram = jac @ jac.T
    return gram / np.trace(gram) + 1e-4 * np.eye(m)


def _nnls_reference(gram, u):
    """``v = u + s``, ``s = argmin_{s >= 0} ||L^T (s + u)||`` with ``G = L L^T``: scipy's
    NNLS in float64."""
    chol = np.linalg.cholesky(gram)
    s, _ = nnls(chol.T, -chol.T @ u, maxiter=100 * len(u))
    return u + s


@pytest.mark.parametrize("m", [2, 7, 32])
def test_matches_nnls_cold_warm_and_through_the_fallback(m):
    gram = _per_example_gramian(m, seed=m)
    lower = np.diag(np.random.default_rng(1).uniform(0.1, 1.0, m))
    expected = np.stack([_nnls_reference(gram, u) for u in lower])
    g32, l32 = jnp.asarray(gram, jnp.float32), jnp.asarray(lower, jnp.float32)
    v, active, cold = jax.jit(dual_cone.solve_dual_cone)(g32, l32)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(v, expected, atol=2e-4 * scale)
    # the active set is the reference's: v_i = u_i exactly there, above elsewhere
    np.testing.assert_array_equal(np.asarray(active), expected <= lower + 1e-6 * scale)
    warm_v, _, warm = jax.jit(dual_cone.solve_dual_cone)(g32, l32, active)
    np.testing.assert_allclose(warm_v, v, atol=1e-6 * scale)
    assert int(warm) == 1 and int(cold) >= 1
    # one primal-dual iteration cannot finish a conflicting problem: Lawson-Hanson does
    fallback_v, _, total = dual_cone.solve_dual_cone(g32, l32, max_iters=1)
    np.testing.assert_allclose(fallback_v, expected, atol=2e-4 * scale)
    if m > 2:
        assert int(total) > 1


def test_exact_in_float64_across_scales():
    with jax.enable_x64(True):
        for scale in (1e-15, 1e-5, 1.0, 1e5, 1e15):
            gram = _per_example_gramian(12, seed=3) * scale
            u = np.full(12, 1 / 12)
            expected = _nnls_reference(gram, u)
            v = dual_cone.project_to_dual_cone(jnp.asarray(gram), jnp.asarray(u))
            assert v.dtype == jnp.float64
            np.testing.assert_allclose(v, expected, rtol=1e-9, atol=1e-12 * np.abs(u).max())


def test_the_aggregator_warm_starts_and_reports_its_iterations():
    rng = np.random.default_rng(0)
    jac = {"w": jnp.asarray(rng.normal(size=(6, 9)), jnp.float32)}
    agg = dual_cone.upgrad(num_objectives=6)
    state = agg.init({"w": jnp.zeros(9)})
    assert state.inner.active.shape == (6, 6)
    update = jax.jit(agg.update)
    first, state = update(jac, state)
    again, state2 = update(jac, state)  # same Jacobian: the warm start is the solution
    np.testing.assert_allclose(again["w"], first["w"], rtol=1e-5, atol=1e-6)
    assert int(state2.inner.iterations) == 1
    unsized = dual_cone.upgrad()  # no num_objectives: no warm start, same update
    out, _ = unsized.update(jac, unsized.init({"w": jnp.zeros(9)}))
    np.testing.assert_allclose(out["w"], first["w"], rtol=1e-5, atol=1e-6)
    chained = optax.chain(dual_cone.dualproj(num_objectives=6), optax.sgd(1.0))
    out, _ = chained.update(jac, chained.init({"w": jnp.zeros(9)}))
    assert out["w"].shape == (9,)


@pytest.mark.parametrize("m", [1, 6, 9])
def test_each_iteration_solves_on_the_smaller_set(m):
    """``_solve_on`` works on the active set through ``G^-1`` or on the free set through G,
    whichever is smaller: both give the masked system's solution (``v_A = u_A``,
    ``(G v)_F = 0``), here for every active set of each size."""
    with jax.enable_x64(True):
        gram = _per_example_gramian(m, seed=m)
        rng = np.random.default_rng(m)
        lower = rng.uniform(-1.0, 1.0, (m + 1, m))
        active = np.stack([rng.permutation(m) < size for size in range(m + 1)])
        v = dual_cone._solve_on(jnp.asarray(gram), dual_cone._inverse(jnp.asarray(gram)),
                                jnp.asarray(lower), jnp.asarray(active), max(m // 2, 1))
        for row, u, a in zip(np.asarray(v), lower, active):
            np.testing.assert_allclose(row[a], u[a], rtol=1e-12)
            np.testing.assert_allclose((gram @ row)[~a], 0.0, atol=1e-10)


def test_stages_and_vmap_give_each_problem_its_own_solution():
    """m = 40 runs the stages of 40 and 20 problems; a vmapped solve over several
    Gramians (its loops run to the slowest) equals the solves one by one."""
    grams = np.stack([_per_example_gramian(40, seed=s) for s in range(3)]).astype(np.float32)
    lower = np.diag(np.full(40, 1 / 40, np.float32))
    one_by_one = [dual_cone.solve_dual_cone(jnp.asarray(g), jnp.asarray(lower))[0]
                  for g in grams]
    batched = jax.jit(jax.vmap(lambda g: dual_cone.solve_dual_cone(g, lower)[0]))(grams)
    for g, single, vmapped in zip(grams, one_by_one, batched):
        expected = np.stack([_nnls_reference(g.astype(np.float64), u) for u in lower])
        np.testing.assert_allclose(single, expected, atol=2e-4 * np.abs(expected).max())
        np.testing.assert_allclose(vmapped, single, rtol=1e-5, atol=1e-7)
    assert dual_cone._stage_sizes(40) == [40, 20]
    assert dual_cone._stage_sizes(128) == [128, 64, 32, 16]
