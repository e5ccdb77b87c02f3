import json

import numpy as np
import pytest

from experiments import auxiliary
from jaxreg.data import load_digits
from jaxreg.protocol import config as config_lib
from jaxreg.protocol import runner


def test_labelled_mask_is_stratified_and_seeded():
    labels = load_digits("train")["label"]
    mask = auxiliary.labelled_mask(labels, 0.1, seed=0)
    for c in range(10):
        assert abs(mask[labels == c].sum() - round(0.1 * (labels == c).sum())) == 0
    assert np.array_equal(mask, auxiliary.labelled_mask(labels, 0.1, seed=0))
    assert not np.array_equal(mask, auxiliary.labelled_mask(labels, 0.1, seed=1))


def test_quick_run_reports_every_method_and_weight(tmp_path):
    payload = runner.main("auxiliary", [
        "--quick", "--set", "aux.tasks=weight-decay", "--set", "aux.weight_decay_weights=0.01,1",
        "--out", str(tmp_path), "--no-progress"])
    results = payload["tasks"]["weight-decay"]
    assert set(results) == set(auxiliary.methods())
    for name, r in results.items():
        assert np.shape(r["last"]) == ((1 if name == "main only" else 2), 2)  # weights, seeds
        assert all(0 <= a <= 1 for row in r["last"] for a in row)
    # A weight of 1 on half the squared norm shrinks the weights more than 0.01 does.
    assert np.mean(results["sum"]["aux_loss"][1]) < np.mean(results["sum"]["aux_loss"][0])
    assert len(payload["claims"]) == 2
    text = (tmp_path / "results.md").read_text()
    assert text.count("| bloop |") == 2
    assert "Variant `default`" in text and "`config.json`" in text
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"] == {"epochs": 2, "batch_size": 64, "seeds": [0, 1]}
    assert saved["aux"]["weight_decay_weights"] == [0.01, 1.0]
    assert json.loads((tmp_path / "config.json").read_text()) == saved


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("auxiliary", [
        "--quick", "--set", "aux.tasks=recon", "--set", "aux.recon_weights=1",
        "--set", "methods.names=sum,bloop", "--set", "model.hidden=16",
        "--set", "train.epochs=1", "--out", str(tmp_path), "--no-progress"])
    assert list(payload["tasks"]) == ["recon"]
    assert list(payload["tasks"]["recon"]) == ["sum", "bloop"]
    assert payload["config"]["model"]["hidden"] == (16,)
    assert [c["claim"] for c in payload["claims"]] == [
        "recon: Bloop beats sum on the main task (lambda = 1)"]
    assert "trunk 64-16, Adam 0.001" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match="unknown auxiliary variant 'big'; variants: default"):
        auxiliary.get_config("big")
    with pytest.raises(ValueError, match="aux.tasks: unknown"):
        auxiliary.run(config_lib.replace(auxiliary.get_config(), {"aux.tasks": ("rotate",)}),
                      str(tmp_path / "bad"), False)


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("auxiliary", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["tasks"]["recon"]["sum"]["last"][0]) > 0.5
