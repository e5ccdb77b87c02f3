import json

import numpy as np
import pytest

from experiments import multitask
from jaxreg.protocol import runner


def test_quick_run_reports_every_task(tmp_path):
    payload = runner.main("multitask", ["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == {"mean", "upgrad", "mgda_ub"}
    for r in payload["results"].values():
        assert set(r["last"]) == set(multitask.TASKS) and len(r["delta_m"]) == 2
        assert all(0 <= a <= 1 for t in ("digit", "parity", "gt4") for a in r["last"][t])
    np.testing.assert_allclose(payload["results"]["mean"]["delta_m"], 0.0)
    text = (tmp_path / "results.md").read_text()
    assert "## The papers' claim" in text
    assert "Variant `default`" in text and "`config.json`" in text
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"] == {"epochs": 2, "batch_size": 64, "seeds": [0, 1]}
    assert saved["aggregators"]["names"] == ["mean", "upgrad", "mgda_ub"]
    assert json.loads((tmp_path / "config.json").read_text()) == saved


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("multitask", [
        "--quick", "--set", "aggregators.names=cagrad", "--set", "aggregators.options.cagrad.c=0.2",
        "--set", "model.hidden=16,8", "--out", str(tmp_path), "--no-progress"])
    assert list(payload["results"]) == ["mean", "cagrad"]  # mean: the baseline, added
    assert payload["config"]["aggregators"]["options"]["cagrad"]["c"] == 0.2
    assert payload["config"]["aggregators"]["names"] == ("cagrad",)  # as config.json says
    assert "trunk 64-16-8" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown multitask variant 'nyu'; variants: default"):
        multitask.get_config("nyu")
    with pytest.raises(ValueError, match=r"aggregators.names: unknown \['famo'\]"):
        runner.main("multitask", ["--quick", "--set", "aggregators.names=famo",
                                  "--out", str(tmp_path / "bad"), "--no-progress"])


def test_delta_m_signs():
    base = {"digit": [0.8], "parity": [0.9], "gt4": [0.9], "value": [0.2]}
    better = {"digit": [0.88], "parity": [0.9], "gt4": [0.9], "value": [0.1]}  # +10 %, +50 %
    np.testing.assert_allclose(multitask.delta_m(better, base), [15.0])


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("multitask", ["--out", str(tmp_path), "--no-progress"])
    assert len(payload["results"]) == len(multitask.aggregators())
