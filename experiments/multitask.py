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

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set aggregators.names=upgrad,cagrad --set aggregators.options.cagrad.c=0.4``). Variant:

- ``default``: the protocol above: every aggregator (``aggregators.names``; ``mean``, the
  baseline, is always run), trunk 128-128, Adam 1e-3 (SGD 1e-3 for the aggregators in
  ``aggregators.sgd``: M-ConFIG), batch 64, 30 epochs, seeds 0-2; the aggregators'
  hyperparameters (``aggregators.options``) at the library's defaults.

``--quick``: two seeds, two epochs, and three aggregators (mean, upgrad, mgda_ub) when all
are asked for.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import models, multiobjective, train
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

TASKS = {"digit": 10, "parity": 1, "gt4": 1, "value": 1}
HIGHER_IS_BETTER = {"digit": True, "parity": True, "gt4": True, "value": False}
M = len(TASKS)
# name -> the library's constructor (mgda_ub: MGDA on the gradients w.r.t. the features)
AGGREGATORS = {
    "mean": "mean", "random": "random_weighting", "pcgrad": "pcgrad", "gradvac": "gradvac",
    "graddrop": "graddrop", "mgda": "mgda", "cagrad": "cagrad", "imtl_g": "imtl_g",
    "aligned_mtl": "aligned_mtl", "nash_mtl": "nash_mtl", "upgrad": "upgrad",
    "dualproj": "dualproj", "config": "config", "gradnorm": "gradnorm", "mgda_ub": "mgda",
    "momentum_config": "momentum_config"}
QUICK_AGGREGATORS = ("mean", "upgrad", "mgda_ub")
VARIANTS = ("default",)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run multitask`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown multitask variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.model = dict(hidden=(128, 128))  # the shared trunk on the digits' 1437 / 360 split
    # Adam, or SGD for the aggregators in aggregators.sgd
    config.optimizer = dict(learning_rate=1e-3)
    config.train = dict(epochs=30, batch_size=64, seeds=(0, 1, 2))
    # names: the aggregators run (mean, the baseline, is added when missing); sgd: those
    # followed by SGD (M-ConFIG normalises its own output); options: constructor keyword
    # arguments, by aggregator (mgda_ub takes mgda's)
    config.aggregators = dict(
        names=tuple(AGGREGATORS), sgd=("momentum_config",),
        options=dict(gradvac=dict(beta=0.5), graddrop=dict(leak=0.0),
                     mgda=dict(epsilon=1e-3, max_iters=100), cagrad=dict(c=0.5, rescale=0),
                     aligned_mtl=dict(scale_mode="min"),
                     nash_mtl=dict(max_norm=1.0, iterations=20), gradnorm=dict(alpha=1.5),
                     momentum_config=dict(beta1=0.9, beta2=0.999)))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs, and three aggregators where all are asked for."""
    fields = {"train.epochs": 2, "train.seeds": (0, 1)}
    if tuple(config.aggregators.names) == tuple(AGGREGATORS):
        fields["aggregators.names"] = QUICK_AGGREGATORS
    return config_lib.replace(config, fields)


def aggregators(config=None, names=None) -> dict:
    """name -> (aggregator, optimizer, representation?) for ``names`` (default: the config's
    ``aggregators.names``; without a config, every aggregator of the library)."""
    config = config or get_config()
    a = config.aggregators
    names = tuple(a.names if names is None else names)
    unknown = [name for name in names if name not in AGGREGATORS]
    if unknown:
        raise ValueError(f"aggregators.names: unknown {unknown}; available: "
                         + ", ".join(AGGREGATORS))
    learning_rate = config.optimizer.learning_rate
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)
    out = {}
    for name in names:
        constructor = AGGREGATORS[name]
        options = dict(a.options.get(constructor, {}))
        if constructor != "mean":  # mean keeps no state of weights to size
            options["num_objectives"] = M
        aggregator = getattr(multiobjective, constructor)(**options)
        out[name] = (aggregator, sgd if name in a.sgd else adam, name == "mgda_ub")
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
                   seeds, epochs, batch_size, learning_rate, progress=True):
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
                      hparams={"learning_rate": [learning_rate]}, seeds=seeds, epochs=epochs,
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


def run(config, out_dir: str, progress: bool) -> dict:
    seeds, epochs = list(config.train.seeds), config.train.epochs
    names = tuple(config.aggregators.names)
    if "mean" not in names:
        names = ("mean", *names)  # the baseline every verdict compares with
    table = aggregators(config, names)
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.multitask_mlp(train_set["image"].shape[1:], TASKS,
                                 hidden=tuple(config.model.hidden))
    results, start = {}, time.time()
    for name, (aggregator, optimizer, on_features) in table.items():
        t0 = time.time()
        result = run_aggregator(name, aggregator, optimizer, on_features, model=model,
                                train_set=train_set, test_set=test_set, seeds=seeds,
                                epochs=epochs, batch_size=config.train.batch_size,
                                learning_rate=config.optimizer.learning_rate,
                                progress=progress)
        results[name] = {"last": {t: result.last(f"eval/{t}")[0].tolist()
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
        f"Variant `{config.variant}`: trunk 64-{'-'.join(map(str, config.model.hidden))}, "
        f"learning rate {config.optimizer.learning_rate:g}, batch {config.train.batch_size}; "
        f"{len(seeds)} seeds (vmapped) x {len(results)} aggregators, {epochs} epochs, "
        f"{time.time() - start:.0f} s; last-epoch test metrics, mean ± std over seeds; "
        "Δm: mean relative change over tasks vs `mean`, positive is better. The whole "
        "protocol is `config.json` beside this file.", "",
        markdown_table(header, rows), "", "## The papers' claim", "",
        *[c.line() for c in verdicts]])
    payload = {"config": config.to_dict(), "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    return payload
