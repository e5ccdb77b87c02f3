"""mixup on digits: accuracy, likelihood, calibration and label noise across alpha.

An MLP (64-128-128-10, ReLU) is trained on scikit-learn's digits (1437 training images, 360
test images) with Adam (learning rate 1e-3, batch 64) on the cross-entropy against the
mixed targets of ``jaxreg.regularizers.smoothness.mixup`` (one ``lam ~ Beta(alpha, alpha)``
per batch and a random permutation, as the official code; ``alpha = 0`` is ERM) for each
alpha in ``mixup.alphas``, with the clean labels and with 40 % symmetric label noise on the
training split (``jaxreg.data.symmetric_noise``, drawn anew per seed), as one vmapped
``jaxreg.train.grid`` over alpha x (label settings x seeds) (alpha is a traced
hyperparameter; the members of a seed share their initialisation and batch order). After
the last epoch, on the (clean) test split: accuracy, the negative log-likelihood (NLL) and
the expected calibration error (ECE, 15 equal-width confidence bins, Guo et al. 2017).

Claims checked, with rules fixed before the run, at the largest alpha (default 1.0, the
official code's default), paired over seeds (difference mixup minus ERM, its standard error
SE over seeds):

1. Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk Minimization", ICLR 2018,
   arXiv 1710.09412, Sec. 3.1-3.2 (ImageNet Table 1, CIFAR Fig. 3): mixup keeps or improves
   test accuracy over ERM. Rule: mean accuracy difference + 2 SE >= 0 (clean labels).
2. Thulasidasan, Chennupati, Bilmes, Bhattacharya & Michalak, "On Mixup Training: Improved
   Calibration and Predictive Uncertainty for Deep Neural Networks", NeurIPS 2019, arXiv
   1905.11001, Sec. 3: networks trained with mixup have a lower ECE on in-distribution test
   data than the same networks trained without it. Rule: the ECE difference is below zero
   by more than 2 SE (clean labels).
3. Lower test NLL than ERM: not a number either paper reports, but what better calibration at
   a kept accuracy implies (NLL is a proper scoring rule). Rule: the NLL difference is below
   zero by more than 2 SE (clean labels).
4. Zhang et al. Sec. 3.4 (Table 2, CIFAR-10 with 20-80 % of the labels replaced at random):
   mixup reduces the last-epoch test error relative to ERM. Rule (40 % symmetric noise here):
   accuracy difference > 2 SE. The paper used alpha = 8 and 32 there, so alpha = 1 is a
   weaker form of its setting.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set mixup.alphas=0,8,32`` for the paper's label-noise alphas, or ``--set
noise.enabled=false`` for the clean labels alone). Variant:

- ``default``: the protocol above: MLP 128-128, Adam 1e-3, batch 64, 80 epochs, seeds 0-4,
  alphas (0, 0.1, 0.2, 0.4, 1), clean labels and 40 % symmetric noise, ECE with 15 bins.

``--quick``: two seeds, two epochs.
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
from jaxreg.diagnostics import expected_calibration_error
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results
from jaxreg.regularizers import smoothness

NUM_CLASSES = 10
METRICS = ("test_accuracy", "test_nll", "test_ece", "test_overconfidence")
VARIANTS = ("default",)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run mixup`` (variants: see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown mixup variant {variant!r}; variants: " + ", ".join(VARIANTS))
    config = ml_collections.ConfigDict()
    config.variant = variant
    config.model = dict(hidden=(128, 128))  # ReLU MLP on the digits' 1437 / 360 split
    config.optimizer = dict(learning_rate=1e-3)  # Adam
    config.train = dict(epochs=80, batch_size=64, seeds=(0, 1, 2, 3, 4))
    # 0 (ERM) first; the claims are tested at the last
    config.mixup = dict(alphas=(0.0, 0.1, 0.2, 0.4, 1.0))
    # a second label setting: symmetric noise at this rate on the training labels, drawn
    # per seed (enabled false: the clean labels alone)
    config.noise = dict(enabled=True, rate=0.4)
    config.evaluation = dict(num_bins=15)  # ECE's equal-width confidence bins
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, two epochs: checks the pipeline, not the claims."""
    return config_lib.replace(config, {"train.epochs": 2, "train.seeds": (0, 1)})


def _paired(values, baseline):
    diff = np.asarray(values, float) - np.asarray(baseline, float)
    se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(diff.mean()), float(se)


def claims(alphas, clean: dict, noisy: dict | None, *, noise_rate: float) -> list[Claim]:
    """The rules of the module docstring; ``clean`` / ``noisy`` map each metric to an array
    [alphas, seeds], alpha 0 (ERM) first; the tests are at the last alpha; ``noise_rate``
    names the noisy setting."""
    a = f"alpha {alphas[-1]:g}"
    acc, acc_se = _paired(clean["test_accuracy"][-1], clean["test_accuracy"][0])
    ece, ece_se = _paired(clean["test_ece"][-1], clean["test_ece"][0])
    nll, nll_se = _paired(clean["test_nll"][-1], clean["test_nll"][0])
    verdicts = [
        Claim(f"mixup ({a}) keeps or improves test accuracy vs ERM (Zhang et al. 2018)",
              "paired accuracy difference + 2 SE >= 0", bool(acc + 2 * acc_se >= 0),
              f"mixup - ERM = {100 * acc:+.2f} ± {100 * acc_se:.2f} points"),
        Claim(f"mixup ({a}) lowers the expected calibration error (Thulasidasan et al. 2019)",
              "paired ECE difference < -2 SE", bool(ece < -2 * ece_se),
              f"mixup - ERM = {100 * ece:+.2f} ± {100 * ece_se:.2f} points of ECE"),
        Claim(f"mixup ({a}) lowers the test NLL", "paired NLL difference < -2 SE",
              bool(nll < -2 * nll_se), f"mixup - ERM = {nll:+.4f} ± {nll_se:.4f} nats")]
    if noisy is not None:
        acc, acc_se = _paired(noisy["test_accuracy"][-1], noisy["test_accuracy"][0])
        verdicts.append(Claim(
            f"mixup ({a}) is more robust than ERM to {100 * noise_rate:.0f} % symmetric label "
            "noise (Zhang et al. 2018, Table 2)", "paired last-epoch accuracy difference > 2 SE",
            bool(acc > 2 * acc_se), f"mixup - ERM = {100 * acc:+.2f} ± {100 * acc_se:.2f} points"))
    return verdicts


def run_settings(config, labels: dict, *, model, train_set, test_set, progress) -> dict:
    """Every label setting (name -> training labels [seeds, N]) as one vmapped grid of
    alphas x (settings x seeds), the members of a seed sharing their initialisation and batch
    order across settings; per setting, the last-epoch metrics [alphas, seeds] and the
    test-accuracy curves [alphas, seeds, epochs]."""
    alphas, seeds = list(config.mixup.alphas), list(config.train.seeds)
    learning_rate, num_bins = config.optimizer.learning_rate, config.evaluation.num_bins
    test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
    optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)

    def objective(params, batch, hparams, key):
        inputs, targets = smoothness.mixup(batch["image"], batch["label"], key,
                                           alpha=hparams["alpha"], num_classes=NUM_CLASSES)
        logits = model.apply(params, inputs)
        return {"ce": optax.losses.softmax_cross_entropy(logits, targets).mean()}

    def evaluate(state, member):
        logits = model.apply(state.params, test_x)
        nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, test_y)
        return {"test_accuracy": jnp.mean(jnp.argmax(logits, -1) == test_y),
                "test_nll": nll.mean(),
                "test_ece": expected_calibration_error(logits, test_y, num_bins),
                "test_overconfidence": jnp.mean(jnp.max(jax.nn.softmax(logits), -1))
                - jnp.mean(jnp.argmax(logits, -1) == test_y)}

    t0 = time.time()
    result = train.grid(objective, optimizer, model.init, {"image": train_set["image"]},
                        hparams={"alpha": alphas, "learning_rate": [learning_rate] * len(alphas)},
                        seeds=seeds * len(labels), epochs=config.train.epochs,
                        batch_size=config.train.batch_size, evaluate=evaluate,
                        seed_data={"label": np.concatenate(list(labels.values()))},
                        progress=progress, desc="mixup")
    settings = {}
    for i, name in enumerate(labels):
        members = slice(i * len(seeds), (i + 1) * len(seeds))
        history = {m: result.history[f"eval/{m}"][:, members] for m in METRICS}
        settings[name] = {m: result.last(f"eval/{m}")[:, members].tolist() for m in METRICS}
        settings[name]["test_accuracy_curve"] = history["test_accuracy"].tolist()
    return {"seconds": time.time() - t0, "settings": settings}


def _plot(alphas, settings, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(alphas))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (name, r), color in zip(settings.items(), ("tab:blue", "tab:red")):
        for ax, metric, scale in zip(axes, METRICS, (100, 1, 100)):
            values = scale * np.asarray(r[metric])
            for s in range(values.shape[1]):
                ax.scatter(x, values[:, s], color=color, alpha=0.35, s=12)
            ax.plot(x, values.mean(1), color=color, marker="o", label=name)
    for ax, ylabel in zip(axes, ("test accuracy (%)", "test NLL (nats)", "test ECE (%)")):
        ax.set_xticks(x, [f"{a:g}" for a in alphas])
        ax.set_xlabel("mixup alpha (0 = ERM)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    alphas = list(config.mixup.alphas)
    if not alphas or alphas[0] != 0.0:
        raise ValueError(f"mixup.alphas must start with 0 (ERM), got {alphas}")
    seeds, epochs = list(config.train.seeds), config.train.epochs
    noise_rate, num_bins = config.noise.rate, config.evaluation.num_bins
    start = time.time()
    train_set, test_set = data_lib.load_digits("train"), data_lib.load_digits("test")
    model = models.mlp(train_set["image"].shape[1:], NUM_CLASSES,
                       hidden=tuple(config.model.hidden))
    clean = np.stack([train_set["label"]] * len(seeds))
    labels = {"clean labels": clean}
    if config.noise.enabled:
        labels[f"{100 * noise_rate:.0f} % symmetric noise"] = np.stack([
            data_lib.symmetric_noise(train_set["label"], noise_rate, NUM_CLASSES, seed=s)
            for s in seeds])
    result = run_settings(config, labels, model=model, train_set=train_set, test_set=test_set,
                          progress=progress)
    settings = result["settings"]
    names = list(settings)
    as_arrays = [{m: np.asarray(settings[n][m]) for m in METRICS} for n in names]
    verdicts = claims(alphas, as_arrays[0], as_arrays[1] if len(names) > 1 else None,
                      noise_rate=noise_rate)
    rows = [[name, f"{a:g}", mean_std(r["test_accuracy"][k]),
             mean_std(r["test_nll"][k], 1.0, 3), mean_std(r["test_ece"][k]),
             mean_std(r["test_overconfidence"][k])]
            for name, r in settings.items() for k, a in enumerate(alphas)]
    table = markdown_table(["training labels", "alpha", "test acc %", "test NLL",
                            "test ECE %", "confidence - accuracy %"], rows)
    text = "\n".join([
        "# mixup on digits: accuracy, NLL, calibration, label noise", "",
        f"Variant `{config.variant}`: MLP 64-{'-'.join(map(str, config.model.hidden))}-10, "
        f"Adam (learning rate {config.optimizer.learning_rate}, batch "
        f"{config.train.batch_size}), {epochs} epochs, {len(seeds)} seeds, one vmapped grid of "
        f"alpha x (label settings x seeds), {time.time() - start:.0f} s. One lam ~ Beta(alpha, "
        "alpha) per batch (the official code). Last-epoch metrics on the clean test split; "
        f"ECE with {num_bins} equal-width bins; confidence - accuracy is the mean top-class "
        "probability minus the accuracy (> 0: overconfident, < 0: underconfident; reported, "
        "not tested); mean ± std over seeds. The whole protocol is `config.json` beside this "
        "file.", "", table, "",
        "## The papers' claims", "", "Pre-registered tests (at the largest alpha, paired over "
        "seeds):", "", *[c.line() for c in verdicts], "",
        "Direction of the miscalibration (clean labels, mean confidence - accuracy): "
        + ", ".join(f"alpha {a:g}: {100 * np.mean(gap):+.1f}" for a, gap in
                    zip(alphas, settings[names[0]]["test_overconfidence"])) + " points."])
    payload = {"config": config.to_dict(), "seconds": result["seconds"], "settings": settings,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(alphas, settings, os.path.join(out_dir, "mixup.png"))
    return payload
