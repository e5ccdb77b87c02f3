"""Contrastive and self-supervised representation learning on digits, against cross-entropy.

One network (an MLP encoder 64-256-256 giving the representation ``h``; a projector
256-128-32 giving ``z``; a predictor 32-32-32 for SimSiam; a linear classifier on ``h`` for
the cross-entropy baseline) is trained on scikit-learn's digits (1437 training, 360 test
images) by each method below, with Adam, from two random views of every image made inside
the jitted step by ``jaxreg.data.augment`` (a random shift of up to one pixel, Gaussian
noise, a 2x2 cut-out; a crop resized back with ``augment.crop`` below 8: on 8x8 digits even
a 6x6 crop leaves the MLP baseline under 30 % accurate on clean test images). Each method is
one vmapped ``jaxreg.train.grid`` over seeds; the methods and batch sizes are separate
programs.

Methods and their losses (``jaxreg.losses``): ``ce`` (cross-entropy on both views' labels),
``simclr`` (NT-Xent: ``supervised_contrastive`` without labels, no ``T/base_T`` factor),
``supcon`` (``supervised_contrastive`` with labels, the official ``T/base_T`` factor),
``dcl`` (``decoupled_contrastive``), ``barlow_twins``, ``vicreg``, ``w_mse`` (whitening
sub-batches of ``losses.w_mse_size``), ``simsiam`` (symmetric ``negative_cosine`` with the
stop-gradient: the predictor without a momentum encoder) and ``byol`` (the same loss against
a momentum target network, ``xi <- tau xi + (1 - tau) theta`` after each step with ``tau =
losses.byol_target_decay``: Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020, arXiv
2006.07733, Sec. 3.1, as the optax transformation :func:`momentum_target`).

Evaluation of the frozen representation ``h`` (``jaxreg.diagnostics``): a linear probe (test
accuracy of logistic regression on standardized features) trained on all training labels and
one trained on ``evaluation.fewshot_per_class`` labels per class (digits are about 96 %
linearly separable from the raw pixels, so only the few-label probe tells representations
apart), the weighted kNN accuracy (k = 20, tau = 0.07); of the projections ``z`` on two
views of the test images: alignment and uniformity (Wang & Isola 2020, t = 2), SimSiam's
collapse measure ``normalized_std`` and the ``effective_rank`` of the centred projections
(their covariance spectrum: Barlow Twins and VICReg leave the projections' mean free, which
would read as collapse uncentred). The row ``random`` is the untrained network, the floor
every method should beat.

Claims checked, with rules fixed before the run (paired over seeds, SE = standard error):

1. Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, arXiv 2004.11362, Table 2:
   a linear classifier on SupCon's representation is at least as accurate as the same network
   trained end to end with cross-entropy. Rule: SupCon probe - CE test accuracy + 2 SE >= 0.
2. Yeh et al., "Decoupled Contrastive Learning", ECCV 2022, arXiv 2110.06848, Fig. 1 and
   Table 2: DCL is less sensitive to the batch size than SimCLR. Rule: the few-label probe
   accuracy lost from the largest to the smallest batch size of ``sweep.batch_sizes`` is
   smaller for DCL than for SimCLR by more than 2 SE.
3. Zbontar et al., "Barlow Twins", ICML 2021, arXiv 2103.03230, and Bardes et al., "VICReg",
   ICLR 2022, arXiv 2105.04906: their objectives avoid collapse without negative pairs. Rule,
   for each: in every seed the effective rank of the centred test projections exceeds a
   quarter of their dimension ``d`` (complete collapse gives about 1; dimensional collapse a
   few) and the probe accuracy exceeds 50 % (chance: 10 %).

No package ships a larger image set that can be read offline, so the run is on digits alone.
The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set train.epochs=100`` or ``--set methods=ce,supcon``). Variant ``default``: the above,
batch 128, 60 epochs, seeds 0-4, the batch-size sweep over (32, 128, 512) for SimCLR, DCL
and SupCon. ``--quick``: two seeds, one epoch, a short probe.
"""

from __future__ import annotations

import functools
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import data as data_lib
from jaxreg import diagnostics, train
from jaxreg.data import augment
from jaxreg.losses import contrastive, self_supervised
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

NUM_CLASSES = 10
METHODS = ("random", "ce", "simclr", "supcon", "dcl", "barlow_twins", "vicreg", "w_mse", "simsiam",
           "byol")
METRICS = ("probe_accuracy", "fewshot_accuracy", "knn_accuracy", "alignment", "uniformity",
           "normalized_std", "effective_rank", "test_accuracy")
VARIANTS = ("default",)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run contrastive`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown contrastive variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.methods = METHODS
    # encoder widths (the last is the representation h), projector widths (the last is z)
    config.model = dict(hidden=(256, 256), projector=(128, 32))
    config.optimizer = dict(learning_rate=1e-3)  # Adam
    config.train = dict(epochs=60, batch_size=128, seeds=(0, 1, 2, 3, 4))
    config.augment = dict(max_shift=1, crop=8, noise=0.1, mask=2)  # crop 8: none
    # temperatures: SimCLR 0.5 (its CIFAR setting), SupCon 0.1 (its README), DCL 0.1
    config.losses = dict(simclr_temperature=0.5, supcon_temperature=0.1, dcl_temperature=0.1,
                         barlow_lambda=0.0051, w_mse_size=64,
                         byol_target_decay=0.99)  # BYOL's 0.996 is for 1000-epoch runs
    config.sweep = dict(methods=("simclr", "dcl", "supcon"), batch_sizes=(32, 128, 512))
    config.evaluation = dict(probe_steps=500, fewshot_per_class=10, knn_k=20)
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, one epoch, a short probe: checks the pipeline, not the claims."""
    return config_lib.replace(config, {"train.epochs": 1, "train.seeds": (0, 1),
                                       "sweep.batch_sizes": (64, 128),
                                       "evaluation.probe_steps": 50})


class Network(nn.Module):
    """Encoder -> h; projector -> z; predictor(z) -> p (SimSiam); linear classifier(h)."""
    hidden: tuple[int, ...]
    projector: tuple[int, ...]

    @nn.compact
    def __call__(self, images):
        h = images.reshape(images.shape[0], -1)
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        z = h
        for width in self.projector[:-1]:
            z = nn.relu(nn.Dense(width)(z))
        z = nn.Dense(self.projector[-1])(z)
        p = nn.Dense(self.projector[-1])(nn.relu(nn.Dense(self.projector[-1])(z)))
        return {"h": h, "z": z, "p": p, "logits": nn.Dense(NUM_CLASSES)(h)}


def _loss(method: str, config, out0, out1, labels, hparams, key):
    """The method's training loss from the network's outputs on the two views."""
    z0, z1 = out0["z"], out1["z"]
    if method == "ce":
        return 0.5 * sum(optax.losses.softmax_cross_entropy_with_integer_labels(
            out["logits"], labels).mean() for out in (out0, out1))
    if method in ("simclr", "supcon"):
        temperature = hparams["temperature"]
        return contrastive.supervised_contrastive(
            jnp.stack([z0, z1], axis=1), labels if method == "supcon" else None,
            temperature=temperature,
            base_temperature=0.07 if method == "supcon" else None).mean()
    if method == "dcl":
        return contrastive.decoupled_contrastive(z0, z1, temperature=hparams["temperature"]).mean()
    if method == "barlow_twins":
        return self_supervised.barlow_twins(z0, z1, lambda_=config.losses.barlow_lambda)
    if method == "vicreg":
        return self_supervised.vicreg(z0, z1)
    if method == "w_mse":
        return self_supervised.w_mse(jnp.stack([z0, z1]), key, w_size=config.losses.w_mse_size)
    if method in ("simsiam", "byol"):  # BYOL: against the momentum target's projections
        t0, t1 = (out0["target_z"], out1["target_z"]) if method == "byol" else (z0, z1)
        return 0.5 * (self_supervised.negative_cosine(out0["p"], t1).mean()
                      + self_supervised.negative_cosine(out1["p"], t0).mean())
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


def _temperature(method: str, config) -> float:
    return {"simclr": config.losses.simclr_temperature,
            "supcon": config.losses.supcon_temperature,
            "dcl": config.losses.dcl_temperature}.get(method, 1.0)


def _augmentation(config, image_size: int = 8):
    a = config.augment
    steps = [functools.partial(augment.random_shift, max_shift=a.max_shift)]
    if a.crop < image_size:
        steps.append(functools.partial(augment.random_crop, size=a.crop))
    steps += [functools.partial(augment.gaussian_noise, std=a.noise),
              functools.partial(augment.random_mask, size=a.mask)]
    return augment.compose(*steps)


def momentum_target(learning_rate, target_decay) -> optax.GradientTransformation:
    """Adam on ``params["online"]``; ``params["target"]`` moves to ``tau target + (1 - tau)
    online`` (the online parameters after this step), BYOL's target update."""
    adam = optax.adam(learning_rate)

    def update(grads, state, params):
        online, state = adam.update(grads["online"], state, params["online"])
        moved = optax.apply_updates(params["online"], online)
        target = jax.tree.map(lambda t, o: (1 - target_decay) * (o - t), params["target"], moved)
        return {"online": online, "target": target}, state

    return optax.GradientTransformation(lambda params: adam.init(params["online"]), update)


def train_method(method: str, batch_size: int, config, network, train_set, progress: bool):
    """One vmapped grid over the seeds; returns the final (online) parameters [seeds, ...]."""
    views_of = _augmentation(config)
    byol = method == "byol"

    def objective(params, batch, hparams, key):
        view_key, loss_key = jax.random.split(key)
        images = augment.views(view_key, batch["image"], views_of)
        n = batch["image"].shape[0]
        flat = images.reshape(2 * n, *images.shape[2:])
        out = network.apply(params["online"] if byol else params, flat)
        if byol:
            target = network.apply(jax.lax.stop_gradient(params["target"]), flat)
            out = {**out, "target_z": target["z"]}
        halves = [{k: v[i * n:(i + 1) * n] for k, v in out.items()} for i in (0, 1)]
        return {method: _loss(method, config, *halves, batch["label"], hparams, loss_key)}

    learning_rate = config.optimizer.learning_rate
    dummy = jnp.zeros((1, *train_set["image"].shape[1:]), jnp.float32)
    optimizer = (optax.inject_hyperparams(momentum_target)(
        learning_rate=learning_rate, target_decay=config.losses.byol_target_decay) if byol
        else optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate))

    def init(key):
        params = network.init(key, dummy)
        return {"online": params, "target": params} if byol else params

    schedule = {**config_lib.grid_schedule(config.train), "batch_size": batch_size}
    result = train.grid(objective, optimizer, init,
                        {"image": train_set["image"], "label": train_set["label"]},
                        hparams={"learning_rate": [learning_rate],
                                 "temperature": [_temperature(method, config)]},
                        progress=progress, desc=f"{method} (batch {batch_size})", **schedule)
    params = jax.tree.map(lambda leaf: leaf[0], result.state.params)  # the one configuration
    return params["online"] if byol else params


def _fewshot(labels, per_class: int) -> np.ndarray:
    """The indices of the first ``per_class`` training examples of each class."""
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(NUM_CLASSES)])


def untrained(config, network, train_set):
    """The initial parameters of each seed [S, ...] (the ``random`` reference)."""
    dummy = jnp.zeros((1, *train_set["image"].shape[1:]), jnp.float32)
    keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in config.train.seeds])
    return jax.vmap(lambda key: network.init(key, dummy))(keys)


def evaluate(params, config, network, train_set, test_set, key) -> dict[str, np.ndarray]:
    """The metrics of the module docstring for each seed's parameters ``[S, ...]``."""
    train_x, train_y = jnp.asarray(train_set["image"]), jnp.asarray(train_set["label"])
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    few = _fewshot(train_set["label"], config.evaluation.fewshot_per_class)
    views = augment.views(key, test_x, _augmentation(config))
    e = config.evaluation
    probe = functools.partial(diagnostics.linear_probe, num_classes=NUM_CLASSES,
                              steps=e.probe_steps)

    def one(p):
        h_train, test = network.apply(p, train_x)["h"], network.apply(p, test_x)
        z0, z1 = (network.apply(p, v)["z"] for v in views)
        return {"probe_accuracy": probe(h_train, train_y, test["h"], test_y),
                "fewshot_accuracy": probe(h_train[few], train_y[few], test["h"], test_y),
                "knn_accuracy": diagnostics.knn_accuracy(h_train, train_y, test["h"], test_y,
                                                         NUM_CLASSES, k=e.knn_k),
                "alignment": diagnostics.alignment(z0, z1),
                "uniformity": diagnostics.uniformity(z0),
                "normalized_std": diagnostics.normalized_std(z0),
                "effective_rank": diagnostics.effective_rank(z0, center=True),
                "test_accuracy": jnp.mean(jnp.argmax(test["logits"], -1) == test_y)}

    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(one))(params).items()}


def _paired(a, b):
    diff = np.asarray(a, float) - np.asarray(b, float)
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se)


def claims(results: dict, sweep: dict, batch_sizes, projection_dim: int) -> list[Claim]:
    """The rules of the module docstring. ``results``: method -> metric -> [seeds];
    ``sweep``: method -> batch size -> [seeds] of few-label probe accuracy."""
    verdicts = []
    if "supcon" in results and "ce" in results:
        d, se = _paired(results["supcon"]["probe_accuracy"], results["ce"]["test_accuracy"])
        verdicts.append(Claim(
            "a linear probe on SupCon's representation is at least as accurate as end-to-end "
            "cross-entropy (Khosla et al. 2020)", "paired difference + 2 SE >= 0",
            bool(d + 2 * se >= 0), f"SupCon probe - CE = {100 * d:+.2f} ± {100 * se:.2f} points"))
    if "simclr" in sweep and "dcl" in sweep and len(batch_sizes) > 1:
        small, large = min(batch_sizes), max(batch_sizes)
        drop = {m: np.asarray(sweep[m][large]) - np.asarray(sweep[m][small])
                for m in ("simclr", "dcl")}
        d, se = _paired(drop["simclr"], drop["dcl"])
        verdicts.append(Claim(
            "DCL is less sensitive to the batch size than SimCLR (Yeh et al. 2022)",
            f"(SimCLR's - DCL's few-label probe accuracy lost from batch {large} to {small})"
            " > 2 SE",
            bool(d > 2 * se),
            f"lost: SimCLR {100 * drop['simclr'].mean():+.2f}, DCL {100 * drop['dcl'].mean():+.2f}"
            f" points; difference {100 * d:+.2f} ± {100 * se:.2f}"))
    floor = projection_dim / 4
    for method, paper in (("barlow_twins", "Zbontar et al. 2021"),
                          ("vicreg", "Bardes et al. 2022")):
        if method in results:
            rank, probe = (np.asarray(results[method][m]) for m in ("effective_rank",
                                                                   "probe_accuracy"))
            verdicts.append(Claim(
                f"{method} avoids collapse without negative pairs ({paper})",
                f"every seed: effective rank of centred z > {floor:g} (d/4) and probe accuracy "
                "> 50 %", bool(np.all(rank > floor) and np.all(probe > 0.5)),
                f"effective rank {rank.min():.1f}-{rank.max():.1f} of {projection_dim}; probe "
                f"{100 * probe.min():.1f}-{100 * probe.max():.1f} %"))
    return verdicts


def untrained_lines(results: dict, projection_dim: int) -> list[str]:
    """Each method's few-label probe against the untrained network's (paired over seeds), and
    the methods SimSiam's measure calls collapsed (normalized std under a fifth of
    ``1/sqrt(d)``): observations, not claims."""
    if "random" not in results:
        return ["(the `random` row was not run)"]
    base = results["random"]["fewshot_accuracy"]
    lines = []
    for method, r in results.items():
        if method != "random":
            d, se = _paired(r["fewshot_accuracy"], base)
            verdict = ("above it by more than 2 SE" if d > 2 * se else
                       "below it by more than 2 SE" if d < -2 * se else "within 2 SE")
            lines.append(f"- {method}: {100 * d:+.1f} ± {100 * se:.1f} points ({verdict})")
    floor = 0.2 / np.sqrt(projection_dim)
    collapsed = [m for m, r in results.items() if np.mean(r["normalized_std"]) < floor]
    lines += ["", "Normalized std below a fifth of 1/sqrt(d) (collapsed in SimSiam's measure): "
              + (", ".join(collapsed) if collapsed else "none") + "."]
    return lines


def _plot(results, sweep, batch_sizes, embeddings, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(embeddings), figsize=(4.2 * (1 + len(embeddings)), 3.8))
    for method, accuracy in sweep.items():
        values = 100 * np.asarray([accuracy[b] for b in batch_sizes])
        axes[0].errorbar(batch_sizes, values.mean(1), yerr=values.std(1), marker="o",
                         capsize=3, label=method)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("batch size")
    axes[0].set_ylabel("few-label linear probe accuracy (%)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax, (method, (points, labels)) in zip(axes[1:], embeddings.items()):
        ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6)
        ax.set_title(f"{method}: test h, first 2 PCs "
                     f"(probe {100 * np.mean(results[method]['probe_accuracy']):.0f} %)",
                     fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pca(features):
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def run(config, out_dir: str, progress: bool) -> dict:
    methods, batch_size = list(config.methods), int(config.train.batch_size)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; methods: {', '.join(METHODS)}")
    sweep_methods = [m for m in config.sweep.methods if m in methods]
    batch_sizes = sorted({int(b) for b in config.sweep.batch_sizes} | {batch_size})
    start = time.time()
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    network = Network(tuple(config.model.hidden), tuple(config.model.projector))
    eval_key = jax.random.PRNGKey(0)
    results, sweep, embeddings, seconds = {}, {m: {} for m in sweep_methods}, {}, {}
    for method in methods:
        for size in (batch_sizes if method in sweep_methods else [batch_size]):
            t0 = time.time()
            params = (untrained(config, network, train_set) if method == "random" else
                      train_method(method, size, config, network, train_set, progress))
            metrics = evaluate(params, config, network, train_set, test_set, eval_key)
            if method in sweep:
                sweep[method][size] = metrics["fewshot_accuracy"].tolist()
            if size == batch_size:
                seconds[method] = time.time() - t0
                results[method] = {k: v.tolist() for k, v in metrics.items()}
                first = jax.tree.map(lambda leaf: leaf[0], params)
                embeddings[method] = (_pca(np.asarray(network.apply(
                    first, jnp.asarray(test_set["image"]))["h"])), test_set["label"])
    verdicts = claims(results, sweep, batch_sizes, config.model.projector[-1])
    rows = [[m, mean_std(r["probe_accuracy"]), mean_std(r["fewshot_accuracy"]),
             mean_std(r["knn_accuracy"]), mean_std(r["test_accuracy"]) if m == "ce" else "-",
             mean_std(r["alignment"], 1.0, 3), mean_std(r["uniformity"], 1.0, 3),
             mean_std(r["normalized_std"], 1.0, 3), mean_std(r["effective_rank"], 1.0, 1),
             f"{seconds[m]:.0f}"] for m, r in results.items()]
    table = markdown_table(["method", "probe acc %", f"{config.evaluation.fewshot_per_class}"
                            "-label probe %", "kNN acc %", "CE head acc %", "alignment",
                            "uniformity", "normalized std", "effective rank", "s"], rows)
    sweep_rows = [[m] + [mean_std(acc[b]) for b in batch_sizes] for m, acc in sweep.items()]
    sweep_table = markdown_table(["few-label probe % at batch"] + [str(b) for b in batch_sizes],
                                 sweep_rows) if sweep else ""
    seeds = list(config.train.seeds)
    text = "\n".join([
        "# Contrastive and self-supervised learning on digits", "",
        f"Variant `{config.variant}`: MLP encoder 64-{'-'.join(map(str, config.model.hidden))}"
        f", projector {'-'.join(map(str, config.model.projector))}, Adam (learning rate "
        f"{config.optimizer.learning_rate}, batch {batch_size}), {config.train.epochs} epochs, "
        f"{len(seeds)} seeds (one vmapped grid per method and batch size), "
        f"{time.time() - start:.0f} s. Two augmented views per image (shift "
        f"{config.augment.max_shift}, crop {config.augment.crop}, noise "
        f"{config.augment.noise}, cut-out {config.augment.mask}). Linear probe and kNN on the "
        "encoder's output h (test split); alignment, uniformity (t = 2) and normalized std "
        "on the projections z of two views of the test images; mean ± std over seeds. The "
        "whole protocol is `config.json` beside this file.", "", table, "",
        "## Against the untrained encoder", "",
        f"{config.evaluation.fewshot_per_class}-label probe accuracy minus the untrained "
        "network's, paired over seeds (observations, not pre-registered claims):", "",
        *untrained_lines(results,
                                                             config.model.projector[-1]), "",
        "## Batch size", "", sweep_table, "",
        "## The papers' claims", "", "Pre-registered tests (paired over seeds):", "",
        *[c.line() for c in verdicts]])
    payload = {"config": config.to_dict(), "seconds": seconds, "results": results,
               "sweep": {m: {str(b): v for b, v in acc.items()} for m, acc in sweep.items()},
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    shown = [m for m in ("ce", "simclr", "supcon", "barlow_twins") if m in embeddings][:3]
    _plot(results, sweep, batch_sizes, {m: embeddings[m] for m in shown},
          os.path.join(out_dir, "contrastive.png"))
    return payload
