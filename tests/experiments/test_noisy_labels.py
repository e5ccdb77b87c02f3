import json

import pytest

from experiments import noisy_labels
from jaxreg.protocol import runner


def _check_outputs(out, payload, settings, seeds):
    settings = [noisy_labels.parse_setting(s) for s in settings]
    assert set(payload["settings"]) == {f"{k} {r:.0%}" for k, r in settings}
    for setting in payload["settings"].values():
        assert set(setting["losses"]) == set(noisy_labels.LOSSES)
        for s in setting["losses"].values():
            assert len(s["best"]) == len(seeds)
            assert all(0 <= b <= 1 and b >= l - 1e-9 for b, l in zip(s["best"], s["last"]))
    text = (out / "results.md").read_text()
    assert "## The papers' claims" in text and "| symmetric 40% (" in text
    saved = json.loads((out / "results.json").read_text())["config"]
    assert saved["train"]["seeds"] == seeds
    assert json.loads((out / "config.json").read_text()) == saved
    assert (out / "test_accuracy.png").stat().st_size > 10_000


def test_quick_run_writes_table_json_and_plot(tmp_path):
    payload = runner.main("noisy-labels", ["--quick", "--out", str(tmp_path), "--no-progress"])
    _check_outputs(tmp_path, payload, noisy_labels.QUICK_SETTINGS, [0, 1])
    assert (tmp_path / "results.md").read_text().rstrip().endswith(runner.QUICK_NOTE)
    noise = payload["settings"]["symmetric 40%"]["realised_rate"]
    assert all(abs(r - 0.4) < 0.01 for r in noise)  # APL convention: exact per-class counts


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("noisy-labels", ["--out", str(tmp_path), "--no-progress"])
    _check_outputs(tmp_path, payload, noisy_labels.get_config().noise.settings, [0, 1, 2])
    assert len(payload["claims"]) == 2 + len(noisy_labels.ROBUST)


def _summary(best, last, fit):
    return {"best": [best] * 3, "last": [last] * 3, "noisy_fit_last": [fit] * 3}


def _results(ce_last, robust_last, mae_best):
    losses = {name: _summary(0.9, robust_last, 0.1) for name in noisy_labels.LOSSES}
    losses["CE"] = _summary(0.9, ce_last, 0.8)
    clean = {name: _summary(0.95, 0.95, float("nan")) for name in noisy_labels.LOSSES}
    clean["MAE"] = _summary(mae_best, mae_best, float("nan"))
    return {"symmetric 0%": {"rate": 0.0, "losses": clean},
            "symmetric 60%": {"rate": 0.6, "losses": losses}}


def test_claim_verdicts_follow_the_numbers():
    per_claim = 1 + len(noisy_labels.ROBUST) + 1  # CE, each robust loss, MAE
    agree = noisy_labels.claims(_results(ce_last=0.6, robust_last=0.89, mae_best=0.5))
    assert [c.agrees for c in agree] == [True] * per_claim
    disagree = noisy_labels.claims(_results(ce_last=0.88, robust_last=0.7, mae_best=0.94))
    assert [c.agrees for c in disagree] == [False] * per_claim
    assert "symmetric 60%: 2.0" in disagree[0].evidence
    assert disagree[1].claim == "GCE does not memorize noisy labels"
    assert "largest drop 20.0 (symmetric 60%)" in disagree[1].evidence


def test_variants_are_whole_protocols():
    apl = noisy_labels.get_config("apl-digits")
    assert (apl.data.train_size, tuple(apl.model.hidden), apl.optimizer.learning_rate,
            apl.optimizer.clip_norm, apl.train.epochs, apl.train.batch_size) == (
        1000, (512, 512), 0.05, 5.0, 150, 128)
    mnist, cifar = noisy_labels.get_config("mnist"), noisy_labels.get_config()
    assert cifar.variant == "cifar10" and cifar.optimizer.weight_decay == 1e-4
    assert apl.optimizer.weight_decay == mnist.optimizer.weight_decay == 1e-2
    assert apl.loss.active_passive_beta == mnist.loss.active_passive_beta == 10.0
    with pytest.raises(ValueError, match="unknown noisy-labels variant 'cifar100'"):
        noisy_labels.get_config("cifar100")
    with pytest.raises(ValueError, match="noise.settings: 'uniform 0.4'"):
        noisy_labels.parse_setting("uniform 0.4")


def test_every_field_reaches_the_run(tmp_path):
    """A run of the apl-digits variant, shrunk by --set, trains on its 1000 / 797 split with
    the widths asked for, and its saved config repeats it exactly."""
    out = tmp_path / "apl"
    argv = ["--config", "apl-digits", "--set", "noise.settings=symmetric 0.4",
            "--set", "train.epochs=2", "--set", "train.seeds=0", "--set", "model.hidden=16,8",
            "--set", "loss.gce_q=0.5", "--no-progress", "--out", str(out)]
    payload = runner.main("noisy-labels", argv)
    assert payload["config"]["model"]["hidden"] == (16, 8)
    assert payload["config"]["loss"]["gce_q"] == 0.5
    assert "1000 train / 797 test digits, MLP 16-8, batch 128" in (out / "results.md").read_text()
    again = runner.main("noisy-labels", ["--config", str(out / "config.json"), "--no-progress",
                                         "--out", str(tmp_path / "again")])
    assert again["settings"] == payload["settings"]
