import json

import numpy as np
import pytest

from jaxreg.experiments import mixup


def test_claims_follow_the_paired_rules():
    clean = {"test_accuracy": np.array([[0.90, 0.91, 0.92], [0.91, 0.92, 0.92]]),
             "test_ece": np.array([[0.08, 0.09, 0.07], [0.03, 0.04, 0.03]]),
             "test_nll": np.array([[0.40, 0.45, 0.42], [0.30, 0.33, 0.31]])}
    noisy = {"test_accuracy": np.array([[0.70, 0.72, 0.71], [0.80, 0.81, 0.79]])}
    assert [c.agrees for c in mixup.claims([0.0, 1.0], clean, noisy)] == [True] * 4
    worse = {"test_accuracy": clean["test_accuracy"][::-1] - [[0], [0.05]],
             "test_ece": clean["test_ece"][::-1], "test_nll": clean["test_nll"][::-1]}
    verdicts = mixup.claims([0.0, 1.0], worse, {"test_accuracy": noisy["test_accuracy"][::-1]})
    assert [c.agrees for c in verdicts] == [False] * 4
    assert len(mixup.claims([0.0, 1.0], clean, None)) == 3


def test_quick_run_reports_every_alpha_and_setting(tmp_path):
    payload = mixup.main(["--quick", "--out", str(tmp_path), "--no-progress",
                          "--alphas", "0", "1"])
    assert payload["alphas"] == [0.0, 1.0]
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
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 2
    assert (tmp_path / "mixup.png").stat().st_size > 0


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = mixup.main(["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["settings"]["clean labels"]["test_accuracy"][0]) > 0.9
