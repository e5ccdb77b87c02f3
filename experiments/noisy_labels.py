"""Robust losses under label noise, on scikit-learn's digits.

Claims checked (Ma et al. 2020, arXiv 2006.13554; Zhang & Sabuncu 2018, 1805.07836; Wang et
al. 2019, 1908.06112; Liu et al. 2020, 2007.00151):

1. Cross-entropy memorizes noisy labels: its last-epoch test accuracy falls well below its
   best, and it ends up fitting the wrong labels.
2. The robust losses (GCE, SCE, NCE+RCE, NCE+MAE) and ELR do not.
3. MAE alone underfits.

Setup: digits, symmetric noise at 0-80 % (Active-Passive Losses' convention: each noisy
example moves to a different class) and asymmetric noise at 40 % (the APL MNIST map 7->1,
2->7, 5<->6, 3->8), drawn anew for each seed; an MLP; one training recipe for every loss.
The eight losses x the seeds of one noise setting train as one vmapped program: the loss is
chosen by an integer hyperparameter through ``lax.switch``.

The protocol is one config (``get_config``; any field can be set with ``--set``). Variants:

- ``cifar10`` (default): the APL CIFAR-10 recipe (configs/cifar10/sym/*.yaml) on digits
  (1437 train / 360 test, MLP 64-256-256-10, 200 epochs, batch 64): SGD momentum 0.9,
  learning rate 0.01 cosine to 0, weight decay 1e-4, gradient norm clipped at 5; SCE
  alpha=0.1, beta=1; NCE+RCE and NCE+MAE alpha=1, beta=1. The memorization claims are made
  on CIFAR-10, with this recipe.
- ``mnist``: the APL MNIST recipe (configs/mnist/sym/*.yaml): Nesterov momentum, cosine to
  0.001, weight decay 1e-2; SCE alpha=0.01, beta=1; NCE+RCE and NCE+MAE alpha=1, beta=10.
  This weight decay alone keeps cross-entropy from fitting the noisy labels here (2.6 %
  fitted after 400 epochs at 40 % noise), so the memorization claims cannot be tested with
  it.
- ``apl-digits``: the APL protocol applied to digits as this project's issue 14 states it:
  1000 train / 797 test (a stratified split of all 1797 digits), MLP 512-512, SGD at
  learning rate 0.05 with the gradient norm clipped at 5 (APL's ``grad_bound``), 150 epochs,
  batch 128; the momentum, Nesterov, cosine schedule, weight decay and loss weights of the
  APL MNIST config.

All: GCE q=0.7, ELR beta=0.7, lambda=3 (its CIFAR-10 setting), PS-KD alpha_T=0.8.
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
from jaxreg import models, train
from jaxreg.losses import noisy_labels as nl
from jaxreg.losses import self_distillation as sd
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import (
    Claim,
    markdown_table,
    mean_std,
    write_results,
)

NUM_CLASSES = 10
LOSSES = ("CE", "GCE", "SCE", "NCE+RCE", "NCE+MAE", "MAE", "ELR", "PS-KD")
ROBUST = ("GCE", "SCE", "NCE+RCE", "NCE+MAE", "ELR")
QUICK_SETTINGS = ("symmetric 0.4", "asymmetric 0.4")
# Verdict thresholds, in accuracy points (fixed before the runs, not tuned to agree).
MEMORIZATION_DROP = 5.0   # CE's best - last test accuracy at >= 40 % noise
ROBUST_DROP = 2.0         # a robust loss's best - last stays below this
UNDERFIT_GAP = 5.0        # MAE's best accuracy on clean data this far below CE's


def get_config(variant: str = "cifar10") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run noisy-labels`` (variants: see the module doc)."""
    config = ml_collections.ConfigDict()
    config.variant = variant
    # train_size 0: the digits builder's 1437 / 360 split; else a stratified resplit
    config.data = dict(train_size=0, split_seed=0)
    # each setting is "KIND RATE": symmetric or asymmetric noise at that rate
    config.noise = dict(settings=("symmetric 0.0", "symmetric 0.2", "symmetric 0.4",
                                  "symmetric 0.6", "symmetric 0.8", "asymmetric 0.4"))
    config.model = dict(hidden=(256, 256))
    # SGD with momentum, cosine from learning_rate to final_learning_rate, L2 weight decay
    # added to the gradient, global-norm clipping first (APL: clip_grad_norm_, grad_bound)
    config.optimizer = dict(learning_rate=0.01, final_learning_rate=0.0, momentum=0.9,
                            nesterov=False, weight_decay=1e-4, clip_norm=5.0)
    config.train = dict(epochs=200, batch_size=64, seeds=(0, 1, 2))
    config.loss = dict(gce_q=0.7, sce_alpha=0.1, sce_beta=1.0, active_passive_alpha=1.0,
                       active_passive_beta=1.0, elr_beta=0.7, elr_lambda=3.0,
                       pskd_alpha=0.8)
    config.source = "APL configs/cifar10/sym/*.yaml"
    mnist = dict(optimizer=dict(final_learning_rate=0.001, nesterov=True, weight_decay=1e-2),
                 loss=dict(sce_alpha=0.01, active_passive_beta=10.0))
    if variant == "cifar10":
        pass
    elif variant == "mnist":
        config.update(mnist)
        config.source = "APL configs/mnist/sym/*.yaml"
    elif variant == "apl-digits":
        config.update(mnist)
        config.data.train_size = 1000
        config.model.hidden = (512, 512)
        config.optimizer.learning_rate = 0.05
        config.train.update(epochs=150, batch_size=128)
        config.source = ("APL's MNIST protocol on digits (1000 / 797, MLP 512-512, SGD 0.05 "
                         "clipped at 5, 150 epochs, batch 128; the rest from "
                         "configs/mnist/sym/*.yaml)")
    else:
        raise ValueError(f"unknown noisy-labels variant {variant!r}; variants: cifar10, "
                         "mnist, apl-digits")
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two settings, two seeds, three epochs: checks the pipeline, not the claims."""
    return config_lib.replace(config, {"noise.settings": QUICK_SETTINGS, "train.epochs": 3,
                                       "train.seeds": (0, 1)})


def optimizer_of(config, steps: int) -> optax.GradientTransformation:
    o = config.optimizer
    schedule = optax.cosine_decay_schedule(o.learning_rate, steps,
                                           alpha=o.final_learning_rate / o.learning_rate)
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.add_decayed_weights(o.weight_decay),
                       optax.sgd(schedule, momentum=o.momentum, nesterov=o.nesterov))


def parse_setting(setting: str) -> tuple[str, float]:
    """``"symmetric 0.4"`` -> ``("symmetric", 0.4)``."""
    kind, _, rate = setting.partition(" ")
    if kind not in ("symmetric", "asymmetric"):
        raise ValueError(f"noise.settings: {setting!r} must start with symmetric or asymmetric")
    try:
        return kind, float(rate)
    except ValueError:
        raise ValueError(f"noise.settings: {setting!r} must end with a rate, e.g. "
                         "'symmetric 0.4'") from None


def _branches(num_epochs: int, loss):
    """One ``(logits, labels, rows, epoch) -> (mean loss, rows)`` function per loss, with the
    hyperparameters of ``loss`` (the config's ``loss`` group)."""
    def stateless(fn):
        return lambda logits, labels, rows, epoch: (fn(logits, labels).mean(), rows)

    def elr(logits, labels, rows, epoch):
        value, targets = nl.elr(logits, labels, rows["elr"], beta=loss.elr_beta,
                                lam=loss.elr_lambda)
        return value.mean(), {**rows, "elr": targets}

    def pskd(logits, labels, rows, epoch):
        alpha = sd.pskd_alpha(epoch, alpha_final=loss.pskd_alpha, num_epochs=num_epochs)
        value, probs = sd.progressive_self_distillation(logits, labels, rows["pskd"],
                                                         alpha=alpha)
        return value.mean(), {**rows, "pskd": probs}

    sce_a, sce_b = loss.sce_alpha, loss.sce_beta
    ap_a, ap_b = loss.active_passive_alpha, loss.active_passive_beta
    return [
        stateless(optax.losses.softmax_cross_entropy_with_integer_labels),
        stateless(lambda z, y: nl.generalized_cross_entropy(z, y, q=loss.gce_q)),
        stateless(lambda z, y: nl.symmetric_cross_entropy(z, y, alpha=sce_a, beta=sce_b)),
        stateless(lambda z, y: nl.active_passive(z, y, active="nce", passive="rce",
                                                 alpha=ap_a, beta=ap_b)),
        stateless(lambda z, y: nl.active_passive(z, y, active="nce", passive="mae",
                                                 alpha=ap_a, beta=ap_b)),
        stateless(nl.mae),
        elr,
        pskd,
    ]


def _noisy_labels(clean, kind, rate, seeds):
    if kind == "symmetric":
        return np.stack([data_lib.symmetric_noise(clean, rate, NUM_CLASSES, seed=s,
                                                  convention="flip") for s in seeds])
    return np.stack([data_lib.asymmetric_noise(clean, rate, data_lib.DIGITS_ASYMMETRIC_MAP,
                                               seed=s) for s in seeds])


def run_setting(config, kind, rate, *, model, train_set, test_set, progress=True):
    """Trains every loss x seed for one noise setting as one vmapped program."""
    schedule = config_lib.grid_schedule(config.train)
    seeds, epochs, batch_size = schedule["seeds"], schedule["epochs"], schedule["batch_size"]
    clean = train_set["label"]
    noisy = _noisy_labels(clean, kind, rate, seeds)
    branches = _branches(epochs, config.loss)

    def objective(params, batch, hparams, key, rows):
        logits = model.apply(params, batch["image"])
        loss, new_rows = jax.lax.switch(hparams["loss"], branches, logits, batch["label"],
                                        rows, batch["epoch"])
        return {"noisy_label_loss": loss}, new_rows

    optimizer = optimizer_of(config, epochs * data_lib.num_batches(len(clean), batch_size))
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])

    def evaluate(state, member):
        test_acc = jnp.mean(jnp.argmax(model.apply(state.params, test_x), -1) == test_y)
        pred = jnp.argmax(model.apply(state.params, member["image"]), -1)
        wrong = member["label"] != member["clean_label"]
        fitted = jnp.sum((pred == member["label"]) & wrong) / jnp.maximum(jnp.sum(wrong), 1)
        return {"test_accuracy": test_acc,
                "noisy_fit": jnp.where(jnp.any(wrong), fitted, jnp.nan)}

    result = train.grid(
        objective, optimizer, model.init,
        {"image": train_set["image"], "clean_label": clean},
        hparams={"loss": list(range(len(LOSSES)))}, **schedule, evaluate=evaluate,
        seed_data={"label": noisy},
        init_example_state=lambda d: {
            "elr": jnp.zeros((len(d["label"]), NUM_CLASSES)),
            "pskd": sd.initial_predictions(d["label"], NUM_CLASSES)},
        progress=progress, desc=f"{kind} {rate:.0%}")
    realised = [data_lib.noise_report(clean, n, NUM_CLASSES)["noise_rate"]
                for n in noisy]
    return result, realised


def _summaries(result):
    acc = result.history["eval/test_accuracy"]
    last, fit = result.last("eval/test_accuracy"), result.last("eval/noisy_fit")
    out = {}
    for k, name in enumerate(LOSSES):
        out[name] = {"best": acc[k].max(-1).tolist(), "last": last[k].tolist(),
                     "noisy_fit_last": fit[k].tolist(),
                     "curve_mean": acc[k].mean(0).tolist(), "curve_std": acc[k].std(0).tolist()}
    return out


def _mean(values):
    values = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def claims(results: dict) -> list[Claim]:
    """Verdicts on the three claims from the per-setting summaries."""
    noisy = [key for key, r in results.items() if r["rate"] >= 0.4]
    out = []
    if noisy:
        drops = {key: 100 * (_mean(results[key]["losses"]["CE"]["best"])
                             - _mean(results[key]["losses"]["CE"]["last"])) for key in noisy}
        out.append(Claim(
            "cross-entropy memorizes noisy labels: its last-epoch accuracy falls well below "
            "its best",
            f"CE best - last >= {MEMORIZATION_DROP} points at every setting with >= 40 % noise",
            all(d >= MEMORIZATION_DROP for d in drops.values()),
            ", ".join(f"{k}: {d:.1f}" for k, d in drops.items())))
        for name in ROBUST:  # one verdict per loss: they need not all behave alike
            drops = {key: 100 * (_mean(results[key]["losses"][name]["best"])
                                 - _mean(results[key]["losses"][name]["last"])) for key in noisy}
            fit_gaps = {key: 100 * (_mean(results[key]["losses"][name]["noisy_fit_last"])
                                    - _mean(results[key]["losses"]["CE"]["noisy_fit_last"]))
                        for key in noisy}
            worst = max(drops, key=drops.get)
            out.append(Claim(
                f"{name} does not memorize noisy labels",
                f"best - last < {ROBUST_DROP} points and fewer noisy labels fitted than CE at "
                "every setting with >= 40 % noise",
                all(d < ROBUST_DROP for d in drops.values())
                and all(g < 0 for g in fit_gaps.values()),
                f"largest drop {drops[worst]:.1f} ({worst}); noisy labels fitted vs CE "
                + ", ".join(f"{g:+.1f}" for g in fit_gaps.values())))
    clean_key = next((key for key, r in results.items() if r["rate"] == 0.0), None)
    if clean_key is not None:
        s = results[clean_key]["losses"]
        gap = 100 * (_mean(s["CE"]["best"]) - _mean(s["MAE"]["best"]))
        out.append(Claim(
            "MAE alone underfits",
            f"MAE's best clean-label test accuracy >= {UNDERFIT_GAP} points below CE's",
            gap >= UNDERFIT_GAP, f"CE - MAE = {gap:.1f} points"))
    return out


def _plot(results, path, epochs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False,
                             sharey=True)
    x = np.arange(1, epochs + 1)
    for ax, key in zip(axes.flat, keys):
        for name, s in results[key]["losses"].items():
            mean, std = np.asarray(s["curve_mean"]), np.asarray(s["curve_std"])
            ax.plot(x, 100 * mean, label=name, lw=1.4)
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.15)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("clean test accuracy (%)")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    settings = [parse_setting(s) for s in config.noise.settings]
    seeds, epochs = list(config.train.seeds), config.train.epochs
    train_set, test_set = data_lib.load_digits_splits(
        train_size=config.data.train_size, seed=config.data.split_seed)
    model = models.mlp(train_set["image"].shape[1:], NUM_CLASSES,
                       hidden=tuple(config.model.hidden))
    results, start = {}, time.time()
    for kind, rate in settings:
        result, realised = run_setting(config, kind, rate, model=model, train_set=train_set,
                                       test_set=test_set, progress=progress)
        results[f"{kind} {rate:.0%}"] = {"kind": kind, "rate": rate, "realised_rate": realised,
                                        "losses": _summaries(result)}
    verdicts = claims(results)

    header = ["noise (realised %)", "loss", "best test acc", "last test acc",
              "noisy labels fitted"]
    rows = []
    for key, r in results.items():
        for name, s in r["losses"].items():
            rows.append([f"{key} ({mean_std(r['realised_rate'])})", name, mean_std(s["best"]),
                         mean_std(s["last"]), mean_std(s["noisy_fit_last"])])
    table = markdown_table(header, rows)
    hidden = "-".join(str(h) for h in config.model.hidden)
    text = "\n".join([
        "# Noisy labels on digits", "",
        f"Variant `{config.variant}` ({config.source}); {len(train_set['label'])} train / "
        f"{len(test_set['label'])} test digits, MLP {hidden}, batch {config.train.batch_size}; "
        f"{len(seeds)} seeds x {len(LOSSES)} losses per setting, {epochs} epochs, one vmapped "
        f"program per setting; {time.time() - start:.0f} s. Accuracies in %, mean ± std over "
        "seeds; 'noisy labels fitted' = share of mislabelled training examples predicted as "
        "their wrong label at the last epoch. The whole protocol is `config.json` beside this "
        "file.", "", table, "", "## The papers' claims", "",
        *[c.line() for c in verdicts]])
    payload = {"config": config.to_dict(), "settings": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(results, os.path.join(out_dir, "test_accuracy.png"), epochs)
    print(f"\nwrote {out_dir}/results.md, results.json, test_accuracy.png, config.json")
    return payload
