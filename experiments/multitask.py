"""Every multi-objective aggregator on tasks that conflict: MultiDigits (left and right digit).

Problem (default): MultiDigits (``jaxreg.data.load_multidigits``), in the spirit of Sener &
Koltun's MultiMNIST ("Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018,
arXiv:1810.04650): two of scikit-learn's 8x8 digits on a 12x12 canvas, one at the top-left
and one at the bottom-right, each shifted by up to one pixel, combined by a pixel-wise max;
the tasks are the left digit and the right digit (10-way cross-entropy each, accuracy). The
two digits overlap, so the shared features must separate them: the two tasks compete for
the trunk. Training pairs are drawn from the digits' training split only, test pairs from
its test split. Model: a shared MLP trunk (``jaxreg.models.multitask_mlp``, 144-256-256)
with a linear head per task. The objective returns the named task losses; each aggregator
receives their gradients, stacked, from one forward pass (``jaxreg.train.make_step``'s
default engine), and Adam applies the result (M-ConFIG normalises its own output, so SGD
follows it, as its authors advise). The seeds of one aggregator train as one vmapped program
(``jaxreg.train.grid``). MGDA-UB runs MGDA on the gradients with respect to the shared
features. After every epoch, the task gradients (with respect to every parameter) are also
measured on the first 16 training batches: the report gives their mean pairwise cosine and
how often it is negative (the tasks conflict) along the ``mean`` run.

Claim checked (the multi-objective papers: MGDA-UB, UPGrad, ConFIG, Nash-MTL, CAGrad,
PCGrad, ...): aggregating the task gradients beats plain averaging of the losses. Per seed,
Delta_m is an aggregator's mean relative change over tasks vs ``mean`` with the same seed
(same initial weights and batch order), in %, positive is better (Maninis et al. 2019); an
aggregator "beats the mean" when the mean of its Delta_m over seeds exceeds twice its
standard error (sample std / sqrt(seeds)). One verdict per aggregator, and one for the claim
that at least one does, with the number expected to pass by chance (no multiple-testing
correction).

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set aggregators.names=upgrad,cagrad --set aggregators.options.cagrad.c=0.4``). Variants:

- ``multidigits`` (default): the protocol above: 6000 training pairs and 1000 test pairs
  (``data``), every aggregator (``aggregators.names``; ``mean``, the baseline, is always
  run), trunk 256-256, Adam 1e-3 (SGD 1e-3 for the aggregators in ``aggregators.sgd``:
  M-ConFIG), batch 64, 40 epochs, seeds 0-4; the aggregators' hyperparameters
  (``aggregators.options``) at the library's defaults. Sized to run in 7 to 10 minutes on 2
  CPU cores (MultiMNIST's 60,000 pairs and 100 epochs would take hours here).
- ``digits4``: the four tasks of one digit (the digits' 1437 / 360 split): the digit (10-way
  cross-entropy, accuracy), its parity and whether it is greater than 4 (logistic losses,
  accuracy), and its value as a regression target (squared error on label / 9, RMSE); trunk
  128-128, 30 epochs, seeds 0-2, otherwise as above (the protocol of this experiment before
  MultiDigits).

``--quick``: two seeds, two epochs, 512 / 256 pairs, and three aggregators (mean, upgrad,
mgda_ub) when all are asked for.
"""

from __future__ import annotations

import math
import os
import time
from itertools import combinations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import models, multiobjective, train
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

# problem -> task -> output units
PROBLEMS = {"multidigits": {"left": 10, "right": 10},
            "digits4": {"digit": 10, "parity": 1, "gt4": 1, "value": 1}}
HIGHER_IS_BETTER = {"left": True, "right": True, "digit": True, "parity": True, "gt4": True,
                    "value": False}
METRIC_NAMES = {"value": "RMSE"}  # every other task reports accuracy
# name -> the library's constructor (mgda_ub: MGDA on the gradients w.r.t. the features)
AGGREGATORS = {
    "mean": "mean", "random": "random_weighting", "pcgrad": "pcgrad", "gradvac": "gradvac",
    "graddrop": "graddrop", "mgda": "mgda", "cagrad": "cagrad", "imtl_g": "imtl_g",
    "aligned_mtl": "aligned_mtl", "nash_mtl": "nash_mtl", "upgrad": "upgrad",
    "dualproj": "dualproj", "config": "config", "gradnorm": "gradnorm", "mgda_ub": "mgda",
    "momentum_config": "momentum_config"}
QUICK_AGGREGATORS = ("mean", "upgrad", "mgda_ub")
VARIANTS = ("multidigits", "digits4")
PROBE_BATCHES = 16  # fixed training batches on which the task gradients' cosines are measured
BEATS_SE = 2.0  # an aggregator beats the mean when its mean Delta_m exceeds this many SEs


def get_config(variant: str = "multidigits") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run multitask`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown multitask variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    # problem: multidigits or digits4; for multidigits the pairs (jaxreg.data.load_multidigits)
    config.data = dict(problem="multidigits", train_pairs=6000, test_pairs=1000, canvas=12,
                       max_shift=1, combine="max", seed=0)
    config.model = dict(hidden=(256, 256))  # the shared trunk
    # Adam, or SGD for the aggregators in aggregators.sgd
    config.optimizer = dict(learning_rate=1e-3)
    config.train = dict(epochs=40, batch_size=64, seeds=(0, 1, 2, 3, 4))
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
    if variant == "digits4":
        config.data = dict(problem="digits4")  # the digits' 1437 / 360 split
        config.model.hidden = (128, 128)
        config.train.update(epochs=30, seeds=(0, 1, 2))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs, fewer pairs, and three aggregators where all are asked for."""
    fields = {"train.epochs": 2, "train.seeds": (0, 1)}
    if config.data.problem == "multidigits":
        fields.update({"data.train_pairs": 512, "data.test_pairs": 256})
    if tuple(config.aggregators.names) == tuple(AGGREGATORS):
        fields["aggregators.names"] = QUICK_AGGREGATORS
    return config_lib.replace(config, fields)


def tasks_of(config) -> dict[str, int]:
    """The tasks (name -> output units) of the config's problem."""
    problem = config.data.problem
    if problem not in PROBLEMS:
        raise ValueError(f"data.problem: unknown {problem!r}; problems: "
                         + ", ".join(PROBLEMS))
    return PROBLEMS[problem]


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
            options["num_objectives"] = len(tasks_of(config))
        aggregator = getattr(multiobjective, constructor)(**options)
        out[name] = (aggregator, sgd if name in a.sgd else adam, name == "mgda_ub")
    return out


# -- the two problems -----------------------------------------------------------------------

def load_problem(config) -> tuple[dict, dict]:
    """``(train, test)``: dicts with ``image`` and every task's target."""
    if config.data.problem == "digits4":
        train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
        return ({"image": train_set["image"], **_digit_targets(train_set["label"])},
                {"image": test_set["image"], **_digit_targets(test_set["label"])})
    d = config.data
    sets = [data_lib.load_multidigits(split, num_pairs=n, canvas=d.canvas,
                                      max_shift=d.max_shift, combine=d.combine, seed=d.seed)
            for split, n in (("train", d.train_pairs), ("test", d.test_pairs))]
    return tuple({k: s[k] for k in ("image", "left", "right")} for s in sets)


def _digit_targets(labels):
    labels = np.asarray(labels)
    return {"digit": labels.astype(np.int32), "parity": (labels % 2).astype(np.float32),
            "gt4": (labels > 4).astype(np.float32), "value": (labels / 9.0).astype(np.float32)}


def _terms(outputs, batch):
    def ce(task):
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(
            outputs[task], batch[task]))

    def bce(task):
        return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(outputs[task][:, 0],
                                                                  batch[task]))

    if "left" in outputs:
        return {"left": ce("left"), "right": ce("right")}
    return {"digit": ce("digit"), "parity": bce("parity"), "gt4": bce("gt4"),
            "value": jnp.mean((outputs["value"][:, 0] - batch["value"]) ** 2)}


def _metrics(outputs, targets):
    out = {}
    for task, z in outputs.items():
        if task == "value":
            out[task] = jnp.sqrt(jnp.mean((z[:, 0] - targets[task]) ** 2))
        elif z.shape[-1] == 1:
            out[task] = jnp.mean((z[:, 0] > 0) == (targets[task] > 0.5))
        else:
            out[task] = jnp.mean(jnp.argmax(z, -1) == targets[task])
    return out


def run_aggregator(name, aggregator, optimizer, on_features, *, model, tasks, train_set,
                   test_set, schedule, learning_rate, progress=True):
    """One aggregator's seeds as one vmapped program (``train.grid``). After each epoch:
    the test metrics, and the task gradients' pairwise cosines on fixed training batches."""
    def objective(params, batch, hparams, key, *, representation=None):
        features = model.encode(params, batch["image"]) if representation is None \
            else representation
        return _terms(model.heads(params, features), batch)

    test = {k: jnp.asarray(v) for k, v in test_set.items()}
    probes = _probe_batches(train_set, schedule["batch_size"])

    def evaluate(state, member):
        return {**_metrics(model.apply(state.params, test["image"]), test),
                **_conflicts(model, state.params, probes, tasks)}

    return train.grid(objective, optimizer, model.init, train_set,
                      hparams={"learning_rate": [learning_rate]}, **schedule,
                      evaluate=evaluate, aggregator=aggregator,
                      representation=(lambda p, b: model.encode(p, b["image"]))
                      if on_features else None, progress=progress, desc=name)


def _probe_batches(train_set, batch_size, count=PROBE_BATCHES):
    """The first ``count`` batches of the training set in its stored order, stacked."""
    count = min(count, len(train_set["image"]) // batch_size)
    return {k: jnp.asarray(v[:count * batch_size]).reshape(count, batch_size, *v.shape[1:])
            for k, v in train_set.items()}


def _conflicts(model, params, probes, tasks) -> dict:
    """Per pair of tasks: the mean cosine of their gradients (w.r.t. every parameter) over the
    probe batches, and the share of those batches where it is negative."""
    def gram(batch):
        def losses(p):
            terms = _terms(model.apply(p, batch["image"]), batch)
            return jnp.stack([terms[t] for t in tasks])

        jac = jax.jacrev(losses)(params)
        flat = jnp.concatenate([j.reshape(len(tasks), -1)
                                for j in jax.tree.leaves(jac)], axis=1)
        return flat @ flat.T

    grams = jax.lax.map(gram, probes)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(grams, axis1=1, axis2=2), 1e-30))
    out = {}
    for i, j in combinations(range(len(tasks)), 2):
        cos = grams[:, i, j] / (norms[:, i] * norms[:, j])
        out[f"cos/{tasks[i]},{tasks[j]}"] = jnp.mean(cos)
        out[f"conflict/{tasks[i]},{tasks[j]}"] = jnp.mean(cos < 0)
    return out


# -- the report -----------------------------------------------------------------------------

def delta_m(metrics: dict, baseline: dict) -> np.ndarray:
    """Per seed: mean over the tasks of ``metrics`` of the relative change vs the baseline,
    in %, sign-adjusted so that positive is better (Maninis et al. 2019)."""
    changes = []
    for task in metrics:
        rel = (np.asarray(metrics[task]) - np.asarray(baseline[task])) / np.asarray(baseline[task])
        changes.append(rel if HIGHER_IS_BETTER[task] else -rel)
    return 100 * np.mean(changes, axis=0)


def standard_error(values) -> float:
    """Sample standard deviation / sqrt(n) (NaN for fewer than two values)."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def chance_pass_rate(num_seeds: int, threshold: float = BEATS_SE) -> float:
    """P(mean > threshold x SE) for a method no different from the baseline: the upper tail of
    Student's t with ``num_seeds - 1`` degrees of freedom (normal per-seed differences)."""
    if num_seeds < 2:
        return float("nan")
    from scipy import stats
    return float(stats.t.sf(threshold, num_seeds - 1))


def in_standard_errors(mean: float, se: float) -> float:
    """``mean / se``; 0 when both are 0 (an aggregator identical to the baseline)."""
    if se > 0:
        return mean / se
    return 0.0 if mean == 0 or math.isnan(se) else math.copysign(math.inf, mean)


def compare(results: dict) -> None:
    """Adds to each aggregator's results its per-seed Delta_m vs ``mean``, their standard
    error, the mean in standard errors and whether it beats the mean."""
    base = results["mean"]["last"]
    for name, r in results.items():
        dm = delta_m(r["last"], base)
        r["delta_m"], r["delta_m_se"] = dm.tolist(), standard_error(dm)
        r["delta_m_in_se"] = in_standard_errors(float(np.mean(dm)), r["delta_m_se"])
        r["beats_mean"] = bool(name != "mean" and r["delta_m_in_se"] > BEATS_SE)


def verdicts(results: dict, num_seeds: int) -> list[Claim]:
    """The papers' claim (some aggregator beats the mean), then one claim per aggregator,
    from the results of :func:`compare`."""
    claims, beaten = [], []
    for name, r in results.items():
        if name == "mean":
            continue
        if r["beats_mean"]:
            beaten.append(name)
        claims.append(Claim(
            f"{name} beats averaging the losses (mean)",
            f"mean Delta_m over seeds > {BEATS_SE:g} standard errors",
            r["beats_mean"], f"Delta_m {np.mean(r['delta_m']):+.2f} %, SE "
            f"{r['delta_m_se']:.2f}, {r['delta_m_in_se']:+.1f} SE"))
    rate = chance_pass_rate(num_seeds)
    others = len(results) - 1
    claims.insert(0, Claim(
        "aggregating the task gradients beats averaging the losses",
        f"at least one aggregator's mean Delta_m vs mean > {BEATS_SE:g} standard errors",
        bool(beaten),
        f"beat the mean: {', '.join(beaten) or 'none'} ({len(beaten)} of {others}; with "
        f"{num_seeds} seeds about {others * rate:.1f} of {others} would pass by chance)"))
    return claims


def _plot(results, tasks, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(combinations(tasks, 2))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 2.2, 4.6 * rows + 0.4),
                             squeeze=False)
    colors, markers = plt.get_cmap("tab10"), "osD^v<>p"
    for ax, (a, b) in zip(axes.flat, pairs):
        for i, (name, r) in enumerate(results.items()):
            scale_a = 1 if a == "value" else 100
            scale_b = 1 if b == "value" else 100
            x, y = scale_a * np.asarray(r["last"][a]), scale_b * np.asarray(r["last"][b])
            color = "black" if name == "mean" else colors((i - 1) % 10)
            marker = "*" if name == "mean" else markers[(i - 1) // 10 % len(markers)]
            ax.scatter(x, y, s=14, alpha=0.45, color=color, marker=marker)
            ax.scatter(x.mean(), y.mean(), s=160 if name == "mean" else 70, color=color,
                       edgecolor="black" if name != "mean" else "white", marker=marker,
                       label=name, zorder=4 if name == "mean" else 3)
        ax.set_xlabel(f"{a} test {METRIC_NAMES.get(a, 'accuracy (%)')}")
        ax.set_ylabel(f"{b} test {METRIC_NAMES.get(b, 'accuracy (%)')}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("Last-epoch test metrics: one small mark per seed, the large one their mean",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (5.2 * cols + 2.2), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    tasks = tasks_of(config)
    schedule = config_lib.grid_schedule(config.train)
    seeds = schedule["seeds"]
    names = tuple(config.aggregators.names)
    if "mean" not in names:
        names = ("mean", *names)  # the baseline every verdict compares with
    table = aggregators(config, names)
    train_set, test_set = load_problem(config)
    model = models.multitask_mlp(train_set["image"].shape[1:], tasks,
                                 hidden=tuple(config.model.hidden))
    results, start = {}, time.time()
    for name, (aggregator, optimizer, on_features) in table.items():
        t0 = time.time()
        result = run_aggregator(name, aggregator, optimizer, on_features, model=model,
                                tasks=list(tasks), train_set=train_set, test_set=test_set,
                                schedule=schedule, learning_rate=config.optimizer.learning_rate,
                                progress=progress)
        pairs = [f"{a},{b}" for a, b in combinations(tasks, 2)]
        results[name] = {
            "last": {t: result.last(f"eval/{t}")[0].tolist() for t in tasks},
            "train_loss_last": result.last("train/loss")[0].tolist(),
            # per pair and seed, over the epochs: mean cosine, share of conflicting batches
            "cosine": {p: result.history[f"eval/cos/{p}"][0].mean(-1).tolist() for p in pairs},
            "conflict": {p: result.history[f"eval/conflict/{p}"][0].mean(-1).tolist()
                         for p in pairs},
            "seconds": time.time() - t0}
    compare(results)
    claims = verdicts(results, len(seeds))
    rows = []
    for name, r in results.items():
        rows.append([name, *[mean_std(r["last"][t_], scale=1 if t_ == "value" else 100,
                                      digits=3 if t_ == "value" else 1) for t_ in tasks],
                     f"{np.mean(r['delta_m']):+.2f} ± {np.std(r['delta_m']):.2f}",
                     "–" if name == "mean" else f"{r['delta_m_se']:.2f}",
                     "–" if name == "mean" else f"{r['delta_m_in_se']:+.1f}",
                     "–" if name == "mean" else ("yes" if r["beats_mean"] else "no"),
                     f"{r['seconds']:.0f}"])
    header = ["aggregator", *[f"{t} {METRIC_NAMES.get(t, 'acc %')}" for t in tasks],
              "Δm % vs mean", "SE", "Δm / SE", "beats mean", "s"]
    base_run = results["mean"]
    cosines = "; ".join(f"{pair}: cosine {np.mean(c):+.3f}, negative on "
                        f"{100 * np.mean(base_run['conflict'][pair]):.0f} % of the batches"
                        for pair, c in base_run["cosine"].items())
    d = config.data
    if d.problem == "multidigits":
        problem = (f"MultiDigits: {d.train_pairs} train / {d.test_pairs} test pairs of digits "
                   f"on a {d.canvas}x{d.canvas} canvas (shift <= {d.max_shift}, combined by "
                   f"{d.combine}, pairs seed {d.seed}); tasks: left digit, right digit")
    else:
        problem = ("digits (1437 / 360); tasks: digit, parity, greater than 4 (accuracy), "
                   "value (RMSE)")
    hidden = "-".join(map(str, config.model.hidden))
    text = "\n".join([
        f"# Multi-task: every aggregator ({d.problem})", "",
        f"Variant `{config.variant}`: {problem}. Trunk "
        f"{int(np.prod(train_set['image'].shape[1:]))}-{hidden}, learning rate "
        f"{config.optimizer.learning_rate:g}, batch {schedule['batch_size']}; {len(seeds)} "
        f"seeds (vmapped) x {len(results)} aggregators, {schedule['epochs']} epochs, "
        f"{time.time() - start:.0f} s. Last-epoch test metrics, mean ± std over seeds; Δm: mean "
        "relative change over tasks vs `mean` with the same seed, in %, positive is better "
        "(mean ± std over seeds); SE: its standard error; plot: `task_pairs.png`. The task "
        "gradients along the `mean` run (measured after every epoch on the first "
        f"{PROBE_BATCHES} training batches, averaged over epochs and seeds): {cosines}. The "
        "whole protocol is `config.json` beside this file.", "",
        markdown_table(header, rows), "", "## The papers' claim", "",
        *[c.line() for c in claims]])
    payload = {"config": config.to_dict(), "results": results,
               "claims": [c.__dict__ for c in claims]}
    write_results(out_dir, text, payload)
    _plot(results, tasks, os.path.join(out_dir, "task_pairs.png"))
    print(f"\nwrote {out_dir}/results.md, results.json, task_pairs.png, config.json")
    return payload
