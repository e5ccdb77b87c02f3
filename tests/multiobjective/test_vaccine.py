import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import as_tree, flat, matrices

from jaxreg.multiobjective import vaccine

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "vaccine.json").read_text())


def _numpy_gradvac(jac, targets, orders, beta=0.5, eps=1e-8):
    """Reference-style GradVac on the vectors (torchjd _gradvac.py, LibMTL GradVac)."""
    m = len(jac)
    targets = targets.copy()
    rows = []
    for i in range(m):
        g = jac[i].copy()
        for j in orders[i]:
            if j == i:
                continue
            phi = g @ jac[j] / (np.linalg.norm(g) * np.linalg.norm(jac[j]) + eps)
            t = targets[i, j]
            if phi < t:
                w = np.linalg.norm(g) * (t * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - t ** 2)) \
                    / (np.linalg.norm(jac[j]) * np.sqrt(1 - t ** 2) + eps)
                g = g + w * jac[j]
            targets[i, j] = (1 - beta) * t + beta * phi
        rows.append(g)
    return np.sum(rows, axis=0), targets


def _step(agg, matrix, state):
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    state = agg.init(params) if state is None else state
    update, state = agg.update(jac, state, params)
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0], state


def test_matches_torchjd_over_consecutive_steps():
    agg, state = vaccine.gradvac(num_objectives=2), None
    for t, step in enumerate(GOLDEN["steps"]):
        out, state = _step(agg, np.asarray(step["jacobian"]), state)
        np.testing.assert_allclose(out, step["output"], rtol=1e-4, atol=1e-5,
                                   err_msg=f"step {t} ({GOLDEN['source']})")


def test_matches_the_vector_algorithm_with_the_same_orders():
    rng = np.random.default_rng(0)
    for name, matrix in matrices()[1:]:
        if np.linalg.matrix_rank(matrix) < 2:
            continue  # parallel gradients: a corrected row can vanish, its cosine is undefined
        m = len(matrix)
        targets = rng.uniform(-0.2, 0.6, (m, m)).astype(np.float32)
        orders = np.stack([rng.permutation(m) for _ in range(m)])
        gram = jnp.asarray(matrix @ matrix.T, jnp.float32)
        weights, new_targets = vaccine.gradvac_weights(gram, jnp.asarray(targets),
                                                       jnp.asarray(orders))
        expected, expected_targets = _numpy_gradvac(matrix, targets.astype(np.float64), orders)
        scale = m * np.abs(matrix).max()  # the output may cancel to ~0 (rank-1 cases)
        np.testing.assert_allclose(np.asarray(weights) @ matrix, expected, rtol=1e-3,
                                   atol=1e-4 * scale, err_msg=name)
        off = ~np.eye(m, dtype=bool)
        np.testing.assert_allclose(np.asarray(new_targets)[off], expected_targets[off],
                                   atol=1e-4, err_msg=name)


def test_seeded_orders_are_reproducible_and_num_objectives_required():
    matrix = dict(matrices())["m4n3r3"]
    a, _ = _step(vaccine.gradvac(seed=1, num_objectives=4), matrix, None)
    b, _ = _step(vaccine.gradvac(seed=1, num_objectives=4), matrix, None)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="give `num_objectives`"):
        vaccine.gradvac()
