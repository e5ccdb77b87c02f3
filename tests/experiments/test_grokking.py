import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.experiments import grokking


def test_modular_addition_and_the_one_hot_lookup():
    pairs, labels = grokking.modular_addition(5)
    assert pairs.shape == (25, 2) and labels.shape == (25,)
    np.testing.assert_array_equal(labels, (pairs[:, 0] + pairs[:, 1]) % 5)
    params = grokking.init_mlp(np.random.default_rng(0), 5, hidden=7)
    assert [w.shape for w in params] == [(10, 7), (7, 7), (7, 5)]
    assert float(jnp.max(jnp.abs(params[0]))) <= 1 / np.sqrt(10)  # U(+-1/sqrt(fan_in))
    one_hot = jnp.concatenate([jax.nn.one_hot(pairs[:, 0], 5), jax.nn.one_hot(pairs[:, 1], 5)],
                              1)
    w1, w2, w3 = params
    dense = jax.nn.relu(jax.nn.relu(one_hot @ w1) @ w2) @ w3
    np.testing.assert_allclose(grokking.apply_mlp(params, pairs), dense, rtol=1e-6, atol=1e-6)
    task = grokking.split(np.random.default_rng(0), 5)
    assert task["train"][0].shape == (10, 2) and task["test"][0].shape == (15, 2)
    both = np.concatenate([task["train"][0], task["test"][0]])
    assert len({tuple(p) for p in both.tolist()}) == 25  # a partition of the pairs


def test_claims_follow_the_rules():
    softmax, (stablemax, perpendicular) = "softmax CE", grokking.GROKKERS
    test = {softmax: [0.05, 0.08, 0.06], stablemax: [0.99, 1.0, 0.98],
            perpendicular: [1.0, 1.0, 0.99]}
    sc = {softmax: [0.95, 0.97, 1.0]}
    assert [c.agrees for c in grokking.claims(test, sc)] == [True, True, True]
    test_fail = {softmax: [0.9, 0.95, 0.92], stablemax: [0.5, 0.2, 0.9],
                 perpendicular: [0.99, 0.99, 0.2]}
    assert [c.agrees for c in grokking.claims(test_fail, sc)] == [False, False, False]
    sc_fail = {softmax: [0.1, 0.0, 0.2]}  # low accuracy without collapse: (a) fails too
    assert not grokking.claims(test, sc_fail)[0].agrees


def test_quick_run_structure_and_sanity(tmp_path):
    payload = grokking.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert payload["steps"] == 20 and payload["logged_steps"] == [10, 20]
    assert payload["modulus"] == 11 and payload["seeds"] == [0, 1]
    assert list(payload["variants"]) == list(grokking.VARIANTS)
    for name, r in payload["variants"].items():
        for key in ("test_accuracy", "train_accuracy", "train_sc_fraction", "train_loss"):
            values = np.asarray(r[key])
            assert values.shape == (2, 2), (name, key)  # seeds, logged steps
            assert np.all(np.isfinite(values)), (name, key)
        for key in ("test_accuracy", "train_accuracy", "train_sc_fraction"):
            assert np.all((np.asarray(r[key]) >= 0) & (np.asarray(r[key]) <= 1)), (name, key)
        assert np.all(np.asarray(r["train_loss"]) >= 0)
    # the traced flags select different losses / updates: no two variants train alike
    losses = [np.asarray(r["train_loss"]) for r in payload["variants"].values()]
    assert not np.allclose(losses[0], losses[1]) and not np.allclose(losses[0], losses[2])
    assert len(payload["claims"]) == 3
    assert json.loads((tmp_path / "results.json").read_text())["modulus"] == 11
    assert "| variant | train acc % | test acc %" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "grokking.png").stat().st_size > 0


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = grokking.main(["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["variants"]["softmax CE"]["train_accuracy"], 0)[-1] > 0.99
