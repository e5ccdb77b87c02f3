"""Checkpoints that cannot be used are refused by path: a truncated or incomplete step, a
record that is not JSON or not ``fit``'s, and a checkpoints folder written by something else;
deleting the damaged step resumes exactly from the one before."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxreg import train

OPT = optax.adam(0.05)


def _objective(params, batch, hparams, key):
    resid = batch["x"] @ params["w"] - batch["y"]
    return {"mse": jnp.mean(resid ** 2)}


STEP = train.make_step(_objective, OPT)


def _data(n=24):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {"x": np.asarray(jax.random.normal(k1, (n, 3))),
            "y": np.asarray(jax.random.normal(k2, (n,)))}


def _state():
    return train.init_state({"w": jnp.ones(3)}, OPT, key=jax.random.PRNGKey(0))


def _fit(out_dir, **kw):
    return train.fit(STEP, _state(), _data(), epochs=3, batch_size=5, seed=2,
                     out_dir=str(out_dir), checkpoint_every=4, config={"lr": 0.05},
                     progress=False, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run interrupted after step 8, with checkpoints at steps 4 and 8."""
    out = tmp_path_factory.mktemp("saved")
    _fit(out, max_steps=8)
    return out


@pytest.fixture
def run(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


def _state_files(run):
    return [f for f in glob.glob(str(run / "checkpoints" / "8" / "state" / "**" / "*"),
                                 recursive=True) if os.path.isfile(f)]


def _truncate(files, keep=0.5):
    for f in files:
        with open(f, "r+b") as handle:
            handle.truncate(int(os.path.getsize(f) * keep))


def _delete(files):
    for f in files:
        os.remove(f)


def _data_files(run):
    return glob.glob(str(run / "checkpoints" / "8" / "state" / "d" / "*"))


DAMAGE = {
    "state data deleted": lambda run: _delete(_data_files(run)),
    "state data truncated": lambda run: _truncate(_data_files(run)),
    "state files emptied": lambda run: _truncate(_state_files(run), keep=0),
    "state metadata deleted": lambda run: os.remove(run / "checkpoints/8/state/_METADATA"),
    "state folder deleted": lambda run: shutil.rmtree(run / "checkpoints/8/state"),
    "record deleted": lambda run: shutil.rmtree(run / "checkpoints/8/record"),
    "record not JSON": lambda run: (run / "checkpoints/8/record/metadata").write_text("{trunc"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_is_refused_by_path(damage, run):
    DAMAGE[damage](run)
    where = str(run / "checkpoints" / "8")
    with pytest.raises(train.CheckpointError, match=f"{where}.*Delete {where} to resume from "
                                                    "step 4") as info:
        _fit(run)
    assert isinstance(info.value, ValueError)
    checkpointer = train.Checkpointer(run / "checkpoints")
    with pytest.raises(train.CheckpointError, match=where):
        checkpointer.restore(_state())
    checkpointer.close()
    # following the advice resumes exactly
    shutil.rmtree(where)
    resumed, history = _fit(run)
    full, full_history = _fit(run.parent / "full")
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert history == full_history


def test_a_record_without_fits_keys_is_refused(tmp_path):
    checkpointer = train.Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(4, _state(), {"history": {}, "note": "written by hand"})
    checkpointer.close()
    with pytest.raises(train.CheckpointError,
                       match=r"checkpoints/4: its record is not one written by `fit` \(`run` is "
                             r"missing; `history` is a dict, expected a list; `sums` is missing"):
        _fit(tmp_path)


def test_a_foreign_checkpoints_folder_is_refused(tmp_path):
    foreign = tmp_path / "torch" / "checkpoints" / "100"
    foreign.mkdir(parents=True)
    (foreign / "model.pt").write_bytes(b"\x80\x02")
    with pytest.raises(train.CheckpointError,
                       match=f"{foreign} has no record/ \\(it holds \\['model.pt'\\]\\): it is "
                             "incomplete, or was not written by jaxreg.train.Checkpointer"):
        _fit(tmp_path / "torch")
    # an Orbax checkpoint of something else (one item, "default")
    other = tmp_path / "orbax" / "checkpoints"
    manager = ocp.CheckpointManager(other)
    manager.save(3, args=ocp.args.StandardSave({"w": jnp.ones(2)}))
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(train.CheckpointError, match=f"{other / '3'} has no record/"):
        _fit(tmp_path / "orbax")
    checkpointer = train.Checkpointer(other)
    with pytest.raises(train.CheckpointError, match=f"{other / '3'} has no state/ or record/"):
        checkpointer.restore(_state())
    with pytest.raises(FileNotFoundError, match=r"step 7 .* \(steps there: \[3\]\)"):
        checkpointer.read_record(7)
    checkpointer.close()
