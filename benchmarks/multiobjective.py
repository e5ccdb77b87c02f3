"""Benchmark: Jacobian descent with jaxreg's engines against torchjd's two engines.

Two models on scikit-learn's digits (8 x 8 x 1), float32, CPU: an MLP 64-256-256-k
(``jaxreg.models.mlp``) and a small CNN (``jaxreg.models.cnn``, Conv 16-32 3x3 with 2x2
average pooling, global mean, linear head), each in two settings:

    mtl m       m = 4, 8, 16 objectives on batches of 64: objective i is the mean squared
                error of output i against ``tanh(x @ W)`` (``W`` a fixed random 64 x m
                matrix), so the objectives share every layer but the last and conflict.
    iwrm B      instance-wise risk minimisation: each example's cross-entropy on its digit is
                an objective (m = B), batches of B = 32, 64, 128.

Every way starts from the same weights and sees the same batches, with plain SGD:

    jaxreg sum          ``jax.jit(make_step(objective, sgd))``: one backward pass of the
                        summed (or mean) objectives: the cost of ordinary training.
    jaxreg upgrad       ``make_step(..., aggregator=upgrad())`` with its default engine
                        (``"layers"``: the Gramian from each layer's inputs and output
                        cotangents, no Jacobian; ``jaxreg.multiobjective.engine``).
    jaxreg upgrad/jac   the same with ``engine="jacobian"`` (J from a vmapped VJP).
    torch sum           ``loss.backward()`` and ``torch.optim.SGD``.
    torchjd autojac     ``torchjd.autojac.backward(losses)`` + ``jac_to_grad(params, UPGrad())``.
    torchjd autogram    ``torchjd.autogram.Engine(model, batch_dim=0 for iwrm, None for mtl)``:
                        ``compute_gramian(losses)``, ``UPGradWeighting()``,
                        ``losses.backward(weights)``.

Torch runs in a subprocess (``--torch-python``, or this interpreter when it has torch and
torchjd) with ``torch.set_num_threads`` = the cores here. Steps are timed in blocks of 10
after a ``block_until_ready`` (torch: synchronously); ``ms/step`` is the median block after
the first, divided by 10. For each setting it prints:

    x sum       the way's time over its own framework's summed step: what aggregating costs.
    x jaxreg    the way's time over ``jaxreg upgrad``'s: above 1, jaxreg is faster.
    max|dp|     the largest difference of the final parameters from ``jaxreg upgrad``'s
                (from ``jaxreg sum``'s for the summed steps): float32 rounding and the QP
                solvers' tolerances, i.e. the same computation.

and the two ratios the issue sets targets for: jaxreg UPGrad over jaxreg's summed step, and
the faster torchjd engine over jaxreg UPGrad. A setting whose torch summed step is more than
3x jaxreg's is refused (printed, not compared): a loaded machine stalls torch's threads.

Usage: ``python benchmarks/multiobjective.py [--models mlp cnn] [--mtl 4 8 16]
[--iwrm 32 64 128] [--steps 100] [--torch-python PATH]``.
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
from _common import cores, max_difference, run_torch_script, torch_python
from jaxreg import objective as objective_lib
from jaxreg.data import epoch_indices, load_digits
from jaxreg.models import cnn, mlp
from jaxreg.train import init_state, make_step

SEED = 0
LEARNING_RATE = 0.05
BLOCK = 10
MTL_BATCH = 64
REFUSE_RATIO = 3.0

TORCH_SCRIPT = r'''
import json, sys, time
import numpy as np
import torch
from torchjd.aggregation import UPGrad, UPGradWeighting
from torchjd.autogram import Engine
from torchjd.autojac import backward, jac_to_grad

path, threads, lr, block, kind, setting, ways = (
    sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
    sys.argv[6], sys.argv[7].split(","))
torch.set_num_threads(threads)
data = np.load(path)
x = torch.from_numpy(data["x"])
targets = torch.from_numpy(data["targets"])
batches = torch.from_numpy(data["batches"]).long()
names = [n for n in data.files if n.startswith("p/")]


def build():
    """The jaxreg model's weights as torch modules (channels first for the CNN)."""
    if kind == "mlp":
        widths = [data[f"p/Dense_{i}/kernel"].shape for i in range(3)]
        layers = []
        for i, (n_in, n_out) in enumerate(widths):
            linear = torch.nn.Linear(n_in, n_out)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(data[f"p/Dense_{i}/kernel"].T))
                linear.bias.copy_(torch.from_numpy(data[f"p/Dense_{i}/bias"]))
            layers += [linear, torch.nn.ReLU()] if i < 2 else [linear]
        return torch.nn.Sequential(torch.nn.Flatten(), *layers)
    layers, size = [], 8
    for i in range(2):
        kernel = data[f"p/Conv_{i}/kernel"]  # [3, 3, in, out]
        conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
            conv.bias.copy_(torch.from_numpy(data[f"p/Conv_{i}/bias"]))
        layers += [conv, torch.nn.ReLU()]
        if size >= 2:
            layers.append(torch.nn.AvgPool2d(2))
            size //= 2
    head = torch.nn.Linear(*data["p/Dense_0/kernel"].shape)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(data["p/Dense_0/kernel"].T))
        head.bias.copy_(torch.from_numpy(data["p/Dense_0/bias"]))

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk, self.head = torch.nn.Sequential(*layers), head

        def forward(self, images):  # NHWC in, as the JAX model
            return self.head(self.trunk(images.permute(0, 3, 1, 2)).mean(dim=(2, 3)))

    return CNN()


def losses_of(model, index):
    out = model(x[index])
    if setting == "iwrm":  # one cross-entropy per example
        return torch.nn.functional.cross_entropy(out, targets[index].long(), reduction="none")
    return ((out - targets[index]) ** 2).mean(dim=0)  # one mean squared error per output


def run(way):
    model = build()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr)
    engine = (Engine(model, batch_dim=0 if setting == "iwrm" else None)
              if way == "autogram" else None)
    upgrad, weighting = UPGrad(), UPGradWeighting()
    times, start = [], time.perf_counter()
    for step, index in enumerate(batches):
        optimizer.zero_grad()
        losses = losses_of(model, index)
        if way == "sum":
            (losses.mean() if setting == "iwrm" else losses.sum()).backward()
        elif way == "autojac":
            backward(losses)
            jac_to_grad(params, upgrad)
        else:
            losses.backward(weighting(engine.compute_gramian(losses)))
        optimizer.step()
        if (step + 1) % block == 0:
            now = time.perf_counter()
            times.append(now - start)
            start = now
    return times, [p.detach().numpy().copy() for p in params]


results, arrays = {}, {}
for way in ways:
    results[way], final = run(way)
    arrays.update({f"{way}/{i}": p for i, p in enumerate(final)})
np.savez(path.replace(".npz", "_final.npz"), **arrays)
print(json.dumps(results))
'''


@dataclass
class Bench:
    """One setting: the model, the objectives' kind, the data and the batches."""
    kind: str  # "mlp" or "cnn"
    setting: str  # "mtl" or "iwrm"
    m: int  # objectives
    images: np.ndarray
    targets: np.ndarray
    batches: np.ndarray  # [steps, batch] row indices
    model: object
    init_params: dict

    @property
    def label(self) -> str:
        size = f"m = {self.m}" if self.setting == "mtl" else f"batch {self.m}"
        return f"{self.kind}, {self.setting} ({size})"


@dataclass
class Timing:
    blocks: list[float]
    params: dict

    @property
    def step_ms(self) -> float:
        return 1e3 * statistics.median(self.blocks[1:]) / BLOCK


def make_bench(data: dict, kind: str, setting: str, m: int, steps: int) -> Bench:
    images = data["image"].astype(np.float32)
    if setting == "mtl":
        flat = images.reshape(len(images), -1)
        projection = np.random.default_rng(m).normal(size=(flat.shape[1], m)) / 4.0
        targets, outputs, batch = np.tanh(flat @ projection).astype(np.float32), m, MTL_BATCH
    else:
        targets, outputs, batch = data["label"].astype(np.int32), 10, m
    n = len(images)
    orders = np.concatenate([epoch_indices(SEED, e, n, batch)
                             for e in range(-(-steps // (n // batch)))])
    model = (mlp(images.shape[1:], outputs) if kind == "mlp"
             else cnn(images.shape[1:], outputs, channels=(16, 32)))
    return Bench(kind, setting, m, images, targets, orders[:steps], model,
                 model.init(jax.random.PRNGKey(SEED)))


def objective_for(bench: Bench):
    apply = bench.model.apply
    if bench.setting == "iwrm":
        def objective(params, batch, hparams, key):
            ce = optax.losses.softmax_cross_entropy_with_integer_labels(
                apply(params, batch["image"]), batch["target"])
            return {"ce": objective_lib.per_example(ce)}
    else:
        def objective(params, batch, hparams, key):
            errors = jnp.mean((apply(params, batch["image"]) - batch["target"]) ** 2, axis=0)
            return {f"y{i:02d}": errors[i] for i in range(bench.m)}  # sorted = output order
    return objective


def run_jaxreg(bench: Bench, aggregated: bool, engine: str = "auto") -> Timing:
    optimizer = optax.sgd(LEARNING_RATE)
    # warm-started from the last step's active bounds in multi-task; in IWRM the objectives
    # are other examples at every step, so each step starts cold
    agg = (mo.upgrad(num_objectives=bench.m if bench.setting == "mtl" else None)
           if aggregated else None)
    step = make_step(objective_for(bench), optimizer, aggregator=agg, engine=engine)
    state = init_state(jax.tree.map(jnp.array, bench.init_params), optimizer,
                       key=jax.random.PRNGKey(SEED), aggregator=agg)

    @jax.jit
    def gathered(state, images, targets, index):  # the gather inside, as a scanned pipeline
        return step(state, {"image": images[index], "target": targets[index]})[0]

    images, targets = jnp.asarray(bench.images), jnp.asarray(bench.targets)
    batches = [jnp.asarray(index) for index in bench.batches]
    blocks, start = [], time.perf_counter()
    for i, index in enumerate(batches):
        state = gathered(state, images, targets, index)
        if (i + 1) % BLOCK == 0:
            jax.block_until_ready(state)
            now = time.perf_counter()
            blocks.append(now - start)
            start = now
    return Timing(blocks, jax.device_get(state.params))


def run_torch(bench: Bench, python: str) -> dict[str, Timing]:
    leaves = jax.tree_util.tree_flatten_with_path(bench.init_params)[0]
    named = {"p/" + "/".join(k.key for k in path[1:]): np.asarray(leaf) for path, leaf in leaves}
    arrays = dict(x=bench.images, targets=bench.targets, batches=bench.batches, **named)
    ways = ["sum", "autojac", "autogram"]
    times, final = run_torch_script(python, TORCH_SCRIPT, arrays, cores(), LEARNING_RATE, BLOCK,
                                    bench.kind, bench.setting, ",".join(ways))
    return {f"torch{'' if way == 'sum' else 'jd'} {way}": Timing(
        times[way], _torch_params(bench, [final[f"{way}/{i}"] for i in range(len(leaves))]))
        for way in ways}


def _torch_params(bench: Bench, tensors: list[np.ndarray]) -> dict:
    """torch's parameters (in module order) in the layout of the jaxreg model's."""
    layer_names = (["Dense_0", "Dense_1", "Dense_2"] if bench.kind == "mlp"
                   else ["Conv_0", "Conv_1", "Dense_0"])
    out = {}
    for i, name in enumerate(layer_names):
        weight, bias = tensors[2 * i], tensors[2 * i + 1]
        kernel = weight.T if weight.ndim == 2 else weight.transpose(2, 3, 1, 0)
        out[name] = {"kernel": kernel, "bias": bias}
    return {"params": out}


def report(bench: Bench, timings: dict[str, Timing]) -> None:
    reference = timings["jaxreg upgrad"]
    print(f"\n{bench.label}")
    same = {name: timings["jaxreg sum" if name.endswith("sum") else "jaxreg upgrad"]
            for name in timings}
    print(f"{'way':<20}{'first s':>9}{'ms/step':>10}{'x sum':>8}{'x jaxreg':>10}{'max|dp|':>10}")
    for name, timing in timings.items():
        own_sum = timings["jaxreg sum" if name.startswith("jaxreg") else "torch sum"]
        print(f"{name:<20}{timing.blocks[0]:>9.3f}{timing.step_ms:>10.3f}"
              f"{timing.step_ms / own_sum.step_ms:>8.2f}"
              f"{timing.step_ms / reference.step_ms:>10.2f}"
              f"{max_difference(timing.params, same[name].params):>10.1e}")
    overhead = reference.step_ms / timings["jaxreg sum"].step_ms
    print(f"jaxreg upgrad / jaxreg sum: {overhead:.2f}")
    if "torch sum" not in timings:
        return
    torch_sum, jax_sum = timings["torch sum"].step_ms, timings["jaxreg sum"].step_ms
    if torch_sum > REFUSE_RATIO * jax_sum:
        print(f"REFUSED: torch's summed step ({torch_sum:.2f} ms) is more than {REFUSE_RATIO:g}x "
              f"jaxreg's ({jax_sum:.2f} ms): a loaded machine; the torchjd ratios of this "
              "setting are not reported")
        return
    engines = {n: timings[n].step_ms for n in ("torchjd autojac", "torchjd autogram")}
    fastest = min(engines, key=engines.get)
    ratio = engines[fastest] / reference.step_ms
    target, peer = (5.0, "torchjd autogram") if bench.setting == "iwrm" else (2.0, fastest)
    against = engines[peer] / reference.step_ms
    print(f"faster torchjd engine ({fastest.split()[1]}) / jaxreg upgrad: {ratio:.2f}; target: "
          f"{peer} / jaxreg upgrad >= {target:g}: {against:.2f} "
          f"({'met' if against >= target else 'NOT met'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--mtl", type=int, nargs="*", default=[4, 8, 16],
                        help="numbers m of multi-task objectives")
    parser.add_argument("--iwrm", type=int, nargs="*", default=[32, 64, 128],
                        help="batch sizes of instance-wise risk minimisation")
    parser.add_argument("--steps", type=int, default=100,
                        help=f"steps per way, a multiple of {BLOCK}, at least {2 * BLOCK}")
    parser.add_argument("--torch-python",
                        help="a Python interpreter with torch and torchjd (none: skip torch)")
    args = parser.parse_args()
    if args.steps < 2 * BLOCK or args.steps % BLOCK:
        parser.error(f"--steps must be a multiple of {BLOCK}, at least {2 * BLOCK}")
    data = load_digits("train")
    python = torch_python(args.torch_python)
    print(f"digits train, float32, SGD lr {LEARNING_RATE}, {args.steps} steps per way; "
          f"{cores()} CPU cores, load average {os.getloadavg()[0]:.2f} (other processes skew "
          f"timings); jax {jax.__version__} on {jax.default_backend()}; torch: "
          f"{python or 'not available (give --torch-python)'}")
    settings = [(kind, "mtl", m) for kind in args.models for m in args.mtl]
    settings += [(kind, "iwrm", b) for kind in args.models for b in args.iwrm]
    for kind, setting, m in settings:
        bench = make_bench(data, kind, setting, m, args.steps)
        timings = {"jaxreg sum": run_jaxreg(bench, False),
                   "jaxreg upgrad": run_jaxreg(bench, True),
                   "jaxreg upgrad/jac": run_jaxreg(bench, True, engine="jacobian")}
        if python is not None:
            timings.update(run_torch(bench, python))
        report(bench, timings)


if __name__ == "__main__":
    main()
