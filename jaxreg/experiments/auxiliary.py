"""A main task with an auxiliary one: sum vs PCGrad vs Bloop vs AuxiNash, on digits.

Main task: classify digits from 10 % of the training labels (stratified, drawn per seed);
cross-entropy on the labelled examples of each batch. Auxiliary task: reconstruct the image
from the shared features (squared error), on every training example. Model: a shared MLP
trunk (64-128-128) with a classification head and a reconstruction head. Methods, each with
Adam 1e-3 and seeds vmapped: the main loss alone; the sum of both; PCGrad; Bloop (EMA of the
main gradient, lambda 0.1, the paper's default); AuxiNash with a fixed bargaining power
(1 for the main task, 0.5 for the auxiliary: the paper learns it by an implicit hypergradient
on validation data, which is not implemented here). Metric: main-task test accuracy.

Claim checked (Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an
EMA", 2024, arXiv 2402.02998): Bloop gives a better main-task result than adding the
auxiliary loss and than PCGrad. Verdict: last-epoch accuracy higher by more than twice the
standard error of the paired difference over seeds.
"""

from __future__ import annotations

import argparse
import os
import time

import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import models, multiobjective, train
from jaxreg.experiments.report import Claim, markdown_table, mean_std, write_results

LABELLED = 0.1
ORDER = ("main", "aux")  # Bloop's and AuxiNash's first objective is the main one


def labelled_mask(labels, fraction, seed) -> np.ndarray:
    """``fraction`` of each class, chosen at random with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False)] = True
    return mask


def methods() -> dict:
    """name -> (aggregator or None, uses the auxiliary loss)."""
    mo = multiobjective
    return {"main only": (None, False), "sum": (None, True),
            "pcgrad": (mo.pcgrad(num_objectives=2), True),
            "bloop": (mo.bloop(num_objectives=2), True),
            "auxinash": (mo.auxinash(preference=(1.0, 0.5), num_objectives=2), True)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="jaxreg run auxiliary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=os.path.join("runs", "auxiliary"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    seeds, epochs = list(range(args.seeds)), args.epochs
    if args.quick:
        seeds, epochs = [0, 1], 2
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.multitask_mlp(train_set["image"].shape[1:], {"digit": 10, "recon": 64})
    masks = np.stack([labelled_mask(train_set["label"], LABELLED, s) for s in seeds])
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def terms(params, batch, use_aux):
        out = model.apply(params, batch["image"])
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(out["digit"], batch["label"])
        weight = batch["labelled"].astype(ce.dtype)
        main_loss = jnp.sum(weight * ce) / jnp.maximum(jnp.sum(weight), 1.0)
        if not use_aux:
            return {"main": main_loss}
        flat = batch["image"].reshape(batch["image"].shape[0], -1)
        return {"main": main_loss, "aux": jnp.mean((out["recon"] - flat) ** 2)}

    def evaluate(state, member):
        pred = jnp.argmax(model.apply(state.params, test_x)["digit"], -1)
        return {"main_accuracy": jnp.mean(pred == test_y)}

    results, start = {}, time.time()
    for name, (aggregator, use_aux) in methods().items():
        t0 = time.time()
        result = train.grid(
            lambda p, b, h, k, use_aux=use_aux: terms(p, b, use_aux), optimizer, model.init,
            {"image": train_set["image"], "label": train_set["label"]},
            hparams={"learning_rate": [1e-3]}, seeds=seeds, epochs=epochs,
            batch_size=args.batch_size, evaluate=evaluate, seed_data={"labelled": masks},
            aggregator=aggregator, term_order=ORDER if aggregator is not None else None,
            progress=not args.no_progress, desc=name)
        curve = result.history["eval/main_accuracy"][0]
        results[name] = {"last": curve[:, -1].tolist(), "best": curve.max(-1).tolist(),
                         "seconds": time.time() - t0}
    verdicts = []
    for other in ("sum", "pcgrad"):
        diff = np.asarray(results["bloop"]["last"]) - np.asarray(results[other]["last"])
        se = diff.std() / np.sqrt(len(diff))
        verdicts.append(Claim(f"Bloop beats {other} on the main task",
                              "paired last-epoch accuracy, mean difference > 2 standard errors",
                              bool(diff.mean() > 2 * se),
                              f"bloop - {other} = {100 * diff.mean():+.2f} ± "
                              f"{100 * se:.2f} points"))
    rows = [[n, mean_std(r["last"]), mean_std(r["best"]), f"{r['seconds']:.0f}"]
            for n, r in results.items()]
    text = "\n".join([
        "# Auxiliary learning on digits (10 % labels + reconstruction)", "",
        f"{len(seeds)} seeds (vmapped), {epochs} epochs, {time.time() - start:.0f} s; main-task "
        "test accuracy in %, mean ± std over seeds.", "",
        markdown_table(["method", "last acc %", "best acc %", "s"], rows), "",
        "## The paper's claim", "", *[c.line() for c in verdicts],
        *(["", "(--quick run: too short to test the claim.)"] if args.quick else [])])
    payload = {"seeds": seeds, "epochs": epochs, "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(args.out, text, payload)
    return payload
