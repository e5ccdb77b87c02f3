"""Benchmark: data-parallel and FSDP steps on 1, 2, 4 and 8 devices: time, memory, bytes.

The byte-level transformer of ``jaxreg run pretrain`` (d 128, 4 layers, T 128), global batch
32, CE + z-loss, clipped Adam with decoupled decay, the step of ``make_step(...,
sharding=plan)`` jitted with the plan's shardings (``ShardingPlan.jit_step``). For each device
count a fresh process splits the CPU into that many XLA devices
(``--xla_force_host_platform_device_count``) and runs both layouts, from the same weights on
the same batches:

    data-parallel   ``from_logical_axes(..., rules=DATA_PARALLEL)`` on ``make_mesh(data=n)``:
                    every device holds all parameters, the batch is split.
    fsdp            ``rules=FSDP`` on ``make_mesh(data=1, fsdp=n)``: the model dimension of
                    every weight split over the devices, the batch too.

Columns:

    devices       n.
    ms/step       the median of ``--blocks`` timed blocks of 5 steps after the first.
    x 1 device    that time over the same layout's on one device.
    param MB      parameter bytes held by one device (``sharding.per_device_bytes``): FSDP
                  divides them by n (the norms' scales stay whole), data-parallel does not.
    opt MB        the same for the optimizer state (Adam's moments follow their parameters).
    temp MB       XLA's temporary buffers of the compiled step (``memory_analysis``), per
                  device.
    max|dp|       the largest difference of the final parameters from one device's.

On a CPU the fake devices share its cores, so the step cannot get faster with n: the times
show the cost of partitioning and collectives, not a speed-up; the bytes are what FSDP is
for, and they are exact. Run it on a machine with n accelerators for speed-ups.

Usage: ``python benchmarks/scaling.py [--devices 1 2 4 8] [--blocks 5] [--d-model 128]
[--layers 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LAYOUTS = ("data-parallel", "fsdp")


def child(devices: int, blocks: int, out: str, d_model: int, layers: int) -> None:
    """One device count: both layouts, JSON rows on stdout, final parameters in ``out``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxreg import train
    from jaxreg.protocol.runner import load
    from jaxreg.train import sharding

    assert jax.device_count() == devices, jax.devices()
    pretrain = load("pretrain")
    config = pretrain.get_config("cpu")
    config.train.batch_size = 32
    config.model.update(d_model=d_model, num_layers=layers, mlp_dim=4 * d_model)
    model = pretrain.model_of(config)
    optimizer = pretrain.make_optimizer(config, total_steps=1000)
    objective = pretrain.make_objective(model)
    rng = np.random.default_rng(0)
    batches = [{"tokens": rng.integers(0, 256, (32, 129)).astype(np.int32)} for _ in range(5)]
    params = model.init(jax.random.PRNGKey(0))
    rows, finals = [], {}
    for layout in LAYOUTS:
        mesh = (sharding.make_mesh(data=devices) if layout == "data-parallel"
                else sharding.make_mesh(data=1, fsdp=devices))
        rules = sharding.DATA_PARALLEL if layout == "data-parallel" else sharding.FSDP
        plan = sharding.from_logical_axes(mesh, params, model.logical_axes, rules=rules)
        state = plan.put_state(train.init_state(jax.tree.map(jnp.copy, params), optimizer,
                                                key=jax.random.PRNGKey(1),
                                                hparams={"z_loss": 1e-4}))
        placed = [plan.put_batch(b, 32) for b in batches]
        step = plan.jit_step(train.make_step(objective, optimizer, sharding=plan), state,
                             placed[0])
        memory = step.lower(state, placed[0]).compile().memory_analysis()
        times = []
        for _ in range(blocks + 1):
            jax.block_until_ready(state)
            start = time.perf_counter()
            for batch in placed:
                state, _ = step(state, batch)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - start)
        rows.append({"layout": layout, "devices": devices,
                     "ms": 1e3 * statistics.median(times[1:]) / len(placed),
                     "param_bytes": sharding.per_device_bytes(state.params),
                     "opt_bytes": sharding.per_device_bytes(state.opt_state),
                     "temp_bytes": getattr(memory, "temp_size_in_bytes", float("nan"))})
        finals[layout] = [np.asarray(leaf) for leaf in jax.tree.leaves(state.params)]
    np.savez(out, **{f"{layout}_{i}": leaf for layout, leaves in finals.items()
                     for i, leaf in enumerate(leaves)})
    print(json.dumps(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.blocks, args.out, args.d_model, args.layers)
    import numpy as np

    print(f"transformer d {args.d_model}, {args.layers} layers, T 128, global batch 32; "
          f"{os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.2f} (other processes skew timings); fake CPU devices "
          "share the cores, so times show partitioning overhead, not speed-up")
    rows, finals = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.devices:
            out = os.path.join(tmp, f"{n}.npz")
            env = {**os.environ, "JAX_PLATFORMS": "cpu",
                   "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--blocks",
                                   str(args.blocks), "--out", out, "--d-model",
                                   str(args.d_model), "--layers", str(args.layers)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                raise RuntimeError(f"{n} devices failed:\n{proc.stderr[-3000:]}")
            rows += json.loads(proc.stdout.splitlines()[-1])
            finals[n] = dict(np.load(out))
    first = args.devices[0]
    print(f"\n{'layout':<15}{'devices':>8}{'ms/step':>10}{'x 1 device':>11}{'param MB':>10}"
          f"{'opt MB':>9}{'temp MB':>9}{'max|dp|':>10}")
    for layout in LAYOUTS:
        own = [r for r in rows if r["layout"] == layout]
        base = own[0]["ms"]
        for r in own:
            keys = [k for k in finals[r["devices"]] if k.startswith(layout)]
            dp = max(float(np.max(np.abs(finals[r["devices"]][k] - finals[first][k])))
                     for k in keys)
            print(f"{layout:<15}{r['devices']:>8}{r['ms']:>10.2f}{r['ms'] / base:>11.2f}"
                  f"{r['param_bytes'] / 1e6:>10.3f}{r['opt_bytes'] / 1e6:>9.3f}"
                  f"{r['temp_bytes'] / 1e6:>9.2f}{dp:>10.1e}")


if __name__ == "__main__":
    main()
