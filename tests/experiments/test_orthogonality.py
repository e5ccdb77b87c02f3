import json

import numpy as np
import pytest

from jaxreg.experiments import orthogonality


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
    payload = orthogonality.main(["--quick", "--out", str(tmp_path), "--no-progress",
                                  "--strengths", "0", "1"])
    assert payload["strengths"] == [0.0, 1.0]
    for name, r in payload["variants"].items():
        for key in ("test_accuracy", "worst_error", "worst_condition", "train_cross_entropy"):
            assert np.shape(r[key]) == (2, 2), (name, key)  # strengths, seeds
            assert np.all(np.isfinite(r[key])), (name, key)
        assert np.all(np.asarray(r["worst_condition"]) >= 1.0)
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 2
    assert (tmp_path / "orthogonality.png").stat().st_size > 0


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = orthogonality.main(["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["variants"]["all kernels"]["test_accuracy"][0]) > 0.9
