import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import J_BASE, as_tree, flat, matrices

from jaxreg.multiobjective import weighted

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "weighted.json").read_text())


def _run(aggregator, matrix):
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    update, state = aggregator.update(jac, aggregator.init(params), params)
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0], state


@pytest.mark.parametrize("name, aggregator, expected, weights", [
    # torchjd tests/unit/aggregation/test_values.py on J_base
    ("imtl_g", weighted.imtl_g(num_objectives=2), [0.0767, 1.0, 1.0], [0.5923, 0.4077]),
    ("aligned_mtl", weighted.aligned_mtl(num_objectives=2), [0.2133, 0.9673, 0.9673],
     [0.5591, 0.4083]),
    ("mean", weighted.mean(num_objectives=2), [1.0, 1.0, 1.0], [0.5, 0.5]),
    ("sum", weighted.sum(num_objectives=2), [2.0, 2.0, 2.0], [1.0, 1.0]),
])
def test_torchjd_values_on_j_base(name, aggregator, expected, weights):
    out, state = _run(aggregator, J_BASE)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(state.weights, weights, atol=1e-4)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_torchjd_on_the_zoo(case):
    matrix = dict(matrices())[case["name"]]
    scale = max(1.0, np.abs(matrix).max())
    for name in ("imtl_g", "aligned_mtl"):
        out, _ = _run(getattr(weighted, name)(), matrix)
        np.testing.assert_allclose(out, case[name], atol=2e-4 * scale, rtol=1e-3,
                                   err_msg=f"{name} ({GOLDEN['source']})")


def test_imtl_g_equalises_projections_on_unit_gradients():
    for name, matrix in matrices():
        if np.linalg.matrix_rank(matrix) < len(matrix):
            continue  # the property holds for linearly independent gradients
        out, _ = _run(weighted.imtl_g(), matrix)
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        proj = unit @ out
        np.testing.assert_allclose(proj, proj[0], rtol=1e-3, atol=1e-5, err_msg=name)


def test_imtl_g_matches_the_official_closed_form():
    # nash-mtl methods/weight_methods.py IMTLG, in numpy, for full-row-rank J
    matrix = dict(matrices())["m3n20r3"]
    g = matrix
    u = g / np.linalg.norm(g, axis=1, keepdims=True)
    d, uu = g[0] - g[1:], u[0] - u[1:]
    alpha_rest = g[0] @ uu.T @ np.linalg.inv(d @ uu.T)
    alpha = np.concatenate([[1 - alpha_rest.sum()], alpha_rest])
    out, _ = _run(weighted.imtl_g(), matrix)
    np.testing.assert_allclose(out, alpha @ g, rtol=1e-4, atol=1e-5)


def test_aligned_mtl_scale_modes_and_bad_mode():
    gram = jnp.asarray(J_BASE @ J_BASE.T, jnp.float32)
    lam = np.linalg.eigvalsh(J_BASE @ J_BASE.T)
    w_min = weighted.aligned_mtl_weights(gram, scale_mode="min")
    w_rmse = weighted.aligned_mtl_weights(gram, scale_mode="rmse")
    np.testing.assert_allclose(np.asarray(w_rmse) / np.asarray(w_min),
                               np.sqrt(lam.mean() / lam.min()), rtol=1e-4)
    with pytest.raises(ValueError, match="`scale_mode` must be one of"):
        weighted.aligned_mtl(scale_mode="max")


def test_random_weighting_is_a_seeded_softmax_draw():
    agg = weighted.random_weighting(seed=3, num_objectives=4)
    matrix = dict(matrices())["m4n3r3"]
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    state = agg.init(params)
    _, s1 = agg.update(jac, state, params)
    _, s2 = agg.update(jac, s1, params)
    _, again = agg.update(jac, agg.init(params), params)
    np.testing.assert_allclose(np.sum(s1.weights), 1.0, rtol=1e-6)
    assert np.all(np.asarray(s1.weights) > 0)
    np.testing.assert_array_equal(s1.weights, again.weights)  # reproducible
    assert not np.allclose(s1.weights, s2.weights)  # a fresh draw each step
    chain = optax.chain(agg, optax.sgd(0.1))
    update, _ = jax.jit(chain.update)(jac, chain.init(params), params)
    assert np.all(np.isfinite(flat(jax.tree.map(lambda x: np.asarray(x)[None], update))))
