import json

import numpy as np
import pytest

from experiments import multitask
from jaxreg.protocol import config as config_lib
from jaxreg.protocol import runner


def test_quick_run_reports_every_task(tmp_path):
    payload = runner.main("multitask", ["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == {"mean", "upgrad", "mgda_ub"}
    for r in payload["results"].values():
        assert set(r["last"]) == {"left", "right"} and len(r["delta_m"]) == 2
        assert all(0 <= a <= 1 for t in ("left", "right") for a in r["last"][t])
        assert set(r["cosine"]) == set(r["conflict"]) == {"left,right"}
        assert all(-1 <= c <= 1 for c in r["cosine"]["left,right"])
        assert all(0 <= c <= 1 for c in r["conflict"]["left,right"])
    np.testing.assert_allclose(payload["results"]["mean"]["delta_m"], 0.0)
    assert [c["claim"] for c in payload["claims"]] == [
        "aggregating the task gradients beats averaging the losses",
        "upgrad beats averaging the losses (mean)", "mgda_ub beats averaging the losses (mean)"]
    text = (tmp_path / "results.md").read_text()
    assert "## The papers' claim" in text and "| left acc % | right acc % |" in text
    assert "Variant `multidigits`: MultiDigits: 512 train / 256 test pairs" in text
    assert "`config.json`" in text and "left,right: cosine" in text
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"] == {"epochs": 2, "batch_size": 64, "seeds": [0, 1]}
    assert saved["aggregators"]["names"] == ["mean", "upgrad", "mgda_ub"]
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert (tmp_path / "task_pairs.png").stat().st_size > 10_000


def test_every_field_reaches_the_run_and_bad_variants_are_named(tmp_path):
    """The digits4 variant, shrunk by --set: the four tasks, the widths and the aggregator's
    options asked for; the multidigits fields reach the pairs."""
    payload = runner.main("multitask", [
        "--config", "digits4", "--quick", "--set", "aggregators.names=cagrad",
        "--set", "aggregators.options.cagrad.c=0.2", "--set", "model.hidden=16,8",
        "--set", "train.seeds=3", "--set", "train.batch_size=128",
        "--set", "optimizer.learning_rate=0.003", "--out", str(tmp_path), "--no-progress"])
    assert list(payload["results"]) == ["mean", "cagrad"]  # mean: the baseline, added
    assert payload["config"]["aggregators"]["options"]["cagrad"]["c"] == 0.2
    assert payload["config"]["aggregators"]["names"] == ("cagrad",)  # as config.json says
    r = payload["results"]["cagrad"]
    assert set(r["last"]) == set(multitask.PROBLEMS["digits4"]) and len(r["delta_m"]) == 1
    assert len(r["cosine"]) == 6  # every pair of the four tasks
    text = (tmp_path / "results.md").read_text()
    assert "Variant `digits4`: digits (1437 / 360)" in text
    assert "Trunk 64-16-8, learning rate 0.003, batch 128; 1 seeds" in text
    with pytest.raises(ValueError, match="unknown multitask variant 'nyu'; variants: "
                                         "multidigits, digits4"):
        multitask.get_config("nyu")
    with pytest.raises(ValueError, match=r"aggregators.names: unknown \['famo'\]"):
        runner.main("multitask", ["--quick", "--set", "aggregators.names=famo",
                                  "--out", str(tmp_path / "bad"), "--no-progress"])
    with pytest.raises(ValueError, match="data.problem: unknown 'nyuv2'; problems: "
                                         "multidigits, digits4"):
        multitask.tasks_of(config_lib.replace(multitask.get_config(),
                                              {"data.problem": "nyuv2"}))


def test_multidigits_fields_reach_the_pairs():
    config = multitask.quick(multitask.get_config())
    config = config_lib.override(config, [
        "data.train_pairs=100", "data.test_pairs=40", "data.canvas=14", "data.max_shift=2",
        "data.combine=sum", "data.seed=5"])
    train_set, test_set = multitask.load_problem(config)
    assert train_set["image"].shape == (100, 14, 14, 1) and len(test_set["left"]) == 40
    expected = multitask.data_lib.load_multidigits("train", num_pairs=100, canvas=14,
                                                   max_shift=2, combine="sum", seed=5)
    np.testing.assert_array_equal(train_set["image"], expected["image"])
    np.testing.assert_array_equal(train_set["right"], expected["right"])


def test_delta_m_signs():
    base = {"digit": [0.8], "parity": [0.9], "gt4": [0.9], "value": [0.2]}
    better = {"digit": [0.88], "parity": [0.9], "gt4": [0.9], "value": [0.1]}  # +10 %, +50 %
    np.testing.assert_allclose(multitask.delta_m(better, base), [15.0])
    np.testing.assert_allclose(multitask.delta_m({"left": [0.9], "right": [0.8]},
                                                 {"left": [0.9], "right": [1.0]}), [-10.0])


def test_verdicts_follow_the_numbers():
    def result(left):
        return {"last": {"left": left, "right": [0.8] * 4}}

    results = {"mean": result([0.8] * 4), "better": result([0.84, 0.85, 0.83, 0.84]),
               "noisy": result([0.7, 0.9, 0.75, 0.88]), "same": result([0.8] * 4)}
    multitask.compare(results)
    assert [results[n]["beats_mean"] for n in results] == [False, True, False, False]
    assert results["same"]["delta_m_in_se"] == 0.0
    claims = multitask.verdicts(results, 4)
    assert claims[0].agrees and "beat the mean: better (1 of 3; with 4 seeds about" in \
        claims[0].evidence
    assert [c.agrees for c in claims[1:]] == [True, False, False]
    assert claims[1].evidence == "Delta_m +2.50 %, SE 0.26, +9.8 SE"
    np.testing.assert_allclose(multitask.chance_pass_rate(5), 0.0581, atol=1e-4)


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("multitask", ["--out", str(tmp_path), "--no-progress"])
    assert len(payload["results"]) == len(multitask.aggregators())
