"""``jaxreg diagnose RUN_DIR``: the Hessian, calibration and landscape of a run's checkpoint."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pretrain
from jaxreg import cli
from jaxreg.diagnostics import hessian_top_eigenvalue, hvp
from jaxreg.protocol import config as config_lib
from jaxreg.protocol import diagnose, runner


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One quick pretraining run (it checkpoints at steps 8 and 12), diagnosed once with the
    defaults: ``jaxreg diagnose RUN_DIR``."""
    out = tmp_path_factory.mktemp("diagnose") / "pretrain"
    runner.main("pretrain", ["--quick", "--out", str(out), "--no-progress"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["12", "8"]
    assert cli.main(["diagnose", str(out)]) == 0
    return out


def test_diagnose_writes_a_table_json_and_plot(run_dir):
    for name in ("diagnostics.md", "diagnostics.json", "landscape.png"):
        assert (run_dir / name).stat().st_size > 0
    table = (run_dir / "diagnostics.md").read_text()
    assert "| evaluation batch | 8 validation windows of 33 bytes" in table
    assert "(power iteration, 20 Hessian-vector products)" in table
    assert "(Hutchinson, 16 Rademacher probes)" in table
    saved = json.loads((run_dir / "diagnostics.json").read_text())
    assert saved["experiment"] == "pretrain" and saved["step"] == 12
    top, trace = saved["hessian_top_eigenvalue"], saved["hessian_trace"]
    assert math.isfinite(top) and top > 0 and math.isfinite(trace)
    # the dominant eigenvalue's magnitude is at least the mean eigenvalue's
    assert top >= abs(trace) / saved["parameters"]
    assert 0.0 <= saved["expected_calibration_error"] <= 1.0
    steps, losses = saved["landscape"]["steps"], saved["landscape"]["losses"]
    assert len(steps) == len(losses) == 21 and steps[10] == 0.0
    assert losses[10] == pytest.approx(saved["loss"], rel=1e-5)  # its centre is the checkpoint


def test_diagnose_prints_the_table(run_dir, tmp_path, capsys):
    """Again, into --out, with --experiment: the same numbers (the keys are fixed)."""
    assert cli.main(["diagnose", str(run_dir), "--experiment", "pretrain",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (tmp_path / "diagnostics.md").read_text().split("\n\n", 1)[1].strip()
    assert "| Hessian top eigenvalue |" in out and "| expected calibration error |" in out
    assert (tmp_path / "landscape.png").exists()
    first = json.loads((run_dir / "diagnostics.json").read_text())
    assert json.loads((tmp_path / "diagnostics.json").read_text()) == first


def test_eigenvalue_is_the_rayleigh_quotient_of_its_vector(run_dir):
    restored = diagnose.restore(run_dir)
    assert restored.experiment == "pretrain" and restored.step == 12
    d, params = restored.diagnosable, restored.params
    saved = json.loads((run_dir / "diagnostics.json").read_text())
    # the power iteration again, with the key `measure` uses: the saved eigenvalue
    eigen_key = jax.random.split(jax.random.PRNGKey(d.seed), 3)[0]
    top, vector = jax.jit(lambda p: hessian_top_eigenvalue(
        d.loss_fn, p, eigen_key, num_iterations=d.power_iterations))(params)
    top = float(top)
    assert top == pytest.approx(saved["hessian_top_eigenvalue"], rel=1e-6)

    def dot(a, b):
        return sum(float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a),
                                                          jax.tree.leaves(b)))

    assert dot(vector, vector) == pytest.approx(1.0, rel=1e-5)
    assert dot(vector, hvp(d.loss_fn, params, vector)) == pytest.approx(top, rel=1e-3)
    # no direction curves more than the dominant eigenvalue (up to power iteration's slack)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    u = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
    u = jax.tree.map(lambda x: x / math.sqrt(dot(u, u)), u)
    assert abs(dot(u, hvp(d.loss_fn, params, u))) <= top
    # the restored parameters are the run's last ones, on one device
    assert all(len(leaf.devices()) == 1 for leaf in jax.tree.leaves(params))
    assert float(d.loss_fn(params)) == pytest.approx(saved["loss"], rel=1e-5)
    assert np.asarray(d.logits_fn(params)).shape == (8 * 32, 256)


def _quick_config(path):
    path.mkdir()
    config_lib.save(pretrain.quick(pretrain.get_config()), str(path))


@pytest.mark.parametrize("setup, argv, message", [
    (None, ["missing"], "no run directory"),
    (lambda p: (p / "pretrain").mkdir(), ["pretrain"], "no config.json in"),
    (lambda p: _quick_config(p / "pretrain-copy"), ["pretrain-copy"],
     "STEP folder); the experiments that write checkpoints and can be diagnosed: pretrain"),
    (lambda p: _quick_config(p / "pretrain"), ["pretrain", "--experiment", "noisy-labels"],
     "experiment noisy-labels does not support diagnosis (experiments/noisy_labels.py "
     "defines no diagnosable(config) hook); experiments that do: pretrain"),
    (lambda p: (p / "noisy-labels-apl").mkdir(), ["noisy-labels-apl"],
     "experiment noisy-labels does not support diagnosis"),
    (lambda p: _quick_config(p / "pretrain"), ["pretrain", "--experiment", "pretrian"],
     "unknown experiment 'pretrian' (did you mean pretrain?)"),
    (lambda p: (p / "mine").mkdir(), ["mine"],
     "cannot tell the experiment of"),
])
def test_errors_are_one_clear_line(setup, argv, message, tmp_path, capsys):
    if setup is not None:
        setup(tmp_path)
    assert cli.main(["diagnose", str(tmp_path / argv[0]), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxreg diagnose: error: ") and err.count("\n") == 1
    assert message in err and "Traceback" not in err
    assert not (tmp_path / argv[0] / "checkpoints").exists()  # nothing created


def test_empty_checkpoint_folder_is_no_checkpoint(tmp_path, capsys):
    _quick_config(tmp_path / "pretrain")
    (tmp_path / "pretrain" / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert cli.main(["diagnose", str(tmp_path / "pretrain")]) == 2
    assert "no checkpoints in" in capsys.readouterr().err
