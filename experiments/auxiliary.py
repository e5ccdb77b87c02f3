"""A main task with an auxiliary one: sum vs PCGrad vs Bloop vs AuxiNash, on digits.

Main task: classify digits from 10 % of the training labels (``data.labelled_fraction``,
stratified, drawn per seed); cross-entropy on the labelled examples of each batch.
Auxiliary tasks (``aux.tasks``), each weighted by ``lambda`` (``aux.recon_weights``,
``aux.weight_decay_weights``, swept as one vmapped grid per method): reconstruct the image
from the shared features (squared error, every training example), a task that helps or is
neutral; and weight decay, half the squared parameter norm (Bloop's ImageNet example), which
conflicts with fitting the main task as lambda grows. Model: a shared MLP trunk (64-128-128,
``model.hidden``) with a classification head and a reconstruction head. Methods
(``methods.names``), each with Adam 1e-3: the main loss alone; ``main + lambda aux``; PCGrad
on (main, lambda aux); Bloop on (main, lambda aux) with its own lambda at 1
(``methods.bloop_lambda``), which is Bloop with lambda (the projection is linear in the
auxiliary gradient; the dynamic barrier is off, as by default); AuxiNash with a fixed
bargaining power (``methods.auxinash_preference``: 1 for the main task, 0.5 for the
auxiliary: the paper learns it by an implicit hypergradient on validation data, which is not
implemented here). AuxiNash's bargaining solution does not change when one objective is
scaled, so lambda barely moves it (only where one gradient is so much smaller that the
solver's ridge on the normalised Gramian bounds its weight). Metrics: main-task test
accuracy and the auxiliary loss on the test images.

Claim checked (Hsieh et al., "Careful with that Scalpel: Improving Gradient Surgery with an
EMA", 2024, arXiv 2402.02998): Bloop minimises the auxiliary loss among the minimisers of
the main one, so it gives a better main-task result than the sum and than PCGrad. Verdict,
at the largest lambda: last-epoch accuracy higher by more than twice the standard error of
the paired difference over seeds.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set aux.tasks=weight-decay --set aux.weight_decay_weights=0.01,1``). Variant:

- ``default``: the protocol above: digits' 1437 / 360 split, 10 % labels, trunk 128-128,
  Adam 1e-3, 60 epochs, batch 64, seeds 0-4, both auxiliary tasks at lambda in
  (0.1, 1, 10, 100) for reconstruction and (1e-4, 1e-3, 1e-2, 1e-1) for weight decay.

``--quick``: two seeds, two epochs.
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

ORDER = ("main", "aux")  # Bloop's and AuxiNash's first objective is the main one
METHODS = ("main only", "sum", "pcgrad", "bloop", "auxinash")
VARIANTS = ("default",)
AUX_TASKS = {  # name -> description
    "recon": "reconstruct the image from the shared features (squared error, every "
             "training example)",
    "weight-decay": "half the squared norm of all parameters, as in Bloop's ImageNet example",
}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run auxiliary`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown auxiliary variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    # the digits builder's 1437 / 360 split; this fraction of each class keeps its label
    # (drawn per seed)
    config.data = dict(labelled_fraction=0.1)
    config.model = dict(hidden=(128, 128))  # the shared trunk; heads: 10 logits, 64 pixels
    config.optimizer = dict(learning_rate=1e-3)  # Adam
    config.train = dict(epochs=60, batch_size=64, seeds=(0, 1, 2, 3, 4))
    # the auxiliary tasks, run one after the other, each with its weights lambda (the claim
    # is tested at the largest)
    config.aux = dict(tasks=tuple(AUX_TASKS), recon_weights=(0.1, 1.0, 10.0, 100.0),
                      weight_decay_weights=(1e-4, 1e-3, 1e-2, 1e-1))
    config.methods = dict(names=METHODS, bloop_lambda=1.0, bloop_ema=0.1,
                          auxinash_preference=(1.0, 0.5))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs: checks the pipeline, not the claim."""
    return config_lib.replace(config, {"train.epochs": 2, "train.seeds": (0, 1)})


def aux_weights(config, aux_task: str) -> tuple[float, ...]:
    """The weights lambda of ``aux_task`` (``aux.recon_weights``, ...)."""
    return tuple(config.aux[aux_task.replace("-", "_") + "_weights"])


def labelled_mask(labels, fraction, seed) -> np.ndarray:
    """``fraction`` of each class, chosen at random with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        mask[rng.choice(members, max(1, int(round(fraction * len(members)))), replace=False)] = True
    return mask


def methods(config=None) -> dict:
    """name -> (aggregator or None, uses the auxiliary loss), for the config's
    ``methods.names`` (all of them without a config)."""
    m = (config or get_config()).methods
    mo = multiobjective
    table = {"main only": (None, False), "sum": (None, True),
             "pcgrad": (mo.pcgrad(num_objectives=2), True),
             "bloop": (mo.bloop(lbda=m.bloop_lambda, ema=m.bloop_ema, num_objectives=2), True),
             "auxinash": (mo.auxinash(preference=tuple(m.auxinash_preference),
                                      num_objectives=2), True)}
    unknown = [name for name in m.names if name not in table]
    if unknown:
        raise ValueError(f"methods.names: unknown {unknown}; methods: {', '.join(table)}")
    return {name: table[name] for name in m.names}


def run_task(config, aux_task, progress) -> dict:
    """Every method with every weight of one auxiliary task; results and the claims."""
    weights = aux_weights(config, aux_task)
    seeds = list(config.train.seeds)
    learning_rate = config.optimizer.learning_rate
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.multitask_mlp(train_set["image"].shape[1:], {"digit": 10, "recon": 64},
                                 hidden=tuple(config.model.hidden))
    masks = np.stack([labelled_mask(train_set["label"], config.data.labelled_fraction, s)
                      for s in seeds])
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)

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
    for name, (aggregator, use_aux) in methods(config).items():
        t0 = time.time()
        swept = list(weights) if use_aux else [0.0]
        result = train.grid(
            lambda p, b, h, k, use_aux=use_aux: terms(p, b, h, use_aux), optimizer, model.init,
            {"image": train_set["image"], "label": train_set["label"]},
            hparams={"aux_weight": swept, "learning_rate": [learning_rate] * len(swept)},
            **config_lib.grid_schedule(config.train), evaluate=evaluate,
            seed_data={"labelled": masks}, aggregator=aggregator,
            term_order=ORDER if aggregator is not None else None,
            progress=progress, desc=f"{aux_task}: {name}")
        accuracy = result.history["eval/main_accuracy"]
        results[name] = {
            "aux_weights": swept if use_aux else None, "seconds": time.time() - t0,
            "last": result.last("eval/main_accuracy").tolist(),
            "best": accuracy.max(-1).tolist(),
            "aux_loss": result.last("eval/aux_loss").tolist()}  # [weights, seeds]
    claims = []
    if "bloop" not in results:
        return {"results": results, "claims": claims}
    bloop_last = np.asarray(results["bloop"]["last"][-1])
    for other in [m for m in ("sum", "pcgrad") if m in results]:
        diff = bloop_last - np.asarray(results[other]["last"][-1])
        se = diff.std() / np.sqrt(len(diff))
        claims.append(Claim(f"{aux_task}: Bloop beats {other} on the main task "
                            f"(lambda = {weights[-1]:g})",
                            "paired last-epoch accuracy, mean difference > 2 standard errors",
                            bool(diff.mean() > 2 * se),
                            f"bloop - {other} = {100 * diff.mean():+.2f} ± "
                            f"{100 * se:.2f} points"))
    return {"results": results, "claims": claims}


def run(config, out_dir: str, progress: bool) -> dict:
    unknown = [task for task in config.aux.tasks if task not in AUX_TASKS]
    if unknown:
        raise ValueError(f"aux.tasks: unknown {unknown}; tasks: {', '.join(AUX_TASKS)}")
    seeds, epochs = list(config.train.seeds), config.train.epochs
    start, tasks, sections, claims = time.time(), {}, [], []
    for aux_task in config.aux.tasks:
        weights = aux_weights(config, aux_task)
        result = run_task(config, aux_task, progress)
        tasks[aux_task] = result["results"]
        claims += result["claims"]
        rows = []
        for name, r in result["results"].items():
            for k, lam in enumerate(r["aux_weights"] or ["–"]):
                rows.append([name, lam if isinstance(lam, str) else f"{lam:g}",
                             mean_std(r["last"][k]), mean_std(r["best"][k]),
                             mean_std(r["aux_loss"][k], 1.0, 4)])
        sections += [f"## Auxiliary task: {aux_task}", "",
                     f"Auxiliary loss: {AUX_TASKS[aux_task]}; weights {list(weights)}.", "",
                     markdown_table(["method", "lambda", "last acc %", "best acc %",
                                     "test aux loss"], rows), ""]
    hidden = "-".join(str(h) for h in config.model.hidden)
    text = "\n".join([
        f"# Auxiliary learning on digits ({100 * config.data.labelled_fraction:g} % labels)", "",
        f"Variant `{config.variant}`: trunk 64-{hidden}, Adam "
        f"{config.optimizer.learning_rate:g}, batch {config.train.batch_size}; "
        f"{len(seeds)} seeds, {epochs} epochs (one vmapped grid of weights x seeds per method "
        f"and task), {time.time() - start:.0f} s; main-task test accuracy in %, the auxiliary "
        "loss (unweighted) on the test images, mean ± std over seeds. The whole protocol is "
        "`config.json` beside this file.", "", *sections,
        "## The paper's claim", "", *[c.line() for c in claims]])
    payload = {"config": config.to_dict(), "tasks": tasks,
               "claims": [c.__dict__ for c in claims]}
    write_results(out_dir, text, payload)
    return payload
