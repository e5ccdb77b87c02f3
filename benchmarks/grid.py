"""Benchmark: ``jaxreg.train.grid`` against sequential runs, hand-written optax and torch.

One run trains K learning rates of SGD with momentum 0.9 (one seed, softmax cross-entropy,
scikit-learn's digits, ``jaxreg.models.mlp((8, 8, 1), 10)`` = 64-256-256-10 ReLU, batch 64,
the batches of ``jaxreg.data.epoch_indices``) in up to five ways, side by side:

    grid            ``jaxreg.train.grid``: all K configurations as one vmapped program, each
                    epoch one ``lax.scan`` over the batches.
    jaxreg steps    K runs of ``jax.jit(jaxreg.train.make_step(...))`` called once per batch,
                    what a user writes without vmap (donating the state, as ``fit`` does).
    optax steps     the same K runs with a hand-written ``jax.jit`` step (``value_and_grad``,
                    ``optimizer.update``, ``optax.apply_updates``), no jaxreg.
    optax vmap      that hand-written step under ``jax.vmap`` over K and ``lax.scan`` over an
                    epoch: the grid's program written by hand, so its ratio is jaxreg's overhead.
    torch steps     the same MLP, initial weights and batches with ``torch.optim.SGD`` in a
                    subprocess (``--torch-python``, or this interpreter when it has torch),
                    timed inside the subprocess, ``torch.set_num_threads`` = the cores here.

The sequential ways visit the configurations one after another within each epoch (the work of
K separate runs, ordered so that "an epoch" means the same thing for every way). Each way traces
and compiles its own programs afresh (a warm-up pass on a small grid first fills the eager-op and
other process-wide caches), and its wall clock is read at the end of every epoch, after
``jax.block_until_ready``:

    first s     the first epoch of all K configurations, including initialisation and all
                compilation: what a short run pays.
    compile s   of the whole run, the time JAX spent tracing, lowering and compiling (the union
                of the spans ``jax.monitoring`` reports).
    steady s    one epoch of all K configurations once warm: the median over epochs 2..E.
    x grid      that time divided by the grid's, measured in the same run: above 1 the grid is
                faster by that factor, below 1 slower.
    max|dp|     the largest absolute difference of the final parameters from the grid's: near
                float32 rounding means the ways computed the same thing.

``grid``'s epochs are timed through its ``on_epoch`` callback, which runs once the epoch's
metrics are on the host.

Usage: ``python benchmarks/grid.py [--configs 4 16] [--epochs N] [--torch-python PATH]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _common import (
    TORCH_MLP,
    Clock,
    compile_spans,
    cores,
    dense_layers_from_numpy,
    dense_layers_to_numpy,
    max_difference,
    run_torch_script,
    torch_python,
    union_seconds,
)
from jaxreg.data import epoch_indices, load_digits
from jaxreg.models import mlp
from jaxreg.train import grid, init_state, make_step

SEED = 0
BATCH_SIZE = 64
MOMENTUM = 0.9
MODEL = mlp((8, 8, 1), 10)
OPTIMIZER = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=MOMENTUM)

TORCH_SCRIPT = r'''
import json, sys, time
import numpy as np
import torch
''' + TORCH_MLP + r'''

path, threads, momentum = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(threads)
data = np.load(path)
x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"]).long()
orders = torch.from_numpy(data["orders"]).long()
layers = len([name for name in data.files if name.startswith("w")])
start, times, models, optimizers = time.perf_counter(), [], [], []
for lr in data["lrs"]:
    models.append(build_mlp(data))
    optimizers.append(torch.optim.SGD(models[-1].parameters(), lr=float(lr), momentum=momentum))
for order in orders:
    for model, optimizer in zip(models, optimizers):
        for index in order:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    now = time.perf_counter()
    times.append(now - start)
    start = now
linears = [[m for m in model if isinstance(m, torch.nn.Linear)] for model in models]
final = {}
for i in range(layers):
    final[f"w{i}"] = np.stack([ls[i].weight.detach().numpy() for ls in linears])
    final[f"b{i}"] = np.stack([ls[i].bias.detach().numpy() for ls in linears])
np.savez(path.replace(".npz", "_final.npz"), **final)
print(json.dumps(times))
'''


@dataclass
class Bench:
    """One benchmark setting: the data, the K learning rates and every epoch's batches."""
    images: np.ndarray
    labels: np.ndarray
    learning_rates: np.ndarray
    orders: list[np.ndarray]
    init_key: jax.Array
    train_key: jax.Array
    init_params: dict


@dataclass
class Timing:
    """What one way measured: per-epoch wall times, compile time and final parameters [K]."""
    epochs: list[float]
    params: dict
    compile: float | None = None


def loss(params, images, labels):
    logits = MODEL.apply(params, images)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def objective(params, batch, hparams, key):
    return {"ce": loss(params, batch["image"], batch["label"])}


def optax_step(params, opt_state, learning_rate, images, labels):
    value, grads = jax.value_and_grad(loss)(params, images, labels)
    updates, opt_state = optax.sgd(learning_rate, momentum=MOMENTUM).update(
        grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


def optax_epoch(params, opt_state, learning_rate, images, labels, order):
    def body(carry, index):
        params, opt_state, value = optax_step(*carry, learning_rate, images[index],
                                              labels[index])
        return (params, opt_state), value

    (params, opt_state), _ = jax.lax.scan(body, (params, opt_state), order)
    return params, opt_state


def stacked(trees) -> dict:
    return jax.tree.map(lambda *leaves: np.stack(leaves), *jax.device_get(trees))


def run_grid(bench: Bench) -> Timing:
    clock = Clock()
    result = grid(objective, OPTIMIZER, MODEL.init, {"image": bench.images, "label": bench.labels},
                  hparams={"learning_rate": list(bench.learning_rates)}, seeds=[SEED],
                  epochs=len(bench.orders), batch_size=BATCH_SIZE,
                  on_epoch=lambda epoch, metrics: clock.tick(), progress=False)
    params = jax.tree.map(lambda p: np.asarray(p[:, 0]), result.state.params)  # seed axis
    return Timing(clock.times, params)


def run_jaxreg_steps(bench: Bench) -> Timing:
    clock = Clock()
    step = jax.jit(make_step(objective, OPTIMIZER), donate_argnums=0)
    # Each state gets its own copy of the key: the step donates the whole state.
    states = [init_state(MODEL.init(bench.init_key), OPTIMIZER, key=jnp.array(bench.train_key),
                         hparams={"learning_rate": lr}) for lr in bench.learning_rates]
    for epoch, order in enumerate(bench.orders):
        for k in range(len(states)):
            for index in order:
                batch = {"image": bench.images[index], "label": bench.labels[index],
                         "index": index, "epoch": epoch}
                states[k], _ = step(states[k], batch)
        jax.block_until_ready(states)
        clock.tick()
    return Timing(clock.times, stacked([s.params for s in states]))


def run_optax_steps(bench: Bench) -> Timing:
    clock = Clock()
    step = jax.jit(functools.partial(optax_step), donate_argnums=(0, 1))  # compiled afresh
    runs = []
    for lr in bench.learning_rates:
        params = MODEL.init(bench.init_key)
        runs.append((params, optax.sgd(lr, momentum=MOMENTUM).init(params)))
    for order in bench.orders:
        for k, lr in enumerate(bench.learning_rates):
            params, opt_state = runs[k]
            for index in order:
                params, opt_state, _ = step(params, opt_state, lr, bench.images[index],
                                            bench.labels[index])
            runs[k] = (params, opt_state)
        jax.block_until_ready(runs)
        clock.tick()
    return Timing(clock.times, stacked([params for params, _ in runs]))


def run_optax_vmap(bench: Bench) -> Timing:
    clock = Clock()
    epoch = jax.jit(jax.vmap(optax_epoch, (0, 0, 0, None, None, None)), donate_argnums=(0, 1))
    k = len(bench.learning_rates)
    params = jax.tree.map(lambda p: jnp.broadcast_to(p, (k, *p.shape)),
                          MODEL.init(bench.init_key))
    opt_state = jax.vmap(optax.sgd(0.0, momentum=MOMENTUM).init)(params)
    images, labels = jnp.asarray(bench.images), jnp.asarray(bench.labels)
    learning_rates = jnp.asarray(bench.learning_rates)
    for order in bench.orders:
        params, opt_state = epoch(params, opt_state, learning_rates, images, labels,
                                  jnp.asarray(order))
        jax.block_until_ready(params)
        clock.tick()
    return Timing(clock.times, jax.device_get(params))


def run_torch(bench: Bench, python: str) -> Timing:
    """Runs ``TORCH_SCRIPT`` in ``python`` on the same data, initial weights and batches."""
    arrays = dict(x=bench.images.reshape(len(bench.images), -1), y=bench.labels,
                  orders=np.stack(bench.orders), lrs=bench.learning_rates,
                  **dense_layers_to_numpy(bench.init_params))
    times, final = run_torch_script(python, TORCH_SCRIPT, arrays, cores(), MOMENTUM)
    return Timing(times, dense_layers_from_numpy(final, leading=1))


def measure(run, bench: Bench, *args) -> Timing:
    with compile_spans() as spans:
        timing = run(bench, *args)
    timing.compile = union_seconds(spans) if spans else None  # None: no JAX (torch)
    return timing


def make_bench(data: dict, k: int, epochs: int) -> Bench:
    init_key, train_key = jax.random.split(jax.random.PRNGKey(SEED))  # as `grid` splits it
    n = len(data["label"])
    return Bench(images=data["image"], labels=data["label"],
                 learning_rates=np.geomspace(1e-3, 5e-2, k).astype(np.float32),
                 orders=[epoch_indices(SEED, e, n, BATCH_SIZE) for e in range(epochs)],
                 init_key=init_key, train_key=train_key, init_params=MODEL.init(init_key))


def print_table(timings: dict[str, Timing]):
    reference = timings["grid"]
    first_ref, steady_ref = reference.epochs[0], statistics.median(reference.epochs[1:])
    print(f"{'way':<14}{'first s':>9}{'compile s':>11}{'steady s':>10}"
          f"{'first x grid':>14}{'steady x grid':>15}{'max|dp|':>10}")
    for name, timing in timings.items():
        first, steady = timing.epochs[0], statistics.median(timing.epochs[1:])
        compiled = "-" if timing.compile is None else f"{timing.compile:.2f}"
        print(f"{name:<14}{first:>9.3f}{compiled:>11}{steady:>10.4f}{first / first_ref:>14.2f}"
              f"{steady / steady_ref:>15.2f}"
              f"{max_difference(timing.params, reference.params):>10.1e}")


def warm_up(data: dict, ways: dict):
    """Runs every JAX way once on a small grid, so no measurement pays one-off process costs.

    This fills the eager-op caches (``MODEL.init`` outside ``jit``) and JAX's internal caches;
    each measured way still traces and compiles its own programs afresh.
    """
    bench = make_bench(data, 2, 2)
    for run, *rest in ways.values():
        if run is not run_torch:
            run(bench, *rest)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, nargs="+", default=[4, 16],
                        help="numbers K of configurations to benchmark")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run (at least 2)")
    parser.add_argument("--torch-python",
                        help="a Python interpreter that has torch (none: skip torch)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is not steady state)")
    data = load_digits("train")
    python = torch_python(args.torch_python)
    ways = {"grid": (run_grid,), "jaxreg steps": (run_jaxreg_steps,),
            "optax steps": (run_optax_steps,), "optax vmap": (run_optax_vmap,)}
    if python is not None:
        ways["torch steps"] = (run_torch, python)
    n = len(data["label"])
    print(f"digits train ({n} examples), MLP 64-256-256-10, SGD momentum {MOMENTUM}, batch "
          f"{BATCH_SIZE} ({n // BATCH_SIZE} steps/epoch), {args.epochs} epochs; {cores()} CPU "
          f"cores, load average {os.getloadavg()[0]:.2f} (other processes skew timings); "
          f"jax {jax.__version__} on {jax.default_backend()}, optax {optax.__version__}; "
          f"torch: {python or 'not available (give --torch-python)'}")
    warm_up(data, ways)
    for k in args.configs:
        bench = make_bench(data, k, args.epochs)
        print(f"\nK = {k} learning rates in [{bench.learning_rates[0]:g}, "
              f"{bench.learning_rates[-1]:g}], 1 seed")
        print_table({name: measure(run, bench, *rest) for name, (run, *rest) in ways.items()})


if __name__ == "__main__":
    main()
