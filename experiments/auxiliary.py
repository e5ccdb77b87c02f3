"""A main task with an auxiliary one: sum vs PCGrad vs Bloop vs AuxiNash, on digits.

Main task: classify digits from 10 % of the training labels (stratified, drawn per seed);
cross-entropy on the labelled examples of each batch. Auxiliary tasks (``--aux``), each
weighted by ``lambda`` (``--aux-weights``, swept as one vmapped grid per method):
reconstruct the image from the shared features (squared error, every training example), a
task that helps or is neutral; and weight decay, half the squared parameter norm (Bloop's
ImageNet example), which conflicts with fitting the main task as lambda grows. Model: a shared MLP
trunk (64-128-128) with a classification head and a reconstruction head. Methods, each with
Adam 1e-3: the main loss alone; ``main + lambda aux``; PCGrad on (main, lambda aux); Bloop
on (main, lambda aux) with its own lambda at 1, which is Bloop with lambda (the projection is
linear in the auxiliary gradient; the dynamic barrier is off, as by default); AuxiNash with
a fixed bargaining power (1 for the main task, 0.5 for the auxiliary: the paper learns it by
an implicit hypergradient on validation data, which is not implemented here). AuxiNash's
bargaining solution does not change when one objective is scaled, so lambda barely moves it
(only where one gradient is so much smaller that the solver's ridge on the normalised
Gramian bounds its weight). Metrics: main-task test accuracy and the auxiliary loss on the
test images.

Claim checked (Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an
EMA", 2024, arXiv 2402.02998): Bloop minimises the auxiliary loss among the minimisers of
the main one, so it gives a better main-task result than the sum and than PCGrad. Verdict,
at the largest lambda: last-epoch accuracy higher by more than twice the standard error of
the paired difference over seeds.
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
            "bloop": (mo.bloop(lbda=1.0, num_objectives=2), True),
            "auxinash": (mo.auxinash(preference=(1.0, 0.5), num_objectives=2), True)}


AUX_TASKS = {  # name -> (description, default weights lambda)
    "recon": ("reconstruct the image from the shared features (squared error, every "
              "training example)", (0.1, 1.0, 10.0, 100.0)),
    "weight-decay": ("half the squared norm of all parameters, as in Bloop's ImageNet example",
                     (1e-4, 1e-3, 1e-2, 1e-1)),
}


def run_task(aux_task, weights, seeds, epochs, batch_size, progress) -> dict:
    """Every method with every weight of one auxiliary task; results and the claims."""
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.multitask_mlp(train_set["image"].shape[1:], {"digit": 10, "recon": 64})
    masks = np.stack([labelled_mask(train_set["label"], LABELLED, s) for s in seeds])
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def aux_loss(params, out, images):
        if aux_task == "weight-decay":
            return 0.5 * optax.tree.norm(params, squared=True)
        return jnp.mean((out["recon"] - images.reshape(images.shape[0], -1)) ** 2)

    def terms(params, batch, hparams, use_aux):
        out = model.apply(params, batch["image"])
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(out["digit"], batch["label"])
        weight = batch["labelled"].astype(ce.dtype)
        main_loss = jnp.sum(weight * ce) / jnp.maximum(jnp.sum(weight), 1.0)
        if not use_aux:
            return {"main": main_loss}
        return {"main": main_loss,
                "aux": hparams["aux_weight"] * aux_loss(params, out, batch["image"])}

    def evaluate(state, member):
        out = model.apply(state.params, test_x)
        return {"main_accuracy": jnp.mean(jnp.argmax(out["digit"], -1) == test_y),
                "aux_loss": aux_loss(state.params, out, test_x)}

    results = {}
    for name, (aggregator, use_aux) in methods().items():
        t0 = time.time()
        swept = list(weights) if use_aux else [0.0]
        result = train.grid(
            lambda p, b, h, k, use_aux=use_aux: terms(p, b, h, use_aux), optimizer, model.init,
            {"image": train_set["image"], "label": train_set["label"]},
            hparams={"aux_weight": swept, "learning_rate": [1e-3] * len(swept)}, seeds=seeds,
            epochs=epochs, batch_size=batch_size, evaluate=evaluate,
            seed_data={"labelled": masks}, aggregator=aggregator,
            term_order=ORDER if aggregator is not None else None,
            progress=progress, desc=f"{aux_task}: {name}")
        accuracy, aux = result.history["eval/main_accuracy"], result.history["eval/aux_loss"]
        results[name] = {
            "aux_weights": swept if use_aux else None, "seconds": time.time() - t0,
            "last": accuracy[:, :, -1].tolist(), "best": accuracy.max(-1).tolist(),
            "aux_loss": aux[:, :, -1].tolist()}  # [weights, seeds]
    claims = []
    bloop_last = np.asarray(results["bloop"]["last"][-1])
    for other in ("sum", "pcgrad"):
        diff = bloop_last - np.asarray(results[other]["last"][-1])
        se = diff.std() / np.sqrt(len(diff))
        claims.append(Claim(f"{aux_task}: Bloop beats {other} on the main task "
                            f"(lambda = {weights[-1]:g})",
                            "paired last-epoch accuracy, mean difference > 2 standard errors",
                            bool(diff.mean() > 2 * se),
                            f"bloop - {other} = {100 * diff.mean():+.2f} ± "
                            f"{100 * se:.2f} points"))
    return {"results": results, "claims": claims}


def main(argv=None) -> dict:
    parser = experiment_parser("auxiliary", __doc__, seeds=5, epochs=60, batch_size=64,
                               quick_epochs=2)
    parser.add_argument("--aux", nargs="+", choices=list(AUX_TASKS), default=list(AUX_TASKS),
                        help="auxiliary tasks, run one after the other")
    parser.add_argument("--aux-weights", type=float, nargs="+",
                        help="the auxiliary loss's weights lambda, the claim tested at the "
                             "largest (default: per task, "
                             + "; ".join(f"{k}: {list(v[1])}" for k, v in AUX_TASKS.items())
                             + ")")
    args = parser.parse_args(argv)
    seeds, epochs = run_size(args)
    start, tasks, sections, claims = time.time(), {}, [], []
    for aux_task in args.aux:
        weights = args.aux_weights or AUX_TASKS[aux_task][1]
        run = run_task(aux_task, weights, seeds, epochs, args.batch_size, not args.no_progress)
        tasks[aux_task] = run["results"]
        claims += run["claims"]
        rows = []
        for name, r in run["results"].items():
            for k, lam in enumerate(r["aux_weights"] or ["–"]):
                rows.append([name, lam if isinstance(lam, str) else f"{lam:g}",
                             mean_std(r["last"][k]), mean_std(r["best"][k]),
                             mean_std(r["aux_loss"][k], 1.0, 4)])
        sections += [f"## Auxiliary task: {aux_task}", "",
                     f"Auxiliary loss: {AUX_TASKS[aux_task][0]}; weights {list(weights)}.", "",
                     markdown_table(["method", "lambda", "last acc %", "best acc %",
                                     "test aux loss"], rows), ""]
    text = "\n".join([
        "# Auxiliary learning on digits (10 % labels)", "",
        f"{len(seeds)} seeds, {epochs} epochs (one vmapped grid of weights x seeds per method "
        f"and task), {time.time() - start:.0f} s; main-task test accuracy in %, the auxiliary "
        "loss (unweighted) on the test images, mean ± std over seeds.", "", *sections,
        "## The paper's claim", "", *[c.line() for c in claims],
        *(["", "(--quick run: too short to test the claim.)"] if args.quick else [])])
    payload = {"seeds": seeds, "epochs": epochs, "tasks": tasks,
               "claims": [c.__dict__ for c in claims]}
    write_results(args.out, text, payload)
    return payload
