"""SGD vs SAM vs ASAM on digits: how sharp the minimum is, against test accuracy.

An MLP (64-128-128-10, ReLU) is trained on scikit-learn's digits (1437 training images,
360 test images) with SGD (momentum 0.9, learning rate 0.05, batch 64, no weight decay)
for 60 epochs, 5 seeds, alone and inside the sharpness-aware train step
(``jaxreg.optim.sharpness``): SAM with ``rho`` in ``sam.rhos`` (0.05, 0.1: Foret et al.
2021's default first) and ASAM with ``rho`` in ``asam.rhos`` (0.5, 1.0, ``eta = 0.01``;
Kwon et al. 2021's default first). Each method is one
vmapped ``jaxreg.train.grid`` over its radii x the seeds; members of a seed share their
initialisation and batch order. After the last epoch, on the full training loss (mean
cross-entropy over the 1437 training images): the Hessian's largest eigenvalue (50 power
iterations) and its trace (Hutchinson, 100 probes), from ``jaxreg.diagnostics.hessian``; for
the first seed at each method's default radius, the eigenvalue density by stochastic Lanczos
quadrature (80 steps; Ghorbani et al. 2019; shown, not tested).

Claim checked (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021, arXiv 2010.01412, Sec. 4.2 and Fig. 3; Kwon et al., "ASAM",
ICML 2021, arXiv 2102.11600): SAM and ASAM converge to flatter minima (a smaller top
Hessian eigenvalue and trace) than SGD, with equal or better test accuracy. Decision rules,
fixed before the run, at the papers' default radii, paired over seeds: *flatter* if the
mean of ``log(metric_method / metric_SGD)`` is below 0 by more than two standard errors for
both the top eigenvalue and the trace; *equal or better accuracy* if the mean paired
difference in last-epoch test accuracy plus two standard errors is at least 0.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set asam.rhos=0.5`` or ``--set hessian.power_iterations=100``). One variant,
``default``: the setup above. ``--quick``: 2 seeds, 2 epochs, 5 power iterations, 5
Hutchinson probes and 5 Lanczos steps.
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

from jaxreg import data as data_lib
from jaxreg import models, train
from jaxreg.diagnostics import hessian
from jaxreg.optim import sharpness
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

VARIANTS = ("default",)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run sharpness`` (see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown sharpness variant {variant!r}; variants: "
                         f"{', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.variant = variant
    # train_size 0: the digits builder's 1437 / 360 split; else a stratified resplit
    config.data = dict(train_size=0, split_seed=0)
    config.model = dict(hidden=(128, 128))
    config.optimizer = dict(name="sgd", learning_rate=0.05, momentum=0.9)  # no weight decay
    config.train = dict(epochs=60, batch_size=64, seeds=(0, 1, 2, 3, 4))
    # the radii of each method; the claims are tested at the first (the paper's default)
    config.sam = dict(rhos=(0.05, 0.1))
    config.asam = dict(rhos=(0.5, 1.0), eta=0.01)
    # the Hessian of the full training loss after the last epoch: top eigenvalue (power
    # iteration) and trace (Hutchinson, Rademacher probes), keys from seed; the eigenvalue
    # density of seed 0 at the first radius (stochastic Lanczos, one probe from lanczos_seed)
    config.hessian = dict(power_iterations=50, hutchinson_samples=100, seed=1234,
                          lanczos_steps=80, lanczos_seed=99)
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs, five power iterations, probes and Lanczos steps: checks the
    pipeline, not the claims."""
    return config_lib.replace(config, {
        "train.epochs": 2, "train.seeds": (0, 1), "hessian.power_iterations": 5,
        "hessian.hutchinson_samples": 5, "hessian.lanczos_steps": 5})


def methods(config) -> dict:
    """name -> (perturbation or None, its radii); the first radius is the paper's default."""
    return {"SGD": (None, [0.0]), "SAM": (sharpness.sam(), list(config.sam.rhos)),
            "ASAM": (sharpness.asam(eta=config.asam.eta), list(config.asam.rhos))}


def cross_entropy(model, params, images, labels):
    logits = model.apply(params, images)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _full_loss(apply_fn, images, labels):
    """The mean training cross-entropy as a function of the parameters alone."""
    def loss_fn(p):
        logits = apply_fn(p, images)
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss_fn


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_iterations", "num_samples"))
def _member_metrics(params, images, labels, key, *, apply_fn, num_iterations, num_samples):
    loss_fn = _full_loss(apply_fn, images, labels)
    top_key, trace_key = jax.random.split(key)
    top, _ = hessian.hessian_top_eigenvalue(loss_fn, params, top_key,
                                            num_iterations=num_iterations)
    trace = hessian.hessian_trace(loss_fn, params, trace_key, num_samples=num_samples)
    return jnp.stack([jnp.asarray(top), jnp.asarray(trace), loss_fn(params)])


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_iterations"))
def _member_spectrum(params, images, labels, key, *, apply_fn, num_iterations):
    return hessian.hessian_spectral_density(_full_loss(apply_fn, images, labels), params, key,
                                            num_iterations=num_iterations)


def hessian_metrics(model, params, train_set, key, *, num_iterations, num_samples):
    """Top eigenvalue, trace and value of the full training loss's Hessian, per member of a
    grid's parameters (leading axes [K, S]); each an array [K, S]."""
    images, labels = jnp.asarray(train_set["image"]), jnp.asarray(train_set["label"])
    shape = jax.tree.leaves(params)[0].shape[:2]
    out = np.zeros((3, *shape))
    for k in range(shape[0]):
        for s in range(shape[1]):
            member = jax.tree.map(lambda v, k=k, s=s: v[k, s], params)
            out[:, k, s] = np.asarray(_member_metrics(
                member, images, labels, jax.random.fold_in(key, k * shape[1] + s),
                apply_fn=model.apply, num_iterations=num_iterations, num_samples=num_samples))
    return out[0], out[1], out[2]


def run_method(name, perturbation, rhos, config, *, model, train_set, test_set,
               progress) -> dict:
    """Trains one method over its radii x seeds; returns its curves and end-of-run metrics."""
    o, t, h = config.optimizer, config.train, config.hessian
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=o.learning_rate,
                                                    momentum=o.momentum)

    def objective(params, batch, hparams, key):
        return {"ce": cross_entropy(model, params, batch["image"], batch["label"])}

    def evaluate(state, member):
        logits = model.apply(state.params, test_x)
        return {"test_accuracy": jnp.mean(jnp.argmax(logits, -1) == test_y)}

    hparams = {"learning_rate": [o.learning_rate] * len(rhos)}
    if perturbation is not None:
        hparams["rho"] = rhos
    t0 = time.time()
    result = train.grid(objective, optimizer, model.init,
                        {"image": train_set["image"], "label": train_set["label"]},
                        hparams=hparams, **config_lib.grid_schedule(t), evaluate=evaluate,
                        perturbation=perturbation, progress=progress, desc=name)
    seconds = time.time() - t0
    top, trace, loss = hessian_metrics(model, result.state.params, train_set,
                                       jax.random.PRNGKey(h.seed),
                                       num_iterations=h.power_iterations,
                                       num_samples=h.hutchinson_samples)
    first = jax.tree.map(lambda v: v[0, 0], result.state.params)  # default radius, seed 0
    nodes, weights = _member_spectrum(first, jnp.asarray(train_set["image"]),
                                      jnp.asarray(train_set["label"]),
                                      jax.random.PRNGKey(h.lanczos_seed),
                                      apply_fn=model.apply, num_iterations=h.lanczos_steps)
    accuracy = result.history["eval/test_accuracy"]
    return {"spectrum": {"nodes": nodes[0].tolist(), "weights": weights[0].tolist()},
            "rhos": rhos, "seconds": seconds, "hessian_seconds": time.time() - t0 - seconds,
            "test_accuracy": result.last("eval/test_accuracy").tolist(),  # [radii, seeds]
            "curve_mean": accuracy.mean(1).tolist(),  # [radii, epochs]
            "train_loss": loss.tolist(), "top_eigenvalue": top.tolist(),
            "hessian_trace": trace.tolist()}


def _paired(values, baseline, log=False):
    values, baseline = np.asarray(values, float), np.asarray(baseline, float)
    diff = np.log(values / baseline) if log else values - baseline
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se)


def claims(results) -> list[Claim]:
    """The papers' claims at the default radii, by the rules in the module docstring."""
    base, out = results["SGD"], []
    for name in ("SAM", "ASAM"):
        r = results[name]
        rho = r["rhos"][0]
        parts, flatter = [], True
        for metric, label in (("top_eigenvalue", "top eigenvalue"), ("hessian_trace", "trace")):
            mean, se = _paired(r[metric][0], base[metric][0], log=True)
            flatter &= bool(mean < -2 * se)
            parts.append(f"{label} x{np.exp(mean):.2f} (log-ratio {mean:+.2f} ± {se:.2f})")
        out.append(Claim(f"{name} (rho = {rho:g}) converges to a flatter minimum than SGD",
                         "paired log-ratio of the top eigenvalue and of the trace both below 0 "
                         "by more than 2 standard errors", flatter, "; ".join(parts)))
        mean, se = _paired(r["test_accuracy"][0], base["test_accuracy"][0])
        out.append(Claim(f"{name} (rho = {rho:g}) tests as accurately as SGD or better",
                         "paired last-epoch test accuracy difference + 2 standard errors >= 0",
                         bool(mean + 2 * se >= 0),
                         f"{name} - SGD = {100 * mean:+.2f} ± {100 * se:.2f} points"))
    return out


def _plot(results, path, epochs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 4, figsize=(18.5, 4.2))
    colors = {"SGD": "tab:gray", "SAM": "tab:blue", "ASAM": "tab:orange"}
    markers = "os^Dv"
    for name, r in results.items():
        for k, rho in enumerate(r["rhos"]):
            label = name if name == "SGD" else f"{name} rho={rho:g}"
            acc = 100 * np.asarray(r["test_accuracy"][k])
            for ax, metric in zip(axes[:2], ("top_eigenvalue", "hessian_trace")):
                ax.scatter(r[metric][k], acc, color=colors[name], marker=markers[k % 5],
                           label=label, alpha=0.8)
            axes[2].plot(np.arange(1, epochs + 1), 100 * np.asarray(r["curve_mean"][k]),
                         color=colors[name], ls=["-", "--", ":", "-."][k % 4], label=label)
    for ax, xlabel in zip(axes[:2], ("top Hessian eigenvalue (train loss)",
                                     "Hessian trace (train loss)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%), one point per seed")
        ax.grid(alpha=0.3)
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("test accuracy (%), mean over seeds")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    axes[0].legend(fontsize=7)
    nodes = np.concatenate([r["spectrum"]["nodes"] for r in results.values()])
    pad = 0.05 * (nodes.max() - nodes.min()) + 1e-3
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, 4000)
    for name, r in results.items():
        density = hessian.spectral_density(np.asarray(r["spectrum"]["nodes"], np.float32),
                                           np.asarray(r["spectrum"]["weights"], np.float32),
                                           grid, variance=(pad / 20) ** 2)
        label = name if name == "SGD" else f"{name} rho={r['rhos'][0]:g}"
        axes[3].plot(grid, np.maximum(np.asarray(density), 1e-8), color=colors[name],
                     label=label)
    axes[3].set_yscale("log")
    axes[3].set_ylim(1e-6, None)
    axes[3].set_xlabel("Hessian eigenvalue (train loss)")
    axes[3].set_ylabel("density (stochastic Lanczos, seed 0)")
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    o, t, h = config.optimizer, config.train, config.hessian
    start, results = time.time(), {}
    train_set, test_set = data_lib.load_digits_splits(
        train_size=config.data.train_size, seed=config.data.split_seed)
    hidden = tuple(config.model.hidden)
    model = models.mlp(train_set["image"].shape[1:], 10, hidden=hidden)
    for name, (perturbation, rhos) in methods(config).items():
        results[name] = run_method(name, perturbation, rhos, config, model=model,
                                   train_set=train_set, test_set=test_set, progress=progress)
    verdicts = claims(results)
    rows = []
    for name, r in results.items():
        for k, rho in enumerate(r["rhos"]):
            rows.append([name, "–" if name == "SGD" else f"{rho:g}",
                         mean_std(r["test_accuracy"][k]), mean_std(r["train_loss"][k], 1.0, 4),
                         mean_std(r["top_eigenvalue"][k], 1.0, 2),
                         mean_std(r["hessian_trace"][k], 1.0, 1),
                         mean_std(np.asarray(r["top_eigenvalue"][k])
                                  / np.asarray(r["train_loss"][k]), 1.0, 0)])
    table = markdown_table(["method", "rho", "test acc %", "train loss", "top eigenvalue",
                            "Hessian trace", "top eigenvalue / train loss"], rows)
    text = "\n".join([
        "# Sharpness-aware minimization on digits", "",
        f"Variant `{config.variant}`: {len(train_set['label'])} train / "
        f"{len(test_set['label'])} test digits, MLP 64-{'-'.join(map(str, hidden))}-10, SGD "
        f"(momentum {o.momentum}, learning rate {o.learning_rate}, batch {t.batch_size}), "
        f"{t.epochs} epochs, {len(t.seeds)} seeds (one vmapped grid of radii x seeds per "
        f"method), {time.time() - start:.0f} s. ASAM eta = {config.asam.eta}. Last-epoch test "
        "accuracy; the Hessian of the full training loss at the end: top eigenvalue "
        f"({h.power_iterations} power iterations) and trace (Hutchinson, "
        f"{h.hutchinson_samples} probes); mean ± std over seeds. The plot's last panel: the "
        "eigenvalue density of seed 0 at each method's first radius (stochastic Lanczos "
        f"quadrature, {h.lanczos_steps} steps, one probe). The whole protocol is "
        "`config.json` beside this file.", "",
        table, "", "Near zero training loss the cross-entropy Hessian shrinks with the loss "
        "(its Gauss-Newton part is weighted by p(1 - p)), so a run that fits the training set "
        "more tightly also looks flatter; the last column divides by the training loss as a "
        "rough correction for that (it is not part of the decision rule).", "",
        "## The papers' claims", "", *[c.line() for c in verdicts]])
    payload = {"config": config.to_dict(), "methods": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(results, os.path.join(out_dir, "sharpness.png"), t.epochs)
    return payload
