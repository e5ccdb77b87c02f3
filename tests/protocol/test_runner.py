"""Finding experiments, guarding run directories, and the `jaxreg run` command line."""

import fcntl
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from jaxreg import cli
from jaxreg.protocol import runner


def test_names_are_the_modules_of_experiments():
    names = runner.names()
    assert "noisy-labels" in names and "pretrain" in names
    assert not any(n.startswith("_") for n in names)  # helpers are not experiments
    module = runner.load("noisy-labels")
    assert callable(module.get_config) and callable(module.run)
    with pytest.raises(KeyError, match="unknown experiment 'noisy-label' \\(did you mean "
                                       "noisy-labels\\?\\)"):
        runner.load("noisy-label")


def test_every_experiment_defines_the_protocol():
    for name in runner.names():
        module = runner.load(name)
        config = module.get_config()
        assert isinstance(config, ml_collections.ConfigDict), name
        assert isinstance(config.variant, str), name
        assert callable(module.run), name


def _config(**fields):
    return ml_collections.ConfigDict({"variant": "x", "lr": 0.1, **fields})


def test_a_run_directory_keeps_another_runs_results(tmp_path):
    with runner.RunDirectory(tmp_path, _config()) as out:
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write("first")
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.1
    with runner.RunDirectory(tmp_path, _config()):  # the same run again: allowed
        pass
    with pytest.raises(runner.RunDirectoryError, match="lr: was 0.1, now 0.2") as err:
        with runner.RunDirectory(tmp_path, _config(lr=0.2)):
            pass
    assert "--overwrite" in str(err.value)
    assert (tmp_path / "results.md").read_text() == "first"
    with runner.RunDirectory(tmp_path, _config(lr=0.2), overwrite=True):
        assert not (tmp_path / "results.md").exists()  # the other run's results are gone
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.2


def test_two_runs_into_one_directory_at_once_are_refused(tmp_path):
    # another process holds the directory's lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(tmp_path / '.lock')!r}, 'a')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(runner.RunDirectoryError, match="in use by another run"):
            with runner.RunDirectory(tmp_path, _config()):
                pass
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process (even killed): the directory is free again
    with runner.RunDirectory(tmp_path, _config()):
        with open(tmp_path / ".lock") as f:
            with pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["run", "noisy-label"]) == 2
    assert "did you mean noisy-labels" in capsys.readouterr().err
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"variant": "other"}))
    assert cli.main(["run", "noisy-labels", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds the results of another run" in err and "Traceback" not in err
    assert cli.main(["run", "noisy-labels", "--set", "optimizer.lr=1"]) == 2
    assert "unknown config field 'optimizer.lr'" in capsys.readouterr().err
    assert cli.main(["run", "noisy-labels", "--config", "cifar100"]) == 2
    assert "unknown noisy-labels variant 'cifar100'" in capsys.readouterr().err
