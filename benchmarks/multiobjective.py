"""Benchmark: the jaxreg multi-objective step against torchjd and against m backward passes.

One MLP (64-256-256-m ReLU, ``jaxreg.models.mlp``) on scikit-learn's digits, batch 64, plain
SGD: m objectives, each the mean squared error of one output against a target
``tanh(x @ W)`` (``W`` a fixed random 64 x m matrix), so the objectives share every layer but
the last and pull it in different directions. Every way starts from the same weights and sees
the same batches; for m = 4, 8 and 16 (``--objectives``) it runs:

    jaxreg sum          ``jax.jit(make_step(objective, sgd))``: one backward pass of the sum
                        of the objectives, the cost of ordinary training.
    jaxreg <agg>        ``make_step(..., aggregator=<agg>())``: one forward pass, the VJP
                        vmapped over the m objectives, the aggregator, SGD.
    jax loop <agg>      a hand-written jitted step with m separate ``jax.grad`` calls (m
                        forward and m backward passes), then the same aggregator and SGD.
    torch sum           ``sum(losses).backward()`` and ``torch.optim.SGD``.
    torchjd <agg>       torchjd's ``autojac.backward(losses)``, ``jac_to_grad(params, <Agg>())``
                        and ``torch.optim.SGD``: its documented way.
    torch loop <agg>    m ``torch.autograd.grad`` calls (``retain_graph``), the flattened
                        Jacobian given to torchjd's aggregator, SGD.

Aggregators: ``mean`` and ``upgrad`` (``--aggregators``), jaxreg's and torchjd's with their
defaults. Torch runs in a subprocess (``--torch-python``, or this interpreter when it has
torch and torchjd) with ``torch.set_num_threads`` = the cores here. Steps are timed in blocks
of 10 after a ``block_until_ready`` (or in torch, synchronously):

    first s     the first block, including tracing and compilation for JAX.
    ms/step     the median block after the first, divided by 10.
    x jaxreg    that time divided by jaxreg's with the same aggregator (``sum`` rows: by
                jaxreg sum) in the same run: above 1, jaxreg is faster by that factor.
    x sum       that time divided by the same framework's ``sum`` step: what aggregating the
                separate gradients costs over ordinary training.
    max|dp|     the largest absolute difference of the final parameters from jaxreg's with
                the same aggregator: float32 rounding (and, for UPGrad, the two QP solvers'
                tolerances) means the same computation.

Usage: ``python benchmarks/multiobjective.py [--objectives 4 8 16] [--steps 200]
[--torch-python PATH]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxreg.multiobjective as mo
from _common import (
    TORCH_MLP,
    cores,
    dense_layers_from_numpy,
    dense_layers_to_numpy,
    max_difference,
    run_torch_script,
    torch_python,
)
from jaxreg.data import epoch_indices, load_digits
from jaxreg.models import mlp
from jaxreg.train import init_state, make_step

SEED = 0
BATCH_SIZE = 64
LEARNING_RATE = 0.05
BLOCK = 10
AGGREGATORS = {"mean": mo.mean, "upgrad": mo.upgrad}
TORCHJD_NAMES = {"mean": "Mean", "upgrad": "UPGrad"}

TORCH_SCRIPT = r'''
import json, sys, time
import numpy as np
import torch
import torchjd.aggregation as aggregation
from torchjd.autojac import backward, jac_to_grad
''' + TORCH_MLP + r'''

path, threads, lr, block, ways = (sys.argv[1], int(sys.argv[2]), float(sys.argv[3]),
                                  int(sys.argv[4]), sys.argv[5].split(","))
torch.set_num_threads(threads)
data = np.load(path)
x, targets = torch.from_numpy(data["x"]), torch.from_numpy(data["targets"])
batches = torch.from_numpy(data["batches"]).long()


def losses_of(model, index):
    return list(((model(x[index]) - targets[index]) ** 2).mean(dim=0))


def run(way):
    kind, _, agg_name = way.partition(" ")
    model = build_mlp(data)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)
    aggregator = getattr(aggregation, agg_name)() if agg_name else None
    times, start = [], time.perf_counter()
    for step, index in enumerate(batches):
        optimizer.zero_grad()
        losses = losses_of(model, index)
        if kind == "sum":
            torch.stack(losses).sum().backward()
        elif kind == "torchjd":
            backward(losses)
            jac_to_grad(params, aggregator)
        else:  # loop: one backward pass per objective
            rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                loss, params, retain_graph=True)]) for loss in losses]
            direction = aggregator(torch.stack(rows))
            offset = 0
            for p in params:
                p.grad = direction[offset:offset + p.numel()].reshape(p.shape).clone()
                offset += p.numel()
        optimizer.step()
        if (step + 1) % block == 0:
            now = time.perf_counter()
            times.append(now - start)
            start = now
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    final = {f"{way}/w{i}": l.weight.detach().numpy() for i, l in enumerate(linears)}
    final.update({f"{way}/b{i}": l.bias.detach().numpy() for i, l in enumerate(linears)})
    return times, final


results, arrays = {}, {}
for way in ways:
    results[way], final = run(way)
    arrays.update(final)
np.savez(path.replace(".npz", "_final.npz"), **arrays)
print(json.dumps(results))
'''


@dataclass
class Bench:
    """One setting: m objectives, the data, the targets, the batches and the initial weights."""
    m: int
    images: np.ndarray
    targets: np.ndarray
    batches: np.ndarray
    init_params: dict


@dataclass
class Timing:
    """Per-block wall times and the final parameters of one way."""
    blocks: list[float]
    params: dict

    @property
    def step_ms(self) -> float:
        return 1e3 * statistics.median(self.blocks[1:]) / BLOCK


def make_bench(data: dict, m: int, steps: int) -> Bench:
    images = data["image"]
    flat = images.reshape(len(images), -1)
    projection = np.random.default_rng(m).normal(size=(flat.shape[1], m)) / 4.0
    targets = np.tanh(flat @ projection).astype(np.float32)
    n = len(images)
    orders = np.concatenate([epoch_indices(SEED, e, n, BATCH_SIZE)
                             for e in range(-(-steps // (n // BATCH_SIZE)))])
    model = mlp(images.shape[1:], m)
    return Bench(m, images, targets, orders[:steps], model.init(jax.random.PRNGKey(SEED)))


def objective_for(m: int):
    model = mlp((8, 8, 1), m)

    def objective(params, batch, hparams, key):
        errors = jnp.mean((model.apply(params, batch["image"]) - batch["target"]) ** 2, axis=0)
        return {f"y{i:02d}": errors[i] for i in range(m)}  # names sort in output order

    return objective


def timed(step, state, params_of, bench: Bench) -> Timing:
    """Runs ``state = step(state, batch)`` over the batches, timing blocks of ``BLOCK``.

    ``step`` is jitted here with the batch gathered inside it (as a scanned or prefetched
    input pipeline would), so the time is the step's, not that of dispatching the gather.
    """
    @jax.jit
    def gathered(state, images, targets, index):
        return step(state, {"image": images[index], "target": targets[index]})

    images, targets = jnp.asarray(bench.images), jnp.asarray(bench.targets)
    batches = [jnp.asarray(index) for index in bench.batches]  # on the device beforehand
    blocks, start = [], time.perf_counter()
    for i, index in enumerate(batches):
        state = gathered(state, images, targets, index)
        if (i + 1) % BLOCK == 0:
            jax.block_until_ready(state)
            now = time.perf_counter()
            blocks.append(now - start)
            start = now
    return Timing(blocks, jax.device_get(params_of(state)))


def run_jaxreg(bench: Bench, aggregator: str | None) -> Timing:
    optimizer = optax.sgd(LEARNING_RATE)
    agg = AGGREGATORS[aggregator]() if aggregator else None
    step = make_step(objective_for(bench.m), optimizer, aggregator=agg)
    state = init_state(jax.tree.map(jnp.array, bench.init_params), optimizer,
                       key=jax.random.PRNGKey(SEED), aggregator=agg)
    return timed(lambda s, batch: step(s, batch)[0], state, lambda s: s.params, bench)


def run_jax_loop(bench: Bench, aggregator: str) -> Timing:
    """m separate ``jax.grad`` calls in one jitted step, then the aggregator and SGD."""
    objective = objective_for(bench.m)
    transform = optax.chain(AGGREGATORS[aggregator](), optax.sgd(LEARNING_RATE))
    names = [f"y{i:02d}" for i in range(bench.m)]

    def step(carry, batch):
        params, opt_state = carry
        grads = [jax.grad(lambda p, n=n: objective(p, batch, None, None)[n])(params)
                 for n in names]
        jacobian = jax.tree.map(lambda *g: jnp.stack(g), *grads)
        updates, opt_state = transform.update(jacobian, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = jax.tree.map(jnp.array, bench.init_params)
    return timed(step, (params, transform.init(params)),
                 lambda carry: carry[0], bench)


def run_torch(bench: Bench, python: str, ways: list[str]) -> dict[str, Timing]:
    arrays = dict(x=bench.images.reshape(len(bench.images), -1), targets=bench.targets,
                  batches=bench.batches, **dense_layers_to_numpy(bench.init_params))
    times, final = run_torch_script(python, TORCH_SCRIPT, arrays, cores(), LEARNING_RATE,
                                    BLOCK, ",".join(ways))
    timings = {}
    for way in ways:
        mine = {key.split("/", 1)[1]: value for key, value in final.items()
                if key.startswith(way + "/")}
        timings[way] = Timing(times[way], dense_layers_from_numpy(mine))
    return timings


def print_table(timings: dict[str, Timing]):
    print(f"{'way':<20}{'first s':>9}{'ms/step':>10}{'x jaxreg':>10}{'x sum':>8}"
          f"{'max|dp|':>10}")
    for name, timing in timings.items():
        framework, _, aggregator = name.rpartition(" ")
        reference = timings[f"jaxreg {aggregator}"]
        own_sum = timings["jaxreg sum" if framework.startswith("ja") else "torch sum"]
        print(f"{name:<20}{timing.blocks[0]:>9.3f}{timing.step_ms:>10.3f}"
              f"{timing.step_ms / reference.step_ms:>10.2f}"
              f"{timing.step_ms / own_sum.step_ms:>8.2f}"
              f"{max_difference(timing.params, reference.params):>10.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objectives", type=int, nargs="+", default=[4, 8, 16],
                        help="numbers m of objectives")
    parser.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS),
                        choices=list(AGGREGATORS))
    parser.add_argument("--steps", type=int, default=200,
                        help=f"steps per way, a multiple of {BLOCK}, at least {2 * BLOCK}")
    parser.add_argument("--torch-python",
                        help="a Python interpreter with torch and torchjd (none: skip torch)")
    args = parser.parse_args()
    if args.steps < 2 * BLOCK or args.steps % BLOCK:
        parser.error(f"--steps must be a multiple of {BLOCK}, at least {2 * BLOCK}")
    data = load_digits("train")
    python = torch_python(args.torch_python)
    print(f"digits train, MLP 64-256-256-m, m MSE objectives, SGD lr {LEARNING_RATE}, batch "
          f"{BATCH_SIZE}, {args.steps} steps per way; {cores()} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f} (other processes skew timings); jax {jax.__version__} on "
          f"{jax.default_backend()}; torch: {python or 'not available (give --torch-python)'}")
    run_jaxreg(make_bench(data, 2, 2 * BLOCK), "upgrad")  # process-wide caches, once
    for m in args.objectives:
        bench = make_bench(data, m, args.steps)
        timings = {"jaxreg sum": run_jaxreg(bench, None)}
        for name in args.aggregators:
            timings[f"jaxreg {name}"] = run_jaxreg(bench, name)
            timings[f"jax loop {name}"] = run_jax_loop(bench, name)
        if python is not None:
            ways = ["sum"] + [f"{kind} {TORCHJD_NAMES[name]}" for name in args.aggregators
                              for kind in ("torchjd", "loop")]
            for way, timing in run_torch(bench, python, ways).items():
                kind, _, agg = way.partition(" ")
                agg = {v: k for k, v in TORCHJD_NAMES.items()}.get(agg, "")
                label = {"sum": "torch sum", "torchjd": f"torchjd {agg}",
                         "loop": f"torch loop {agg}"}[kind]
                timings[label] = timing
        print(f"\nm = {m} objectives")
        print_table(timings)


if __name__ == "__main__":
    main()
