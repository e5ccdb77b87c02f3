"""Every multi-objective aggregator on a four-task problem built from digits.

Tasks, from one shared MLP trunk (64-128-128) with a linear head each: the digit (10-way
cross-entropy, accuracy), its parity and whether it is greater than 4 (logistic losses,
accuracy), and its value as a regression target (squared error on label / 9, RMSE). The same
objective returns the four named terms; each aggregator receives their gradients, stacked,
from one forward pass (``jaxreg.train.make_step(aggregator=...)``), and Adam applies the
result (M-ConFIG normalises its own output, so SGD follows it, as its authors advise). The
seeds of one aggregator train as one vmapped program. MGDA-UB runs MGDA on the gradients with
respect to the shared features.

Claim checked (the multi-objective papers: UPGrad, ConFIG, Nash-MTL, CAGrad, PCGrad, ...):
aggregating the task gradients beats plain averaging of the losses. The verdict compares each
aggregator's mean relative change over tasks (Delta_m %, Maninis et al. 2019) against
``mean`` with the spread over seeds: an aggregator "helps" when its Delta_m exceeds twice the
standard error of the difference.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import models, multiobjective, train
from jaxreg.protocol.report import (
    Claim,
    experiment_parser,
    markdown_table,
    mean_std,
    run_size,
    write_results,
)

TASKS = {"digit": 10, "parity": 1, "gt4": 1, "value": 1}
HIGHER_IS_BETTER = {"digit": True, "parity": True, "gt4": True, "value": False}
M = len(TASKS)


def aggregators() -> dict:
    """name -> (aggregator, optimizer, representation?) for every aggregator of the library."""
    mo = multiobjective
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1e-3)
    table = {
        "mean": mo.mean(), "random": mo.random_weighting(num_objectives=M),
        "pcgrad": mo.pcgrad(num_objectives=M), "gradvac": mo.gradvac(num_objectives=M),
        "graddrop": mo.graddrop(num_objectives=M), "mgda": mo.mgda(num_objectives=M),
        "cagrad": mo.cagrad(num_objectives=M), "imtl_g": mo.imtl_g(num_objectives=M),
        "aligned_mtl": mo.aligned_mtl(num_objectives=M), "nash_mtl": mo.nash_mtl(num_objectives=M),
        "upgrad": mo.upgrad(num_objectives=M), "dualproj": mo.dualproj(num_objectives=M),
        "config": mo.config(num_objectives=M), "gradnorm": mo.gradnorm(num_objectives=M),
    }
    out = {name: (agg, adam, False) for name, agg in table.items()}
    out["mgda_ub"] = (mo.mgda(num_objectives=M), adam, True)
    out["momentum_config"] = (mo.momentum_config(num_objectives=M), sgd, False)
    return out


def _task_targets(labels):
    labels = np.asarray(labels)
    return {"label": labels.astype(np.int32), "parity": (labels % 2).astype(np.float32),
            "gt4": (labels > 4).astype(np.float32), "value": (labels / 9.0).astype(np.float32)}


def _terms(outputs, batch):
    bce = lambda z, y: jnp.mean(optax.losses.sigmoid_binary_cross_entropy(z[:, 0], y))
    return {
        "digit": jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(
            outputs["digit"], batch["label"])),
        "parity": bce(outputs["parity"], batch["parity"]),
        "gt4": bce(outputs["gt4"], batch["gt4"]),
        "value": jnp.mean((outputs["value"][:, 0] - batch["value"]) ** 2),
    }


def _metrics(outputs, targets):
    return {
        "digit": jnp.mean(jnp.argmax(outputs["digit"], -1) == targets["label"]),
        "parity": jnp.mean((outputs["parity"][:, 0] > 0) == (targets["parity"] > 0.5)),
        "gt4": jnp.mean((outputs["gt4"][:, 0] > 0) == (targets["gt4"] > 0.5)),
        "value": jnp.sqrt(jnp.mean((outputs["value"][:, 0] - targets["value"]) ** 2)),
    }


def run_aggregator(name, aggregator, optimizer, on_features, *, model, train_set, test_set,
                   seeds, epochs, batch_size, progress=True):
    def objective(params, batch, hparams, key, *, representation=None):
        features = model.encode(params, batch["image"]) if representation is None \
            else representation
        return _terms(model.heads(params, features), batch)

    test_x = jnp.asarray(test_set["image"])
    test_targets = {k: jnp.asarray(v) for k, v in _task_targets(test_set["label"]).items()}

    def evaluate(state, member):
        return _metrics(model.apply(state.params, test_x), test_targets)

    return train.grid(objective, optimizer, model.init,
                      {"image": train_set["image"], **_task_targets(train_set["label"])},
                      hparams={"learning_rate": [1e-3]}, seeds=seeds, epochs=epochs,
                      batch_size=batch_size, evaluate=evaluate, aggregator=aggregator,
                      representation=(lambda p, b: model.encode(p, b["image"]))
                      if on_features else None, progress=progress, desc=name)


def delta_m(metrics: dict, baseline: dict) -> np.ndarray:
    """Per seed: mean over tasks of the relative change vs the baseline, in %, sign-adjusted
    so that positive is better (Maninis et al. 2019)."""
    changes = []
    for task, higher in HIGHER_IS_BETTER.items():
        rel = (np.asarray(metrics[task]) - np.asarray(baseline[task])) / np.asarray(baseline[task])
        changes.append(rel if higher else -rel)
    return 100 * np.mean(changes, axis=0)


def main(argv=None) -> dict:
    parser = experiment_parser("multitask", __doc__, seeds=3, epochs=30, batch_size=64,
                               quick_epochs=2, quick="3 aggregators, ")
    parser.add_argument("--only", nargs="*", help="run only these aggregators")
    args = parser.parse_args(argv)
    table = aggregators()
    seeds, epochs = run_size(args)
    names = args.only or (["mean", "upgrad", "mgda_ub"] if args.quick else list(table))
    unknown = set(names) - set(table)
    if unknown:
        raise SystemExit(f"unknown aggregator(s) {sorted(unknown)}; available: {', '.join(table)}")
    if "mean" not in names:
        names = ["mean", *names]  # the baseline every verdict compares with
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.multitask_mlp(train_set["image"].shape[1:], TASKS)
    results, start = {}, time.time()
    for name in names:
        aggregator, optimizer, on_features = table[name]
        t0 = time.time()
        result = run_aggregator(name, aggregator, optimizer, on_features, model=model,
                                train_set=train_set, test_set=test_set, seeds=seeds,
                                epochs=epochs, batch_size=args.batch_size,
                                progress=not args.no_progress)
        results[name] = {"last": {t: result.history[f"eval/{t}"][0, :, -1].tolist()
                                  for t in TASKS},
                         "seconds": time.time() - t0}
    base = results["mean"]["last"]
    verdicts, rows = [], []
    for name, r in results.items():
        dm = delta_m(r["last"], base)
        r["delta_m"] = dm.tolist()
        se = float(np.std(dm) / np.sqrt(len(dm))) if len(dm) > 1 else float("nan")
        helps = name != "mean" and float(np.mean(dm)) > 2 * se
        r["helps"] = helps
        rows.append([name, *[mean_std(r["last"][t], scale=100 if t != "value" else 1,
                                      digits=1 if t != "value" else 3) for t in TASKS],
                     f"{np.mean(dm):+.2f} ± {np.std(dm):.2f}", "yes" if helps else "no",
                     f"{r['seconds']:.0f}"])
    helped = [n for n, r in results.items() if r["helps"]]
    verdicts.append(Claim(
        "aggregating the task gradients beats averaging the losses",
        "Delta_m vs mean > 2 standard errors over seeds, for at least one aggregator",
        bool(helped), f"helps: {', '.join(helped) or 'none'} of {len(results) - 1}"))
    header = ["aggregator", "digit acc %", "parity acc %", "gt4 acc %", "value RMSE",
              "Δm % vs mean", "helps", "s"]
    text = "\n".join([
        "# Multi-task digits: every aggregator", "",
        f"{len(seeds)} seeds (vmapped) x {len(results)} aggregators, {epochs} epochs, "
        f"{time.time() - start:.0f} s; last-epoch test metrics, mean ± std over seeds; "
        "Δm: mean relative change over tasks vs `mean`, positive is better.", "",
        markdown_table(header, rows), "", "## The papers' claim", "",
        *[c.line() for c in verdicts],
        *(["", "(--quick run: too short to test the claim.)"] if args.quick else [])])
    payload = {"seeds": seeds, "epochs": epochs, "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(args.out, text, payload)
    return payload
