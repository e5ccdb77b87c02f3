"""One process of the 2-process run of ``test_distributed.py``:
``python distributed_worker.py PROCESS_ID PORT OUT_DIR``.

It joins the run (``jaxreg.train.distributed.initialize``), trains data-parallel on the
4 devices of both processes with Orbax checkpoints, and records which examples it read.
"""

import json
import os
import sys

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(__file__))
from problem import dataset, init_params, summed  # noqa: E402

from jaxreg import train  # noqa: E402
from jaxreg.train import distributed, sharding  # noqa: E402

OPT = optax.adam(0.02)
FIT = dict(epochs=2, batch_size=16, seed=5, config={"lr": 0.02}, progress=False)


class RecordingSource:
    """A random-access source (as ``tfds.data_source``) that remembers what it was asked."""

    def __init__(self, data):
        self.data, self.read = data, []

    def __len__(self):
        return len(self.data["x"])

    def __getitems__(self, indices):
        self.read.append([int(i) for i in indices])
        return [{k: v[i] for k, v in self.data.items()} for i in indices]


def main(process_id: int, port: int, out_dir: str) -> None:
    assert distributed.initialize(f"localhost:{port}", 2, process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4
    assert jax.local_device_count() == 2
    plan = sharding.data_parallel(sharding.make_mesh(), init_params())
    source = RecordingSource(dataset())
    state = train.init_state(init_params(), OPT, key=jax.random.PRNGKey(0))
    state, history = train.fit(train.make_step(summed, OPT, sharding=plan), state, source,
                               out_dir=out_dir, checkpoint_every=6, sharding=plan,
                               evaluate=lambda s: {"w": s.params["out"]["kernel"][0, 0]}, **FIT)
    with open(os.path.join(out_dir, f"read-{process_id}.json"), "w") as f:
        json.dump(source.read, f)
    if process_id == 0:
        np.savez(os.path.join(out_dir, "params.npz"),
                 *[np.asarray(leaf) for leaf in jax.tree.leaves(state.params)])
        with open(os.path.join(out_dir, "history-0.json"), "w") as f:
            json.dump(history, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
