import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import grokking
from jaxreg.protocol import runner


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
    task = grokking.split(np.random.default_rng(0), 5, 0.4)
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
    payload = runner.main("grokking", ["--quick", "--out", str(tmp_path), "--no-progress"])
    config = payload["config"]
    assert config["train"]["steps"] == 20 and payload["logged_steps"] == [10, 20]
    assert config["data"]["modulus"] == 11 and config["train"]["seeds"] == (0, 1)
    assert config["variant"] == "cpu" and payload["train_size"] == 48
    assert list(payload["results"]) == list(grokking.METHODS) == list(payload["methods"])
    assert [m["beta2"] for m in payload["methods"].values()] == [0.99, 0.999, 0.99, 0.999]
    for name, r in payload["results"].items():
        for key in ("test_accuracy", "train_accuracy", "train_sc_fraction", "train_loss"):
            values = np.asarray(r[key])
            assert values.shape == (2, 2), (name, key)  # seeds, logged steps
            assert np.all(np.isfinite(values)), (name, key)
        for key in ("test_accuracy", "train_accuracy", "train_sc_fraction"):
            assert np.all((np.asarray(r[key]) >= 0) & (np.asarray(r[key]) <= 1)), (name, key)
        assert np.all(np.asarray(r["train_loss"]) >= 0)
    # the traced flags select different losses / updates: no two variants train alike
    losses = [np.asarray(r["train_loss"]) for r in payload["results"].values()]
    assert not np.allclose(losses[0], losses[1]) and not np.allclose(losses[0], losses[2])
    assert len(payload["claims"]) == 3
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["data"]["modulus"] == 11
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    text = (tmp_path / "results.md").read_text()
    assert "| method | train acc % | test acc %" in text
    assert "Variant `cpu`" in text and "`config.json`" in text
    assert (tmp_path / "grokking.png").stat().st_size > 0


def test_variants_and_set_reach_the_run(tmp_path):
    cpu, gpu = grokking.get_config(), grokking.get_config("gpu")
    assert (cpu.data.modulus, cpu.train.steps, cpu.train.log_every) == (41, 4000, 100)
    assert (gpu.data.modulus, gpu.train.steps, gpu.train.log_every,
            gpu.train.matmul_precision) == (113, 80_000, 2000, "highest")
    with pytest.raises(ValueError, match="unknown grokking variant 'tpu'; variants: cpu, gpu"):
        grokking.get_config("tpu")
    payload = runner.main("grokking", [
        "--config", "gpu", "--set", "data.modulus=7", "--set", "train.steps=6",
        "--set", "train.log_every=3", "--set", "train.seeds=0", "--set", "model.hidden=8",
        "--set", "methods.names=softmax CE,softmax CE + ⊥Adam", "--set", "methods.beta2=0.9,0.95",
        "--out", str(tmp_path / "set"), "--no-progress"])
    assert payload["logged_steps"] == [3, 6] and payload["train_size"] == int(0.4 * 49)
    assert list(payload["results"]) == ["softmax CE", "softmax CE + ⊥Adam"]
    assert [m["beta2"] for m in payload["methods"].values()] == [0.9, 0.95]
    assert np.shape(payload["results"]["softmax CE"]["test_accuracy"]) == (1, 2)
    assert len(payload["claims"]) == 2  # softmax's and ⊥Adam's; StableMax did not run
    assert "MLP 14-8-8-7" in (tmp_path / "set" / "results.md").read_text()
    with pytest.raises(ValueError, match=r"train.steps \(10\) must be a multiple"):
        runner.main("grokking", ["--set", "train.steps=10", "--set",
                                 "train.log_every=3", "--out", str(tmp_path / "bad"),
                                 "--no-progress"])


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("grokking", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["results"]["softmax CE"]["train_accuracy"], 0)[-1] > 0.99
