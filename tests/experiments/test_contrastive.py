import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import contrastive
from jaxreg.protocol import runner


def test_claims_follow_the_rules():
    results = {"ce": {"test_accuracy": [0.95, 0.96, 0.95]},
               "supcon": {"probe_accuracy": [0.96, 0.96, 0.97]},
               "barlow_twins": {"effective_rank": [20.0, 18.0, 25.0],
                                "probe_accuracy": [0.90, 0.91, 0.90]},
               "vicreg": {"effective_rank": [20.0, 3.0, 25.0],
                          "probe_accuracy": [0.90, 0.91, 0.90]}}
    sweep = {"simclr": {32: [0.80, 0.82, 0.81], 512: [0.90, 0.91, 0.92]},
             "dcl": {32: [0.88, 0.89, 0.90], 512: [0.90, 0.91, 0.91]}}
    verdicts = contrastive.claims(results, sweep, [32, 512], 32)
    assert [c.agrees for c in verdicts] == [True, True, True, False]  # vicreg: one seed collapsed
    assert "batch 512 to 32" in verdicts[1].test and "centred z > 8 (d/4)" in verdicts[2].test
    results["supcon"]["probe_accuracy"] = [0.90, 0.91, 0.90]
    sweep["dcl"], sweep["simclr"] = sweep["simclr"], sweep["dcl"]
    results["barlow_twins"]["probe_accuracy"][1] = 0.3  # one seed near chance
    verdicts = contrastive.claims(results, sweep, [32, 512], 32)
    assert [c.agrees for c in verdicts] == [False] * 4
    assert contrastive.claims({}, {}, [128], 32) == []


def test_untrained_lines_compare_paired_and_flag_collapse():
    results = {"random": {"fewshot_accuracy": [0.80, 0.82, 0.81], "normalized_std": [0.1] * 3},
               "a": {"fewshot_accuracy": [0.90, 0.91, 0.92], "normalized_std": [0.1] * 3},
               "b": {"fewshot_accuracy": [0.70, 0.72, 0.71], "normalized_std": [0.001] * 3},
               "c": {"fewshot_accuracy": [0.79, 0.84, 0.80], "normalized_std": [0.1] * 3}}
    lines = contrastive.untrained_lines(results, 16)
    assert lines[0] == "- a: +10.0 ± 0.6 points (above it by more than 2 SE)"
    assert lines[1] == "- b: -10.0 ± 0.0 points (below it by more than 2 SE)"
    assert lines[2].endswith("(within 2 SE)")
    assert lines[-1].endswith("measure): b.")


@pytest.mark.parametrize("method", [m for m in contrastive.METHODS if m != "random"])
def test_every_method_has_a_finite_differentiable_loss(method):
    config = contrastive.get_config()
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    labels = jnp.arange(64) % 10

    def loss(z):
        outs = [{"z": z[i], "p": 2 * z[i] + 1, "logits": z[i][:, :10], "target_z": 3 * z[i]}
                for i in (0, 1)]
        return contrastive._loss(method, config, *outs, labels, {"temperature": 0.5}, keys[3])

    z = jax.random.normal(keys[0], (2, 64, 32))
    value, grad = jax.value_and_grad(loss)(z)
    assert value.shape == () and np.isfinite(value)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_momentum_target_moves_the_target_toward_the_updated_online_network():
    params = {"online": {"w": jnp.array([1.0, 2.0])}, "target": {"w": jnp.array([0.0, 0.0])}}
    grads = {"online": {"w": jnp.array([1.0, -1.0])}, "target": {"w": jnp.array([5.0, 5.0])}}
    opt = contrastive.momentum_target(0.1, 0.9)
    updates, _ = opt.update(grads, opt.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["online"]["w"], [0.9, 2.1], rtol=1e-5)  # Adam's first step
    np.testing.assert_allclose(new["target"]["w"], 0.1 * new["online"]["w"], rtol=1e-5)


def test_quick_run_reports_every_method_and_the_claims(tmp_path):
    methods = "random,ce,supcon,simclr,dcl,barlow_twins,byol"
    payload = runner.main("contrastive", [
        "--quick", "--out", str(tmp_path), "--no-progress", "--set", f"methods={methods}",
        "--set", "model.hidden=64", "--set", "evaluation.probe_steps=20"])
    assert list(payload["results"]) == methods.split(",")
    for method, metrics in payload["results"].items():
        for name in contrastive.METRICS:
            assert np.shape(metrics[name]) == (2,), (method, name)  # seeds
            assert np.all(np.isfinite(metrics[name])), (method, name)
        assert 0 <= min(metrics["probe_accuracy"]) and max(metrics["probe_accuracy"]) <= 1
        assert max(metrics["uniformity"]) <= 0 and min(metrics["alignment"]) >= 0
        assert 1 <= min(metrics["effective_rank"]) <= max(metrics["effective_rank"]) <= 32
    assert payload["sweep"].keys() == {"simclr", "dcl", "supcon"}
    assert payload["sweep"]["dcl"].keys() == {"64", "128"}
    assert len(payload["claims"]) == 3  # vicreg not run
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"] == {"epochs": 1, "batch_size": 128, "seeds": [0, 1]}
    text = (tmp_path / "results.md").read_text()
    assert "MLP encoder 64-64" in text and "| supcon |" in text and "## Batch size" in text
    assert (tmp_path / "contrastive.png").stat().st_size > 0


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown contrastive variant 'cifar'"):
        contrastive.get_config("cifar")
    with pytest.raises(ValueError, match=r"unknown methods \['moco'\]"):
        runner.main("contrastive", ["--quick", "--out", str(tmp_path), "--no-progress",
                                    "--set", "methods=ce,moco"])
