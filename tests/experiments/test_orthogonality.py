import json

import numpy as np
import pytest

from experiments import orthogonality
from jaxreg.protocol import runner


def test_kernel_measures_of_an_orthonormal_and_a_scaled_kernel():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 4)))
    error, condition = orthogonality.kernel_measures(q)
    assert error < 1e-12 and abs(condition - 1.0) < 1e-12
    diag = np.zeros((6, 4))
    diag[:4, :4] = np.diag([1.0, 1.0, 1.0, 3.0])
    error, condition = orthogonality.kernel_measures(diag)
    np.testing.assert_allclose(condition, 3.0)
    np.testing.assert_allclose(error, 8.0 / 2.0)  # ||diag(0, 0, 0, 8)||_F / ||I_4||_F


def test_claims_follow_the_paired_rules():
    accuracy = np.array([[0.90, 0.92, 0.91], [0.91, 0.92, 0.92]])
    error = np.array([[0.8, 0.9, 0.85], [0.01, 0.02, 0.015]])
    condition = np.array([[9.0, 8.0, 7.0], [1.1, 1.2, 1.1]])
    verdicts = orthogonality.claims([0.0, 1.0], accuracy, error, condition)
    assert [c.agrees for c in verdicts] == [True, True]
    worse = orthogonality.claims([0.0, 1.0], accuracy - [[0], [0.1]], error, condition * 2)
    assert [c.agrees for c in worse] == [False, False]


def test_quick_run_reports_every_strength(tmp_path):
    payload = runner.main("orthogonality", ["--quick", "--out", str(tmp_path), "--no-progress",
                                            "--set", "regularizer.strengths=0,1"])
    assert payload["config"]["regularizer"]["strengths"] == (0.0, 1.0)
    for name, r in payload["variants"].items():
        for key in ("test_accuracy", "worst_error", "worst_condition", "train_cross_entropy"):
            assert np.shape(r[key]) == (2, 2), (name, key)  # strengths, seeds
            assert np.all(np.isfinite(r[key])), (name, key)
        assert np.all(np.asarray(r["worst_condition"]) >= 1.0)
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["seeds"] == [0, 1]
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert "Variant `default`" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "orthogonality.png").stat().st_size > 0


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("orthogonality", [
        "--quick", "--out", str(tmp_path), "--no-progress", "--set", "model.hidden=16,8",
        "--set", "regularizer.strengths=0,0.5", "--set", "regularizer.masks=hidden kernels",
        "--set", "train.epochs=1"])
    assert list(payload["variants"]) == ["hidden kernels"]
    assert payload["variants"]["hidden kernels"]["kernels"] == [
        "['params']['Dense_0']['kernel']", "['params']['Dense_1']['kernel']"]
    assert "MLP 64-16-8-10" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown orthogonality variant 'big'.*default"):
        orthogonality.get_config("big")
    with pytest.raises(ValueError, match="must start with 0"):
        runner.main("orthogonality", ["--quick", "--out", str(tmp_path / "bad"),
                                      "--no-progress", "--set", "regularizer.strengths=1"])


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("orthogonality", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["variants"]["all kernels"]["test_accuracy"][0]) > 0.9
