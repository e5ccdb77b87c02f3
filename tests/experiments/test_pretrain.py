import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import _pretrain_ablations as pretrain_ablations
from experiments import pretrain
from jaxreg.protocol import runner


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    return out, runner.main("pretrain", ["--quick", "--out", str(out), "--no-progress"])


def test_quick_run_writes_its_results(quick_run):
    out, payload = quick_run
    for name in ("results.md", "results.json", "loss_curves.png", "config.json",
                 "history.csv", "history.json"):
        assert (out / name).exists(), name
    assert [row["step"] for row in payload["history"]] == [4, 8, 12]
    assert all(np.isfinite(row["eval/loss"]) for row in payload["history"])
    final = payload["final"]
    assert 0 < final["loss"] < math.log(256) + 0.1  # starts near uniform, then learns
    assert final["abs_log_z"] >= abs(final["log_z"]) - 1e-5
    assert payload["flops_per_token"]["attention"] == 6 * 1 * 32 * 32  # 6 L T d
    assert payload["mfu"] > 0 and payload["tokens_per_second"] > 0
    text = (out / "results.md").read_text()
    assert "unigram cross-entropy" in text and "FLOPs/token = 6N + 6LTd" in text
    assert "a byte-level transformer learns the text" in text


def test_the_saved_config_repeats_the_run(quick_run, tmp_path):
    out, payload = quick_run
    again = runner.main("pretrain", ["--config", str(out / "config.json"),
                                     "--out", str(tmp_path), "--no-progress"])
    assert again["config"] == payload["config"]
    assert again["final"] == payload["final"]  # the same run, to the last bit
    assert again["history"] == payload["history"]


def test_rerunning_into_the_run_directory_resumes(quick_run):
    out, payload = quick_run
    again = runner.main("pretrain", ["--quick", "--out", str(out), "--no-progress"])
    assert again["history"] == payload["history"] and again["final"] == payload["final"]
    with pytest.raises(runner.RunDirectoryError,
                       match="optimizer.learning_rate: was 0.003, now 0.5"):
        runner.main("pretrain", ["--quick", "--out", str(out), "--no-progress",
                                 "--set", "optimizer.learning_rate=0.5"])


def test_fsdp_on_fake_devices_matches_one_device(quick_run, tmp_path):
    """The quick run on a 2 x 4 data x fsdp mesh of 8 fake CPU devices (a fresh process)."""
    _, payload = quick_run
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-m", "jaxreg.cli", "run", "pretrain", "--quick", "--no-progress",
         "--out", str(tmp_path), "--set", "mesh.fake_devices=8", "--set", "mesh.data=2",
         "--set", "mesh.fsdp=4"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sharded = json.loads((tmp_path / "results.json").read_text())
    assert sharded["mesh"] == {"grid": 1, "data": 2, "fsdp": 4, "tensor": 1}
    assert sharded["devices"] == 8
    np.testing.assert_allclose(sharded["final"]["loss"], payload["final"]["loss"], rtol=1e-4)
    # FSDP divides the parameter bytes each device holds (norm scales stay whole)
    assert sharded["param_bytes_per_device"] < payload["param_bytes_per_device"] / 3


def test_quick_ablations(tmp_path):
    payload = runner.main("pretrain", ["--quick", "--config", "ablations",
                                       "--out", str(tmp_path), "--no-progress"])
    # 2 learning rates x 2 z-losses x 2 couplings, 1 seed
    assert np.asarray(payload["final_loss"]).shape == (2, 2, 2, 1)
    assert np.asarray(payload["sensitivity"]).shape == (2, 2, 1)
    assert np.all(np.asarray(payload["sensitivity"]) >= 0)
    assert len(payload["claims"]) == 3
    text = (tmp_path / "results.md").read_text()
    assert "LR sensitivity" in text and (tmp_path / "sensitivity.png").exists()


def test_ablation_grid_and_paired_rule():
    config = pretrain.quick(pretrain.get_config("ablations"))
    columns = pretrain_ablations.grid_configs(config)
    assert columns["learning_rate"] == [1e-3] * 4 + [1e-1] * 4
    assert columns["z_loss"] == [0.0, 0.0, 1e-4, 1e-4] * 2
    # coupled: only the optax.adamw decay; decoupled: only jaxreg's
    assert columns["coupled_decay"] == [0.1, 0.0] * 4
    assert columns["decoupled_decay"] == [0.0, 1e-3] * 4
    mean, se, ok = pretrain_ablations.paired([1.0, 1.2, 0.8, np.nan])
    assert mean == pytest.approx(1.0) and se == pytest.approx(0.2 / np.sqrt(3)) and ok
    assert not pretrain_ablations.paired([1.0, -1.0, 0.5])[2]
