"""Instance-wise risk minimisation (IWRM): each example's loss is an objective.

Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024, arXiv:2406.16232),
Section 5: instead of minimising the average loss (empirical risk minimisation, ERM, trained
by SGD), treat the loss of every training example as its own objective, and at each step
aggregate the Jacobian of the batch's per-example losses (stochastic sub-Jacobian descent).
Here the objective returns one term, ``jaxreg.objective.per_example(cross-entropy)``: a
multi-objective step (``jaxreg.train.make_step(aggregator=...)``, its default engine) then
aggregates B = 32 gradients per step. Methods (``methods.names``): ``mean`` (the average of
the per-example gradients: exactly the gradient of the batch's mean loss, i.e. ERM by SGD,
the baseline), ``upgrad``, ``dualproj`` and ``mgda``, each followed by plain SGD at the same
learning rate. The aggregators are not warm-started (``num_objectives`` is left unset):
objective b is a different example at every step. Every method trains its learning rates x
seeds as one vmapped program (``jaxreg.train.grid``); seeds fix the initial weights and the
batch order, so the methods are compared on paired runs.

Claim checked, as this project states it (the paper's IWRM figures compare the training loss
of SSJD with UPGrad against SGD; the paper itself could not be consulted offline): UPGrad on
per-example losses reaches a lower training cross-entropy than ERM after the same number of
steps, at the same learning rate. Verdict, at each learning rate: the cross-entropy of the
whole training set after the last epoch, ERM minus UPGrad, paired over seeds, has a mean
above twice its standard error (sample std / sqrt(seeds)). UPGrad's update is not the mean
gradient's length (its projections add the components on which the examples conflict), so
an equal learning rate is not an equal step: the report measures the update's length
relative to the mean gradient on fixed training batches, and gives a second verdict with
each method at its best learning rate of the sweep. Test accuracy is reported, not judged.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set optimizer.learning_rates=0.05 --set methods.names=upgrad``). Variant:

- ``default``: scikit-learn's digits (the 1437 / 360 split; ``data.train_size`` > 0 splits
  the 1797 digits anew), an MLP 64-64-64-10 (``model.hidden``), plain SGD at learning rates
  0.01, 0.03, 0.1, 0.3 and 1, batch 32, 20 epochs (880 steps), seeds 0-9; MGDA's solver at
  its defaults (``methods.options``). About 1.5 minutes on 2 CPU cores. (A first full run
  swept 0.01-0.3 with seeds 0-4: both methods did best at 0.3, the sweep's edge, so the
  sweep was extended to 1 and, the run being short, the seeds to ten.)

``--quick``: two seeds, two epochs, learning rates 0.03 and 0.1, and only ERM and UPGrad
when all methods are asked for.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import models, multiobjective, train
from jaxreg.objective import per_example
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

NUM_CLASSES = 10
METHODS = {"mean": "mean", "upgrad": "upgrad", "dualproj": "dualproj", "mgda": "mgda"}
LABELS = {"mean": "ERM (mean)", "upgrad": "UPGrad", "dualproj": "DualProj", "mgda": "MGDA"}
QUICK_METHODS = ("mean", "upgrad")
VARIANTS = ("default",)
BEATS_SE = 2.0  # the verdict's threshold, in standard errors of the paired difference
PROBE_BATCHES = 4  # fixed training batches on which the update's length is measured


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run iwrm`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown iwrm variant {variant!r}; variants: " + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    # train_size 0: the digits builder's 1437 / 360 split; else a stratified resplit
    config.data = dict(train_size=0, split_seed=0)
    config.model = dict(hidden=(64, 64))
    # plain SGD; every method trains at each of these learning rates (one vmapped grid)
    config.optimizer = dict(learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0))
    config.train = dict(epochs=20, batch_size=32, seeds=tuple(range(10)))
    # names: the methods run (mean, the ERM baseline, is added when missing); options:
    # constructor keyword arguments, by method
    config.methods = dict(names=tuple(METHODS), options=dict(mgda=dict(epsilon=1e-3,
                                                                         max_iters=100)))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs, two learning rates, and ERM and UPGrad where all methods are
    asked for."""
    fields = {"train.epochs": 2, "train.seeds": (0, 1), "optimizer.learning_rates": (0.03, 0.1)}
    if tuple(config.methods.names) == tuple(METHODS):
        fields["methods.names"] = QUICK_METHODS
    return config_lib.replace(config, fields)


def methods(config) -> dict:
    """name -> aggregator, for the config's ``methods.names`` (with ``mean`` first)."""
    names = tuple(config.methods.names)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"methods.names: unknown {unknown}; available: " + ", ".join(METHODS))
    names = ("mean", *[n for n in names if n != "mean"])
    return {n: getattr(multiobjective, METHODS[n])(**dict(config.methods.options.get(n, {})))
            for n in names}


def run_method(name, aggregator, *, model, train_set, test_set, learning_rates, schedule,
               progress=True):
    """One method's learning rates x seeds as one vmapped program. After each epoch: the
    cross-entropy and accuracy on the whole training set, the test accuracy, and the length
    of the method's update relative to the mean gradient on fixed training batches."""
    def losses(params, batch):
        logits = model.apply(params, batch["image"])
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    def objective(params, batch, hparams, key):
        return {"ce": per_example(losses(params, batch))}

    train_x, train_y = jnp.asarray(train_set["image"]), jnp.asarray(train_set["label"])
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    batch_size = schedule["batch_size"]
    count = min(PROBE_BATCHES, len(train_y) // batch_size)
    probes = {"image": train_x[:count * batch_size].reshape(count, batch_size,
                                                            *train_x.shape[1:]),
              "label": train_y[:count * batch_size].reshape(count, batch_size)}

    def step_length(params, batch):
        """||the method's aggregate|| / ||the mean gradient|| for one batch."""
        jacobian = jax.jacrev(losses)(params, batch)
        update, _ = aggregator.update(jacobian, aggregator.init(params), params,
                                      values=losses(params, batch))
        mean = jax.tree.map(lambda j: j.mean(0), jacobian)
        return optax.tree.norm(update) / jnp.maximum(optax.tree.norm(mean), 1e-30)

    def evaluate(state, member):
        logits = model.apply(state.params, train_x)
        return {"train_ce": jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(
                    logits, train_y)),
                "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == train_y),
                "test_accuracy": jnp.mean(jnp.argmax(model.apply(state.params, test_x), -1)
                                          == test_y),
                "step_length": jnp.mean(jax.lax.map(
                    lambda b: step_length(state.params, b), probes))}

    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rates[0])
    return train.grid(objective, optimizer, model.init,
                      {"image": train_set["image"], "label": train_set["label"]},
                      hparams={"learning_rate": list(learning_rates)}, **schedule,
                      evaluate=evaluate, aggregator=aggregator, progress=progress, desc=name)


def standard_error(values) -> float:
    """Sample standard deviation / sqrt(n) (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def _paired(erm, upgrad) -> tuple[float, float, float, bool]:
    """Mean and standard error of ``erm - upgrad`` over seeds, the mean in standard errors,
    and whether it exceeds ``BEATS_SE`` of them."""
    diff = np.asarray(erm) - np.asarray(upgrad)
    mean, se = float(diff.mean()), standard_error(diff)
    ratio = mean / se if se > 0 else float("nan")
    return mean, se, ratio, bool(se > 0 and mean > BEATS_SE * se)


def claims(results: dict, learning_rates) -> list[Claim]:
    """At each learning rate, and at each method's best learning rate of the sweep: does
    UPGrad end with a lower training cross-entropy than ERM, by more than ``BEATS_SE``
    standard errors of the paired difference over seeds?"""
    if "upgrad" not in results:
        return []
    erm, upgrad = (np.asarray(results[n]["train_ce"]) for n in ("mean", "upgrad"))  # [K, S]
    test = (f"last-epoch cross-entropy on the whole training set, ERM minus UPGrad, paired "
            f"over seeds: mean > {BEATS_SE:g} standard errors")
    out = []
    for k, lr in enumerate(learning_rates):
        mean, se, ratio, agrees = _paired(erm[k], upgrad[k])
        out.append(Claim(
            f"UPGrad on per-example losses reaches a lower training cross-entropy than ERM "
            f"after the same number of steps (learning rate {lr:g})", test, agrees,
            f"ERM {erm[k].mean():.4f}, UPGrad {upgrad[k].mean():.4f}; difference "
            f"{mean:+.4f}, SE {se:.4f}, {ratio:+.1f} SE"))
    if len(learning_rates) > 1:
        ke, ku = int(np.argmin(erm.mean(1))), int(np.argmin(upgrad.mean(1)))
        mean, se, ratio, agrees = _paired(erm[ke], upgrad[ku])
        edge = lambda k: " (the sweep's edge)" if k in (0, len(learning_rates) - 1) else ""
        out.append(Claim(
            "UPGrad on per-example losses reaches a lower training cross-entropy than ERM "
            "after the same number of steps, each at its best learning rate of the sweep "
            "(their updates differ in length, so equal learning rates are not equal steps)",
            test, agrees,
            f"ERM {erm[ke].mean():.4f} at {learning_rates[ke]:g}{edge(ke)}, UPGrad "
            f"{upgrad[ku].mean():.4f} at {learning_rates[ku]:g}{edge(ku)}; difference "
            f"{mean:+.4f}, SE {se:.4f}, {ratio:+.1f} SE"))
    return out


def _plot(results, learning_rates, steps_per_epoch, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(learning_rates))
    rows = -(-len(learning_rates) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False,
                             sharey=True)
    for k, (ax, lr) in enumerate(zip(axes.flat, learning_rates)):
        for name, r in results.items():
            curves = np.asarray(r["train_ce_curve"][k])  # [seeds, epochs]
            x = steps_per_epoch * np.arange(1, curves.shape[-1] + 1)
            (line,) = ax.plot(x, curves.mean(0), label=LABELS[name], lw=1.5,
                              color="black" if name == "mean" else None)
            ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.15,
                            color=line.get_color(), lw=0)
        ax.set_yscale("log")
        ax.set_title(f"SGD, learning rate {lr:g}: mean, min-max over seeds", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel("training cross-entropy (whole set)")
    for ax in list(axes.flat)[len(learning_rates):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    schedule = config_lib.grid_schedule(config.train)
    seeds, learning_rates = schedule["seeds"], [float(x) for x in config.optimizer.learning_rates]
    if not learning_rates:
        raise ValueError("optimizer.learning_rates is empty: give at least one")
    table = methods(config)
    train_set, test_set = data_lib.load_digits_splits(train_size=config.data.train_size,
                                                      seed=config.data.split_seed)
    model = models.mlp(train_set["image"].shape[1:], NUM_CLASSES,
                       hidden=tuple(config.model.hidden))
    steps_per_epoch = data_lib.num_batches(len(train_set["label"]), schedule["batch_size"])
    results, start = {}, time.time()
    for name, aggregator in table.items():
        t0 = time.time()
        result = run_method(name, aggregator, model=model, train_set=train_set,
                            test_set=test_set, learning_rates=learning_rates,
                            schedule=schedule, progress=progress)
        results[name] = {
            "train_ce": result.last("eval/train_ce").tolist(),  # [learning rates, seeds]
            "train_accuracy": result.last("eval/train_accuracy").tolist(),
            "test_accuracy": result.last("eval/test_accuracy").tolist(),
            # the update's length / the mean gradient's, on fixed batches, over the epochs
            "step_length": result.history["eval/step_length"].mean(-1).tolist(),
            "train_ce_curve": result.history["eval/train_ce"].tolist(),
            "batch_loss_curve": result.history["train/loss"].tolist(),
            "seconds": time.time() - t0}
    verdicts = claims(results, learning_rates)
    rows = []
    for k, lr in enumerate(learning_rates):
        for name, r in results.items():
            rows.append([f"{lr:g}", LABELS[name], mean_std(r["train_ce"][k], scale=1, digits=4),
                         mean_std(r["train_accuracy"][k]), mean_std(r["test_accuracy"][k]),
                         mean_std(r["step_length"][k], scale=1, digits=2),
                         f"{r['seconds']:.0f}"])
    header = ["learning rate", "method", "train cross-entropy", "train acc %", "test acc %",
              "update length / mean gradient's", "s (all learning rates)"]
    hidden = "-".join(str(h) for h in config.model.hidden)
    text = "\n".join([
        "# Instance-wise risk minimisation on digits", "",
        f"Variant `{config.variant}`: {len(train_set['label'])} train / "
        f"{len(test_set['label'])} test digits, MLP 64-{hidden}-10, plain SGD, batch "
        f"{schedule['batch_size']} (each example's loss an objective: "
        f"{schedule['batch_size']} per step), {schedule['epochs']} epochs "
        f"({schedule['epochs'] * steps_per_epoch} steps); {len(learning_rates)} learning "
        f"rates x {len(seeds)} seeds as one vmapped program per method, {time.time() - start:.0f}"
        " s. Last-epoch values, mean ± std over seeds; the training cross-entropy is measured "
        "on the whole training set after the epoch; the update's length is that of the "
        "method's aggregate of the per-example gradients over the mean gradient's (ERM's), on "
        f"the first {PROBE_BATCHES} training batches after every epoch, averaged over the "
        "epochs. Plot: `train_loss.png`. The whole protocol is `config.json` beside this "
        "file.", "",
        markdown_table(header, rows), "", "## The paper's claim", "",
        *([c.line() for c in verdicts] or ["(UPGrad was not run: no verdict.)"])])
    payload = {"config": config.to_dict(), "learning_rates": learning_rates,
               "steps_per_epoch": steps_per_epoch, "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(results, learning_rates, steps_per_epoch, os.path.join(out_dir, "train_loss.png"))
    print(f"\nwrote {out_dir}/results.md, results.json, train_loss.png, config.json")
    return payload

