import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import train
from jaxreg.data import epoch_indices
from jaxreg.multiobjective.base import from_weighting


def _objective(params, batch, hparams, key):
    noise = 0.01 * jax.random.normal(key, batch["y"].shape)  # uses the step key
    resid = batch["x"] @ params["w"] - batch["y"] + noise
    return {"mse": jnp.mean(resid ** 2)}


def _data(n=24):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {"x": np.asarray(jax.random.normal(k1, (n, 3))),
            "y": np.asarray(jax.random.normal(k2, (n,)))}


OPT = optax.adam(0.05)
STEP = train.make_step(_objective, OPT)


def _state():
    return train.init_state({"w": jnp.zeros(3)}, OPT, key=jax.random.PRNGKey(0))


class _CrashingSource:
    """A random-access source (like tfds.data_source) whose reader dies after some batches."""

    def __init__(self, data, fail_after):
        self.data, self.left = data, fail_after

    def __len__(self):
        return len(self.data["x"])

    def __getitems__(self, indices):
        if self.left == 0:
            raise RuntimeError("reader died")
        self.left -= 1
        return [{k: v[i] for k, v in self.data.items()} for i in indices]


def _fit(out_dir, data, **kw):
    return train.fit(STEP, _state(), data, epochs=3, batch_size=5, seed=2, out_dir=out_dir,
                     checkpoint_every=4, config={"lr": 0.05}, progress=False,
                     evaluate=lambda s: {"w0": s.params["w"][0]}, **kw)


def test_killed_and_resumed_run_ends_with_identical_parameters(tmp_path):
    data = _data()
    full, full_history = _fit(str(tmp_path / "full"), data)
    with pytest.raises(RuntimeError, match="reader died"):
        _fit(str(tmp_path / "cut"), _CrashingSource(data, fail_after=7))  # dies in epoch 2
    saved = train.Checkpointer(tmp_path / "cut" / "checkpoints")
    assert saved.latest_step() == 4  # steps 5-7 were lost with the crash
    saved.close()
    resumed, history = _fit(str(tmp_path / "cut"), data)
    assert int(resumed.step) == int(full.step) == 12
    np.testing.assert_array_equal(resumed.params["w"], full.params["w"])
    np.testing.assert_array_equal(resumed.key, full.key)
    assert history == full_history  # epoch means include the batches before the crash
    with open(tmp_path / "cut" / "history.json") as f:
        assert json.load(f) == full_history
    header = (tmp_path / "cut" / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,step,train/loss,train/mse,eval/w0"


def test_resume_with_another_configuration_is_refused(tmp_path):
    data = _data()
    _fit(str(tmp_path), data, max_steps=4)
    with pytest.raises(ValueError, match=r"different run:\n  config:"):
        train.fit(STEP, _state(), data, epochs=3, batch_size=5, seed=2, out_dir=str(tmp_path),
                  checkpoint_every=4, config={"lr": 0.1}, progress=False)
    with pytest.raises(ValueError, match="batch_size: checkpoint has 5, this run has 6"):
        train.fit(STEP, _state(), data, epochs=3, batch_size=6, seed=2, out_dir=str(tmp_path),
                  checkpoint_every=4, config={"lr": 0.05}, progress=False)
    wider = train.init_state({"w": jnp.zeros(4)}, OPT, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\.params\['w'\]: checkpoint has 'float32\[3\]'"):
        train.fit(STEP, wider, data, epochs=3, batch_size=5, seed=2, out_dir=str(tmp_path),
                  checkpoint_every=4, config={"lr": 0.05}, progress=False)
    # nothing was lost: the original run still resumes
    state, _ = _fit(str(tmp_path), data)
    assert int(state.step) == 12


def test_unwritable_checkpoint_directory_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="a_file/run.* is not writable"):
        _fit(str(blocker / "run"), _data())


def test_checkpoint_without_out_dir_is_an_error():
    with pytest.raises(ValueError, match="needs an `out_dir`"):
        train.fit(STEP, _state(), _data(), epochs=1, batch_size=5, seed=0, checkpoint_every=2,
                  progress=False)


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_loop import _CrashingSource, _data, _fit

class _Killer(_CrashingSource):
    def __getitems__(self, indices):
        if self.left == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint
        return super().__getitems__(indices)

_fit({out!r}, _Killer(_data(), fail_after=7))
"""


def test_sigkilled_run_resumes_to_identical_parameters(tmp_path):
    import subprocess
    import sys

    script = _KILLED_RUN.format(tests=os.path.dirname(__file__), out=str(tmp_path / "cut"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    saved = train.Checkpointer(tmp_path / "cut" / "checkpoints")
    assert saved.latest_step() == 4  # what survived the kill; resuming starts there
    saved.close()
    full, full_history = _fit(str(tmp_path / "full"), _data())
    resumed, history = _fit(str(tmp_path / "cut"), _data())
    assert int(resumed.step) == 12
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # params, Adam, key: all
    assert history == full_history  # the rows of the killed epoch included


def test_rows_every_few_steps_with_their_timing():
    seen = []
    state, history = train.fit(STEP, _state(), _data(), epochs=2, batch_size=5, seed=2,
                               log_every=3, progress=False,
                               evaluate=lambda s: {"w0": s.params["w"][0]},
                               on_row=lambda row, seconds: seen.append((row["step"], seconds)))
    # 4 steps an epoch: rows at steps 3 and 6, and at 8, the end of the run
    assert [r["step"] for r in history] == [3, 6, 8]
    assert [r["epoch"] for r in history] == [1, 2, 2]
    assert [s for s, _ in seen] == [3, 6, 8] and all(t > 0 for _, t in seen)
    # the rows' means are those of the steps they cover
    step = jax.jit(STEP)
    replay, losses = _state(), []
    for epoch in range(2):
        for batch in train.loop.batches(_data(), 5, seed=2, epoch=epoch):
            replay, metrics = step(replay, {**batch, "epoch": np.int32(epoch)})
            losses.append(float(metrics["loss"]))
    np.testing.assert_allclose([r["train/loss"] for r in history],
                               [np.mean(losses[:3]), np.mean(losses[3:6]), np.mean(losses[6:])],
                               rtol=1e-6)
    np.testing.assert_allclose(history[-1]["eval/w0"], replay.params["w"][0], rtol=1e-6)
    with pytest.raises(ValueError, match="`log_every` must be a positive integer"):
        train.fit(STEP, _state(), _data(), epochs=1, batch_size=5, seed=0, log_every=0)


@pytest.mark.parametrize("change, match", [
    ({"epochs": 0}, "`epochs` must be a positive integer, got 0"),
    ({"epochs": -1}, "`epochs` must be a positive integer, got -1"),
    ({"epochs": 2.0}, "`epochs` must be a positive integer, got 2.0"),
    ({"batch_size": 0}, r"`batch_size` must be an integer in \[1, 24\].*got 0"),
    ({"batch_size": -5}, r"`batch_size` must be an integer in \[1, 24\].*got -5"),
    ({"batch_size": 25}, r"`batch_size` must be an integer in \[1, 24\].*got 25"),
    ({"checkpoint_every": 0}, "`checkpoint_every` must be a positive integer or None, got 0"),
    ({"eval_every": 0}, "`eval_every` must be a positive integer, got 0"),
    ({"max_steps": 0}, "`max_steps` must be a positive integer or None, got 0"),
    ({"max_steps": True}, "`max_steps` must be a positive integer or None, got True"),
    ({"seed": -1}, "`seed` must be a non-negative integer, got -1"),
    ({"train_data": {}}, "`train_data` is an empty mapping"),
    ({"train_data": {"x": np.zeros((0, 3)), "y": np.zeros(0)}}, "`train_data` holds no examples"),
    ({"train_data": {"x": np.zeros((4, 3)), "y": np.zeros(5)}},
     r"`train_data` must share their leading .* got lengths \{'x': 4, 'y': 5\}"),
    ({"train_data": [1, 2]}, "`train_data` must be a mapping of arrays or a random-access"),
])
def test_bad_schedule_and_data_are_named_before_training(change, match, tmp_path):
    kw = {"epochs": 2, "batch_size": 5, "seed": 0, "train_data": _data(),
          "out_dir": str(tmp_path), "checkpoint_every": 2, "progress": False, **change}
    with pytest.raises((ValueError, TypeError), match=match):
        train.fit(STEP, _state(), kw.pop("train_data"), **kw)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written


def _two_terms(params, batch, hparams, key):
    resid = batch["x"] @ params["w"] - batch["y"]
    return {"mse": jnp.mean(resid ** 2), "l2": 0.01 * jnp.sum(params["w"] ** 2)}


def _poisoned():
    """The data with one NaN in the third batch of epoch 0 (step 3) of seed 2."""
    data = {k: v.copy() for k, v in _data().items()}
    index = int(epoch_indices(2, 0, 24, 5)[2, 0])
    data["x"][index, 1] = np.nan
    return data, index


@pytest.mark.parametrize("log_every", [None, 1])
def test_nonfinite_training_stops_naming_the_step_and_term(log_every, tmp_path):
    data, _ = _poisoned()
    step = train.make_step(_two_terms, OPT)
    with pytest.raises(train.NonFiniteError, match="non-finite at step 3: mse is NaN or inf"
                       ) as info:
        train.fit(step, _state(), data, epochs=3, batch_size=5, seed=2, out_dir=str(tmp_path),
                  checkpoint_every=2, log_every=log_every, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.step == 3 and info.value.terms == ["mse"]  # l2 went NaN only at step 4
    saved = train.Checkpointer(tmp_path / "checkpoints")
    assert saved.latest_step() == 2  # nothing of the damaged state was saved
    restored, _ = saved.restore(_state())
    saved.close()
    assert np.isfinite(np.asarray(restored.params["w"])).all()
    with open(tmp_path / "history.json") as f:
        assert [row["step"] for row in json.load(f)] == ([] if log_every is None else [1, 2])
    # turned off, the run goes on with NaN in its history
    _, history = train.fit(step, _state(), data, epochs=3, batch_size=5, seed=2,
                           progress=False, stop_on_nonfinite=False)
    assert np.isnan(history[0]["train/mse"]) and np.isnan(history[-1]["train/l2"])


def test_fit_with_a_skipping_step_drops_the_bad_batches():
    data, index = _poisoned()
    step = train.make_step(_two_terms, OPT, skip_nonfinite=True)
    state, history = train.fit(step, _state(), data, epochs=3, batch_size=5, seed=2,
                               progress=False)
    replay, plain = _state(), jax.jit(train.make_step(_two_terms, OPT))
    for epoch, row in enumerate(history):
        skipped = 0
        for batch in train.loop.batches(data, 5, seed=2, epoch=epoch):
            if index in batch["index"]:
                skipped += 1
            else:
                replay, _ = plain(replay, {**batch, "epoch": np.int32(epoch)})
        assert row["train/skipped"] == skipped / 4
    assert history[0]["train/skipped"] == 0.25
    np.testing.assert_allclose(state.params["w"], replay.params["w"], rtol=1e-6)
    assert int(state.step) == 12


def test_nonfinite_error_names_terms_not_diagnostics():
    unit = from_weighting(lambda g: jnp.ones(g.shape[0]), num_objectives=2)
    step = train.make_step(_two_terms, OPT, aggregator=unit, gradient_metrics=True)
    state = train.init_state({"w": jnp.zeros(3)}, OPT, key=jax.random.PRNGKey(0),
                             aggregator=unit)
    with pytest.raises(train.NonFiniteError, match="at step 3: mse is NaN") as info:
        train.fit(step, state, _poisoned()[0], epochs=1, batch_size=5, seed=2, progress=False)
    assert info.value.terms == ["mse"]


def test_a_state_donated_to_an_earlier_fit_is_named():
    data = _data()
    step = train.make_step(_objective, OPT)
    state = _state()
    train.fit(step, state, data, epochs=1, batch_size=5, seed=2, progress=False)
    with pytest.raises(ValueError, match=r"`state` holds a deleted array .*build a new one"):
        train.fit(step, state, data, epochs=1, batch_size=5, seed=2, progress=False)
