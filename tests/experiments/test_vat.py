import json

import numpy as np
import pytest

from experiments import vat
from jaxreg.protocol import runner


def test_choose_epsilon_keeps_the_official_mnist_ratio():
    images = np.zeros((3, 8, 8, 1), np.float32)
    images[:, 0, 0, 0] = [1.0, 2.0, 3.0]  # norms 1, 2, 3: mean 2
    expected = 0.3 / np.sqrt(784 * (0.3081 ** 2 + 0.1307 ** 2)) * 2.0
    np.testing.assert_allclose(vat.choose_epsilon(images), expected, rtol=1e-12)


def test_labelled_pool_has_per_class_examples_repeated():
    labels = np.repeat(np.arange(10), 30)
    pool = vat.labelled_pool(labels, 10, seed=3, size=250)
    assert pool.shape == (250,)
    chosen = np.unique(pool)
    assert chosen.size == 100
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=10), np.full(10, 10))
    assert not np.array_equal(np.unique(vat.labelled_pool(labels, 10, seed=4, size=250)),
                              chosen)


def test_claims_follow_the_paired_rule():
    acc = {"supervised": [0.80, 0.82, 0.81], "RPT": [0.81, 0.82, 0.83],
           "VAT": [0.90, 0.91, 0.90]}
    assert [c.agrees for c in vat.claims(acc)] == [True, True]
    acc["VAT"] = [0.81, 0.83, 0.82]  # +1 point over supervised with spread 0: agrees; vs RPT 0
    assert [c.agrees for c in vat.claims(acc)] == [True, False]
    del acc["RPT"]
    assert len(vat.claims(acc)) == 1


def test_quick_run_reports_every_method(tmp_path):
    payload = runner.main("vat", ["--quick", "--out", str(tmp_path), "--no-progress",
                                  "--set", "methods=supervised,VAT"])
    assert list(payload["methods"]) == ["supervised", "VAT"]
    for name, r in payload["methods"].items():
        assert np.shape(r["test_accuracy_curve"]) == (2, 2), name  # seeds, epochs
        acc = np.asarray(r["test_accuracy"])
        assert np.all((acc >= 0) & (acc <= 1)), name
        assert np.all(np.isfinite(r["train_cross_entropy"])), name
        if name != "supervised":
            assert np.all(np.asarray(r["train_lds"]) >= 0), name
    assert 0.05 < payload["epsilon"] < 0.3
    assert [c["claim"] for c in payload["claims"]] == [
        "VAT improves test accuracy over supervised with 100 labels"]
    assert payload["claims_hvp"] == []
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["seeds"] == [0, 1]
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert "Variant `default`" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "vat.png").stat().st_size > 0


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("vat", [
        "--quick", "--out", str(tmp_path), "--no-progress", "--set", "methods=RPT",
        "--set", "model.hidden=16", "--set", "loss.epsilon=0.2", "--set", "loss.alpha=0.5",
        "--set", "train.labelled_batch=16"])
    assert list(payload["methods"]) == ["RPT"] and payload["epsilon"] == 0.2
    text = (tmp_path / "results.md").read_text()
    assert "MLP 64-16-10" in text and "labelled batch 16" in text
    assert "alpha = 0.5" in text and "epsilon = 0.2 (set)" in text
    with pytest.raises(ValueError, match="unknown vat variant 'big'.*default"):
        vat.get_config("big")
    with pytest.raises(ValueError, match="methods: unknown \\['PI'\\]"):
        vat.methods(vat.config_lib.replace(vat.get_config(), {"methods": ("PI",)}))


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("vat", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["methods"]["supervised"]["test_accuracy"]) > 0.6
