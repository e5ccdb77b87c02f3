"""Two processes on localhost, 2 fake CPU devices each, Gloo collectives: a data-parallel
``fit`` equals the single-process run on the global batch, each process reads only its half
of every batch, and the 2-process checkpoint restores in one process."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
from distributed_worker import FIT, OPT
from problem import dataset, init_params, summed

from jaxreg import train
from jaxreg.data import epoch_indices

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = _free_port()
    workers = [subprocess.Popen([sys.executable, WORKER, str(i), str(port), str(tmp_path)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]

    # the single-process run on the same global batches
    state = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(0))
    single, history = train.fit(train.make_step(summed, OPT), state, dataset(),
                                evaluate=lambda s: {"w": s.params["out"]["kernel"][0, 0]},
                                **FIT)
    saved = np.load(tmp_path / "params.npz")
    for i, leaf in enumerate(jax.tree.leaves(single.params)):
        np.testing.assert_allclose(saved[f"arr_{i}"], leaf, rtol=1e-5, atol=1e-6)
    two_history = json.loads((tmp_path / "history-0.json").read_text())
    assert [row["step"] for row in two_history] == [row["step"] for row in history]
    for got, want in zip(two_history, history):
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=1e-5)

    # each process read exactly its half of every global batch, no more
    reads = [json.loads((tmp_path / f"read-{i}.json").read_text()) for i in range(2)]
    order = np.concatenate([epoch_indices(FIT["seed"], e, 96, 16) for e in range(2)])
    assert len(reads[0]) == len(reads[1]) == len(order) == 12
    for batch, first, second in zip(order, *reads):
        assert first == batch[:8].tolist() and second == batch[8:].tolist()

    # the checkpoint written by the two processes restores in this one-device process
    checkpointer = train.Checkpointer(tmp_path / "checkpoints")
    assert checkpointer.latest_step() == 12
    like = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(3))
    restored, record = checkpointer.restore(like)
    checkpointer.close()
    assert record["history"] == two_history
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(single)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
