"""Sharded ``fit`` and checkpoints on 8 fake devices: the unsharded result, exact resume after a
SIGKILL, restore onto another mesh, and the refusals."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from problem import dataset, init_params, summed

from jaxreg import train
from jaxreg.train import sharding

OPT = optax.adam(0.02)
BATCH = 16  # 96 examples: 6 steps an epoch


def _plan(devices=None, layout="fsdp"):
    if layout == "fsdp":
        mesh = sharding.make_mesh(data=2, fsdp=-1, devices=devices)
        return sharding.fully_sharded(mesh, init_params())
    return sharding.data_parallel(sharding.make_mesh(devices=devices), init_params())


def _fit(out_dir, plan, data=None, **kw):
    step = train.make_step(summed, OPT, sharding=plan)
    state = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(0))
    return train.fit(step, state, dataset() if data is None else data, epochs=3,
                     batch_size=BATCH, seed=5, out_dir=out_dir, config={"lr": 0.02},
                     progress=False, sharding=plan, **kw)


def _unsharded(out_dir=None, **kw):
    step = train.make_step(summed, OPT)
    state = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(0))
    return train.fit(step, state, dataset(), epochs=3, batch_size=BATCH, seed=5,
                     out_dir=out_dir, config={"lr": 0.02}, progress=False, **kw)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["data-parallel", "fsdp"])
def test_sharded_fit_equals_the_unsharded_fit(layout, devices, tmp_path):
    evaluate = lambda s: {"w": s.params["out"]["kernel"][0, 0]}
    state, history = _fit(str(tmp_path / "sharded"), _plan(layout=layout), evaluate=evaluate)
    single, single_history = _unsharded(evaluate=evaluate)
    _assert_same(state.params, single.params)
    _assert_same(state.opt_state, single.opt_state)
    assert [r["step"] for r in history] == [6, 12, 18]
    for row, want in zip(history, single_history):
        assert row.keys() == want.keys()
        np.testing.assert_allclose([row[k] for k in row], [want[k] for k in row], rtol=1e-5)
    kernel = state.params["hidden"]["kernel"]
    expected = P(None, "fsdp") if layout == "fsdp" else P()
    assert kernel.sharding.is_equivalent_to(
        jax.sharding.NamedSharding(kernel.sharding.mesh, expected), 2)


_KILLED = """
import os, signal, sys
sys.path[:0] = {paths!r}
import test_fit
from jaxreg.data import pipeline

real = pipeline.batches
def dying(*args, epoch, start=0, **kw):
    for i, batch in enumerate(real(*args, epoch=epoch, start=start, **kw)):
        if epoch == 1 and start + i == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint
        yield batch
test_fit.train.loop.batches = dying
test_fit._fit({out!r}, test_fit._plan(), checkpoint_every=4)
"""


def test_sigkilled_sharded_run_resumes_to_identical_parameters(devices, tmp_path):
    here = os.path.dirname(__file__)
    script = _KILLED.format(paths=[here, os.path.dirname(here)], out=str(tmp_path / "cut"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=os.environ)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    saved = train.Checkpointer(tmp_path / "cut" / "checkpoints")
    assert saved.latest_step() == 8  # it died reading the batch of step 10
    saved.close()
    full, full_history = _fit(str(tmp_path / "full"), _plan(), checkpoint_every=4)
    resumed, history = _fit(str(tmp_path / "cut"), _plan(), checkpoint_every=4)
    assert int(resumed.step) == 18
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # exactly
    assert history == full_history


def test_restore_onto_another_mesh(devices, tmp_path):
    """Saved FSDP on 8 devices; restored FSDP on 4, replicated on 8, and on one device."""
    state, _ = _fit(str(tmp_path), _plan(), checkpoint_every=18)
    saved = {k: np.asarray(v) for k, v in
             zip(range(len(jax.tree.leaves(state))), jax.tree.leaves(state))}
    like = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(9))

    four = _plan(devices=devices[:4])
    replicated = _plan(layout="data-parallel")
    one = sharding.data_parallel(sharding.make_mesh(devices=devices[:1]), init_params())
    checkpointer = train.Checkpointer(tmp_path / "checkpoints")
    for plan, kernel_spec, shards in ((four, P(None, "fsdp"), 4), (replicated, P(), 8),
                                      (one, P(), 1)):
        restored, record = checkpointer.restore(like, shardings=plan.state(like))
        assert record["run"]["batch_size"] == BATCH
        for i, leaf in enumerate(jax.tree.leaves(restored)):
            np.testing.assert_array_equal(np.asarray(leaf), saved[i])
        kernel = restored.params["hidden"]["kernel"]
        assert kernel.sharding.spec == kernel_spec and len(kernel.addressable_shards) == shards
        assert kernel.sharding.mesh.devices.size == shards
        adam = restored.opt_state[0]
        assert isinstance(adam, optax.ScaleByAdamState)  # the target's types
        assert adam.mu["hidden"]["kernel"].sharding.spec == kernel_spec
    # an abstract target (no arrays at all) carries the shardings as well
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            like, four.state(like))
    restored, _ = checkpointer.restore(abstract)
    assert restored.params["hidden"]["kernel"].sharding.spec == P(None, "fsdp")
    checkpointer.close()


def test_restoring_into_another_shape_is_refused_by_name(devices, tmp_path):
    _fit(str(tmp_path), _plan(), checkpoint_every=6, max_steps=6)
    params = init_params()
    params["hidden"]["kernel"] = np.zeros((16, 64), np.float32)
    like = train.init_state(params, OPT, key=jax.random.PRNGKey(0))
    checkpointer = train.Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match=r"\.params\['hidden'\]\['kernel'\]: checkpoint has "
                                         r"'float32\[16, 32\]', this run has 'float32\[16, 64\]'"):
        checkpointer.restore(like)
    checkpointer.close()


def test_refusals_hold_for_sharded_runs(devices, tmp_path):
    _fit(str(tmp_path), _plan(), checkpoint_every=6, max_steps=6)
    step = train.make_step(summed, OPT, sharding=_plan())
    state = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"different run:\n  config:"):
        train.fit(step, state, dataset(), epochs=3, batch_size=BATCH, seed=5,
                  out_dir=str(tmp_path), checkpoint_every=6, config={"lr": 0.5},
                  progress=False, sharding=_plan())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="a_file/run.* is not writable"):
        _fit(str(blocker / "run"), _plan(), checkpoint_every=6)
    with pytest.raises(ValueError, match=r"`batch_size` 12 is not divisible by the 8 devices"):
        train.fit(step, state, dataset(), epochs=1, batch_size=12, seed=0, progress=False,
                  sharding=_plan())
    # the interrupted run still resumes, on another mesh
    resumed, _ = _fit(str(tmp_path), _plan(layout="data-parallel"), checkpoint_every=6)
    full, _ = _unsharded()
    _assert_same(resumed.params, full.params)


def test_asynchronous_checkpoints_resume_exactly(devices, tmp_path):
    _fit(str(tmp_path), _plan(), checkpoint_every=4, max_steps=10, async_checkpoints=True)
    checkpointer = train.Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.latest_step() == 10  # the last save is waited for when fit ends
    checkpointer.close()
    resumed, _ = _fit(str(tmp_path), _plan(), checkpoint_every=4, async_checkpoints=True)
    full, _ = _fit(None, _plan())
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
