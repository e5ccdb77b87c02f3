import json

import numpy as np
import pytest

from experiments import mixup
from jaxreg.protocol import runner


def test_claims_follow_the_paired_rules():
    clean = {"test_accuracy": np.array([[0.90, 0.91, 0.92], [0.91, 0.92, 0.92]]),
             "test_ece": np.array([[0.08, 0.09, 0.07], [0.03, 0.04, 0.03]]),
             "test_nll": np.array([[0.40, 0.45, 0.42], [0.30, 0.33, 0.31]])}
    noisy = {"test_accuracy": np.array([[0.70, 0.72, 0.71], [0.80, 0.81, 0.79]])}
    assert [c.agrees for c in mixup.claims([0.0, 1.0], clean, noisy, noise_rate=0.4)] == [True] * 4
    worse = {"test_accuracy": clean["test_accuracy"][::-1] - [[0], [0.05]],
             "test_ece": clean["test_ece"][::-1], "test_nll": clean["test_nll"][::-1]}
    verdicts = mixup.claims([0.0, 1.0], worse, {"test_accuracy": noisy["test_accuracy"][::-1]},
                            noise_rate=0.4)
    assert [c.agrees for c in verdicts] == [False] * 4
    assert len(mixup.claims([0.0, 1.0], clean, None, noise_rate=0.4)) == 3
    assert "40 % symmetric label noise" in verdicts[3].claim


def test_quick_run_reports_every_alpha_and_setting(tmp_path):
    payload = runner.main("mixup", ["--quick", "--out", str(tmp_path), "--no-progress",
                                    "--set", "mixup.alphas=0,1"])
    assert payload["config"]["mixup"]["alphas"] == (0.0, 1.0)
    assert len(payload["settings"]) == 2  # clean labels, label noise
    for name, r in payload["settings"].items():
        for key in mixup.METRICS:
            assert np.shape(r[key]) == (2, 2), (name, key)  # alphas, seeds
            assert np.all(np.isfinite(r[key])), (name, key)
        assert np.all((np.asarray(r["test_accuracy"]) >= 0) & (np.asarray(r["test_accuracy"]) <= 1))
        assert np.all((np.asarray(r["test_ece"]) >= 0) & (np.asarray(r["test_ece"]) <= 1))
        assert np.all(np.asarray(r["test_nll"]) > 0)
        assert np.all(np.abs(r["test_overconfidence"]) <= 1)
        assert np.shape(r["test_accuracy_curve"]) == (2, 2, 2)
    assert len(payload["claims"]) == 4
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"] == {"epochs": 2, "batch_size": 64, "seeds": [0, 1]}
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    text = (tmp_path / "results.md").read_text()
    assert "Variant `default`" in text and "`config.json`" in text
    assert (tmp_path / "mixup.png").stat().st_size > 0


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("mixup", [
        "--quick", "--set", "mixup.alphas=0,0.5,2", "--set", "noise.enabled=false",
        "--set", "model.hidden=32", "--set", "evaluation.num_bins=5",
        "--out", str(tmp_path), "--no-progress"])
    assert list(payload["settings"]) == ["clean labels"]  # no label-noise setting
    assert np.shape(payload["settings"]["clean labels"]["test_accuracy"]) == (3, 2)
    assert len(payload["claims"]) == 3 and "alpha 2" in payload["claims"][0]["claim"]
    text = (tmp_path / "results.md").read_text()
    assert "MLP 64-32-10" in text and "ECE with 5 equal-width bins" in text
    with pytest.raises(ValueError, match="unknown mixup variant 'cifar'; variants: default"):
        mixup.get_config("cifar")
    with pytest.raises(ValueError, match="mixup.alphas must start with 0"):
        runner.main("mixup", ["--set", "mixup.alphas=1,2", "--out", str(tmp_path / "bad"),
                              "--no-progress"])


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("mixup", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["settings"]["clean labels"]["test_accuracy"][0]) > 0.9
