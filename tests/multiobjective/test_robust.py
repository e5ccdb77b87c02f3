"""Krum and the trimmed mean against torchjd 0.18, and their limiting cases."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo import as_tree, flat, golden, matrices

from jaxreg.multiobjective import mean, robust

GOLDEN = golden("torchjd_new")
ZOO = dict(matrices())


def _run(aggregator, matrix):
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    update, state = aggregator.update(jac, aggregator.init(params), params)
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0], state


BUILDS = {"krum_0_1": lambda m: robust.krum(num_objectives=m),
          "krum_1_2": lambda m: robust.krum(n_byzantine=1, n_selected=2, num_objectives=m),
          "trimmed_mean_0": lambda m: robust.trimmed_mean(trim_number=0, num_objectives=m),
          "trimmed_mean_1": lambda m: robust.trimmed_mean(num_objectives=m)}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_torchjd_on_the_zoo(case):
    matrix = ZOO[case["name"]]
    compared = 0
    for key, build in BUILDS.items():
        if key in case:
            out, _ = _run(build(len(matrix)), matrix)
            np.testing.assert_allclose(out, case[key], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{key} ({GOLDEN['source']})")
            compared += 1
    assert compared >= 1


def test_krum_selects_the_gradient_closest_to_the_others_and_ignores_outliers():
    rng = np.random.default_rng(0)
    honest = rng.normal(size=(6, 8)) * 0.1 + 1.0
    byzantine = rng.normal(size=(2, 8)) * 50.0
    matrix = np.concatenate([honest[:3], byzantine, honest[3:]])
    gram = jnp.asarray(matrix @ matrix.T, jnp.float32)
    w = np.asarray(robust.krum_weights(gram, n_byzantine=2))
    chosen = int(np.argmax(w))
    assert w.sum() == pytest.approx(1.0) and np.count_nonzero(w) == 1
    assert chosen not in (3, 4)  # never a Byzantine row
    # the brute-force score of the paper's rule with torchjd's distances
    d = np.linalg.norm(matrix[:, None] - matrix[None], axis=-1)
    scores = [np.sort(np.delete(d[i], i))[:len(matrix) - 2 - 2].sum() for i in range(8)]
    assert chosen == int(np.argmin(scores))
    # Multi-Krum: the mean of the n_selected best-scored gradients
    w3 = np.asarray(robust.krum_weights(gram, n_byzantine=2, n_selected=3))
    np.testing.assert_allclose(w3[np.argsort(scores)[:3]], 1 / 3, rtol=1e-6)
    assert np.count_nonzero(w3) == 3


def test_krum_with_every_gradient_selected_is_the_mean():
    matrix = ZOO["m9n11r9"]
    out, _ = _run(robust.krum(n_selected=9, num_objectives=9), matrix)
    expected, _ = _run(mean(num_objectives=9), matrix)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_trimmed_mean_limits():
    matrix = ZOO["m9n11r5"]
    out0, state = _run(robust.trimmed_mean(trim_number=0, num_objectives=9), matrix)
    np.testing.assert_allclose(out0, matrix.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.all(np.isnan(state.weights)) and state.weights.shape == (9,)
    out4, _ = _run(robust.trimmed_mean(trim_number=4, num_objectives=9), matrix)
    np.testing.assert_allclose(out4, np.median(matrix, axis=0), rtol=1e-5, atol=1e-6)
    # an outlier row moves the trimmed mean only through the order statistics it displaces
    spiked = matrix.copy()
    spiked[0] = 1e6
    out1, _ = _run(robust.trimmed_mean(num_objectives=9), spiked)
    assert np.all(np.abs(out1) < 10 * np.abs(matrix).max())
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), as_tree(matrix))
    agg = robust.trimmed_mean(num_objectives=9)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), bf16)
    update, _ = agg.update(bf16, agg.init(params), params)
    assert {x.dtype for x in jax.tree.leaves(update)} == {jnp.dtype(jnp.bfloat16)}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`n_byzantine` must be >= 0"):
        robust.krum(n_byzantine=-1)
    with pytest.raises(TypeError, match="`n_byzantine` must be an int"):
        robust.krum(n_byzantine=1.5)
    with pytest.raises(ValueError, match="`n_selected` must be >= 1"):
        robust.krum(n_selected=0)
    with pytest.raises(ValueError, match=r"at least 5 objectives \(n_byzantine \+ 3\)"):
        robust.krum(n_byzantine=2, num_objectives=4)
    with pytest.raises(ValueError, match="at least 4 objectives"):
        _run(robust.krum(n_byzantine=1), ZOO["m3n20r3"])
    with pytest.raises(ValueError, match="`trim_number` must be >= 0"):
        robust.trimmed_mean(trim_number=-1)
    with pytest.raises(ValueError, match=r"at least 5 objectives \(2 \* trim_number \+ 1\)"):
        _run(robust.trimmed_mean(trim_number=2), ZOO["m4n3r3"])
