"""Grokking modular addition without weight decay: softmax vs StableMax vs the ⊥ gradient.

Task (Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability",
ICLR 2025, arXiv:2501.04697, Sec. 2 and Fig. 1, as run by their code,
LucasPrietoAl/grokking-at-the-edge-of-numerical-stability ``grokking_experiments.py``,
``datasets.AlgorithmicDataset``, ``models.MLP``, ``run_main_experiments.sh`` Figure 1):
``(a + b) mod p`` for every pair ``a, b < p``, a random 40% of the pairs for training (the
reference's ``--train_fraction 0.4``) and the rest for testing, drawn per seed. Input: the
concatenated one-hot codes of ``a`` and ``b`` (``2p``); model: an MLP ``2p-200-200-p``,
ReLU, no biases, PyTorch's default initialisation (``U(+-1/sqrt(fan_in))``), float32
throughout; full-batch Adam (``lr = 0.01``, ``beta1 = 0.9``, ``eps = 1e-25``, the reference's
AdamW with weight decay 0), ``beta2 = 0.99`` except for StableMax (0.999), as in the
reference's Figure 1 commands. The first layer is a lookup ``W1[a] + W1[p + b]``, equal to
the one-hot product. Methods (``methods.names``, each with its Adam ``beta2`` in
``methods.beta2``):

* ``softmax CE``: the cross-entropy of the softmax, in float32;
* ``StableMax CE``: ``jaxreg.losses.classification.stablemax_cross_entropy`` on the float32
  logits cast to float64, as the reference's ``utils.stablemax_cross_entropy`` does (the
  model, the gradient it receives and Adam stay float32);
* ``softmax CE + ⊥Adam``: the softmax cross-entropy with
  ``jaxreg.optim.weight_decay.orthogonal_gradient`` applied to the gradient before Adam
  (the paper's ⊥AdamW with weight decay 0, the reference's ``OrthoGrad`` wrapper);
* ``StableMax CE, float32 loss``: the same StableMax loss computed in float32 (not in the
  paper; added after the first full run, see the results page).

All methods x seeds train as one jitted program: ``vmap`` over methods and seeds of a
``lax.scan`` over ``train.log_every`` steps, called once per logging interval (the method is
a traced flag selecting the loss and the projection, and a traced ``beta2``; the members of a
seed share the split and the initial parameters). Every ``train.log_every`` steps: test
accuracy, training accuracy, and the fraction of training examples in Softmax Collapse
(``jaxreg.diagnostics.collapse``, float32, without labels: the reference logger's
``softmax_collapse``, which it also computes on the logits of the StableMax runs, where the
softmax is not what is trained).

Scale (fixed from the compute budget before any run, not from results): the paper uses
``p = 113`` and 80,000 full-batch steps for softmax and StableMax; here ``data.modulus`` 41
(1681 pairs, 672 for training) and ``train.steps`` 4000, sized for a few minutes on two CPU
cores (4 methods x 3 seeds); the ``gpu`` variant is the paper's scale (the reference runs
⊥AdamW for 300 steps, softmax and StableMax for 80,000).

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set data.modulus=59 --set train.steps=8000``). Variants:

- ``cpu`` (default): p = 41, 4000 steps, measured every 100, seeds 0-2, JAX's default
  matrix-multiply precision (float32 on a CPU).
- ``gpu``: the paper's scale, as run on one H100 for the supplementary section of
  docs/results/grokking.md: p = 113 (5107 of 12769 pairs for training), 80,000 steps,
  measured every 2000, seeds 0-2, matrix products at ``highest`` precision (float32, not
  TF32; what ``JAX_DEFAULT_MATMUL_PRECISION=highest`` did for that run).

``--quick``: p = 11, 20 steps measured every 10, two seeds.

Claims checked, with rules fixed before the full run (final = the last logged step; mean and
standard error (SE) over seeds):
(a) with softmax CE and no weight decay the model does not generalize while SC rises:
    mean final test accuracy + 2 SE < 0.5 and mean final training SC fraction - 2 SE > 0.5;
(b) StableMax and the perpendicular gradient grok without weight decay: for each, mean final
    test accuracy - 2 SE > 0.9.
"""

from __future__ import annotations

import contextlib
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg.diagnostics.collapse import softmax_collapse_fraction
from jaxreg.losses.classification import stablemax_cross_entropy
from jaxreg.optim.weight_decay import orthogonal_gradient
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

# name -> (loss index into LOSSES, uses the perpendicular gradient)
METHODS = {"softmax CE": (0, 0),
           "StableMax CE": (1, 0),
           "softmax CE + ⊥Adam": (0, 1),
           "StableMax CE, float32 loss": (2, 0)}
LOSSES = ("softmax (float32)", "StableMax (float64)", "StableMax (float32)")  # by loss index
GROKKERS = ("StableMax CE", "softmax CE + ⊥Adam")  # claim (b)
VARIANTS = ("cpu", "gpu")


def get_config(variant: str = "cpu") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run grokking`` (variants: see the module doc)."""
    config = ml_collections.ConfigDict()
    config.variant = variant
    # (a + b) mod modulus; a random train_fraction of the pairs for training, drawn per seed
    config.data = dict(modulus=41, train_fraction=0.4)
    config.model = dict(hidden=200)  # MLP 2p-hidden-hidden-p, ReLU, no biases
    # full-batch Adam (the reference's AdamW with weight decay 0); beta2 is per method
    config.optimizer = dict(learning_rate=0.01, b1=0.9, eps=1e-25)
    # Adam's beta2 of each method, from the reference's Figure 1 commands
    config.methods = dict(names=tuple(METHODS), beta2=(0.99, 0.999, 0.99, 0.999))
    # matmul_precision: "default" (JAX's) or a jax.default_matmul_precision value
    config.train = dict(steps=4000, log_every=100, seeds=(0, 1, 2),
                        matmul_precision="default")
    if variant == "cpu":
        pass
    elif variant == "gpu":
        config.data.modulus = 113
        config.train.update(steps=80_000, log_every=2000, matmul_precision="highest")
    else:
        raise ValueError(f"unknown grokking variant {variant!r}; variants: "
                         + ", ".join(VARIANTS))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """p = 11, 20 steps measured every 10, two seeds: checks the pipeline, not the claims."""
    return config_lib.replace(config, {"data.modulus": 11, "train.steps": 20,
                                       "train.log_every": 10, "train.seeds": (0, 1)})


def methods_of(config) -> dict:
    """name -> (loss index, perpendicular, beta2) for the config's ``methods``."""
    names, beta2 = tuple(config.methods.names), tuple(config.methods.beta2)
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"methods.names: unknown {unknown}; methods: {', '.join(METHODS)}")
    if len(beta2) != len(names):
        raise ValueError(f"methods.beta2 has {len(beta2)} values for {len(names)} methods")
    return {name: (*METHODS[name], b2) for name, b2 in zip(names, beta2)}


def modular_addition(modulus: int):
    """All pairs ``(a, b)`` ``[p^2, 2]`` (int32) and their labels ``(a + b) mod p``."""
    a, b = np.meshgrid(np.arange(modulus), np.arange(modulus), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], 1).astype(np.int32)
    return jnp.asarray(pairs), jnp.asarray((pairs.sum(1) % modulus).astype(np.int32))


def init_mlp(rng: np.random.Generator, modulus: int, hidden: int) -> list:
    """Kernels of ``2p-hidden-hidden-p`` (no biases), ``U(+-1/sqrt(fan_in))`` as
    ``torch.nn.Linear``'s default."""
    sizes = [2 * modulus, hidden, hidden, modulus]
    return [jnp.asarray(rng.uniform(-1.0, 1.0, (n_in, n_out)) / np.sqrt(n_in), jnp.float32)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def split(rng: np.random.Generator, modulus: int, train_fraction: float) -> dict:
    """A random ``train_fraction`` of the pairs for training, the rest for testing."""
    pairs, labels = modular_addition(modulus)
    order = rng.permutation(modulus ** 2)
    n_train = int(train_fraction * modulus ** 2)
    return {"train": (pairs[order[:n_train]], labels[order[:n_train]]),
            "test": (pairs[order[n_train:]], labels[order[n_train:]])}


def apply_mlp(params, pairs):
    """Logits ``[B, p]``: the one-hot input times ``W1`` is the sum of two rows of it."""
    w1, w2, w3 = params
    modulus = w3.shape[1]
    h = jax.nn.relu(w1[pairs[:, 0]] + w1[modulus + pairs[:, 1]])
    return jax.nn.relu(h @ w2) @ w3


def make_advance(log_every: int, optimizer_config):
    """``advance(task, carry, method) -> (carry, metrics)`` for one member: ``log_every``
    full-batch steps from ``carry = (params, adam_state)`` on ``task`` (see ``split``), then
    the metrics. ``method`` is ``(loss, perpendicular, beta2)`` as traced scalars (``loss``
    indexes ``LOSSES``); trace it with x64 enabled (the float64 StableMax loss).
    ``optimizer_config``: the config's ``optimizer`` group."""
    project = orthogonal_gradient()

    def loss_fn(params, task, loss):
        x, y = task["train"]
        logits = apply_mlp(params, x)
        per_example = [
            optax.losses.softmax_cross_entropy_with_integer_labels(logits, y),
            stablemax_cross_entropy(logits.astype(jnp.float64), y).astype(jnp.float32),
            stablemax_cross_entropy(logits, y)]
        return jnp.select([loss == i for i in range(len(LOSSES))], per_example).mean()

    def advance(task, carry, method):
        loss, perpendicular, beta2 = method
        optimizer = optimizer_for(optimizer_config, beta2)

        def step(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params, task, loss)
            projected, _ = project.update(grads, optax.EmptyState(), params)
            grads = jax.tree.map(lambda o, g: jnp.where(perpendicular > 0, o, g),
                                 projected, grads)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        carry = jax.lax.scan(step, carry, None, length=log_every)[0]
        params = carry[0]
        (train_x, train_y), (test_x, test_y) = task["train"], task["test"]
        train_logits = apply_mlp(params, train_x)
        return carry, {
            "test_accuracy": jnp.mean(jnp.argmax(apply_mlp(params, test_x), -1) == test_y),
            "train_accuracy": jnp.mean(jnp.argmax(train_logits, -1) == train_y),
            "train_sc_fraction": softmax_collapse_fraction(train_logits),
            "train_loss": loss_fn(params, task, loss)}

    return advance


def optimizer_for(optimizer_config, beta2) -> optax.GradientTransformation:
    """The reference's optimizer: AdamW with weight decay 0, i.e. Adam (``beta2`` may be
    traced), with the learning rate, ``b1`` and ``eps`` of ``optimizer_config``."""
    return optax.adam(optimizer_config.learning_rate, b1=optimizer_config.b1, b2=beta2,
                      eps=optimizer_config.eps)


def train_all(config, progress: bool) -> dict:
    """Every method x seed as one jitted, vmapped program, called once per ``log_every``
    steps; history: name -> [methods, seeds, steps // log_every]. Members of a seed share
    the split and the initial parameters."""
    modulus, hidden = config.data.modulus, config.model.hidden
    steps, log_every = config.train.steps, config.train.log_every
    methods = methods_of(config)
    rngs = [np.random.default_rng(seed) for seed in config.train.seeds]
    tasks = [split(rng, modulus, config.data.train_fraction) for rng in rngs]
    task = jax.tree.map(lambda *x: jnp.stack(x), *tasks)
    params = jax.tree.map(lambda *x: jnp.stack(x),
                          *[init_mlp(rng, modulus, hidden) for rng in rngs])
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(methods), *x.shape)), params)
    # beta2 is not in Adam's state
    opt_state = jax.vmap(jax.vmap(optimizer_for(config.optimizer, 0.99).init))(params)
    carry = (params, opt_state)
    method = tuple(jnp.asarray([m[i] for m in methods.values()], dtype)
                    for i, dtype in enumerate((jnp.int32, jnp.float32, jnp.float32)))
    # inner vmap: seeds (task, carry); outer: methods (carry, method)
    advance = make_advance(log_every, config.optimizer)
    advance_all = jax.jit(jax.vmap(jax.vmap(advance, in_axes=(0, 0, None)),
                                   in_axes=(None, 0, 0)))
    precision = config.train.matmul_precision
    history = []
    with jax.enable_x64(True), (  # x64: the reference's float64 StableMax loss
            contextlib.nullcontext() if precision == "default"
            else jax.default_matmul_precision(precision)):
        for _ in tqdm(range(steps // log_every), desc=f"grokking p={modulus}",
                      disable=not progress, unit=f"x{log_every} steps", dynamic_ncols=True):
            carry, metrics = advance_all(task, carry, method)
            history.append(jax.device_get(metrics))
    assert all(leaf.dtype != jnp.float64 for leaf in jax.tree.leaves(carry))
    return {key: np.stack([h[key] for h in history], -1) for key in history[0]}


HISTORY = (
    "The first full run (same scale and rules) had three variants and computed the StableMax "
    "loss in float32: StableMax did not generalize (test accuracy 0.0 ± 0.0 %, DOES NOT "
    "AGREE; softmax AGREES, ⊥Adam AGREES). The reference's `utils.stablemax_cross_entropy` "
    "casts the logits to float64 before the loss, which that run missed; this run adds it as "
    "`StableMax CE` (the variant claim (b) is tested on) and keeps the float32 loss as "
    "`StableMax CE, float32 loss`. Nothing else changed. In float32 the StableMax loss of "
    "a training example also reaches exactly 0 once its logits are large (the SC column of "
    "the StableMax rows measures the softmax of their logits, which they do not train).")


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def claims(final_test: dict, final_sc: dict) -> list[Claim]:
    """The rules of the module docstring; dicts method -> [seeds] at the last logged step
    (a claim on a method that did not run is left out)."""
    verdicts = []
    if "softmax CE" in final_test:
        acc, acc_se = _mean_se(final_test["softmax CE"])
        sc, sc_se = _mean_se(final_sc["softmax CE"])
        verdicts.append(Claim(
            "with softmax CE and no weight decay, test accuracy stays low while Softmax "
            "Collapse rises", "mean final test accuracy + 2 SE < 0.5 and mean final training "
            "SC fraction - 2 SE > 0.5", bool(acc + 2 * acc_se < 0.5 and sc - 2 * sc_se > 0.5),
            f"test accuracy {100 * acc:.1f} ± {100 * acc_se:.1f} %, SC fraction "
            f"{100 * sc:.1f} ± {100 * sc_se:.1f} % (mean ± SE)"))
    for name in [n for n in GROKKERS if n in final_test]:
        acc, acc_se = _mean_se(final_test[name])
        verdicts.append(Claim(
            f"{name} reaches high test accuracy (groks) without weight decay",
            "mean final test accuracy - 2 SE > 0.9", bool(acc - 2 * acc_se > 0.9),
            f"test accuracy {100 * acc:.1f} ± {100 * acc_se:.1f} % (mean ± SE)"))
    return verdicts


def _plot(steps_logged, results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = (("tab:red", "-"), ("tab:blue", "-"), ("tab:green", "-"), ("tab:purple", "--"))
    for (name, r), (color, style) in zip(results.items(), styles):
        for ax, key in zip(axes, ("test_accuracy", "train_sc_fraction")):
            values = 100 * np.asarray(r[key])  # [seeds, logs]
            mean = values.mean(0)
            ax.plot(steps_logged, mean, color=color, linestyle=style, label=name)
            ax.fill_between(steps_logged, values.min(0), values.max(0), color=color, alpha=0.2)
    for ax, ylabel in zip(axes, ("test accuracy (%)", "training examples in SC (%)")):
        ax.set_xlabel("full-batch step")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("mean over seeds; band: min to max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config, out_dir: str, progress: bool) -> dict:
    modulus, steps, log_every = config.data.modulus, config.train.steps, config.train.log_every
    seeds, hidden = list(config.train.seeds), config.model.hidden
    if steps % log_every:
        raise ValueError(f"train.steps ({steps}) must be a multiple of train.log_every "
                         f"({log_every})")
    methods = methods_of(config)
    start = time.time()
    history = train_all(config, progress)
    seconds = time.time() - start
    steps_logged = list(range(log_every, steps + 1, log_every))
    results = {name: {key: history[key][v].tolist() for key in history}
               for v, name in enumerate(methods)}
    final = {key: {name: [row[-1] for row in r[key]] for name, r in results.items()}
             for key in history}
    verdicts = claims(final["test_accuracy"], final["train_sc_fraction"])
    rows = [[name, mean_std(final["train_accuracy"][name]),
             mean_std(final["test_accuracy"][name]),
             mean_std(final["train_sc_fraction"][name]),
             mean_std(np.max(r["test_accuracy"], 1)),
             mean_std(final["train_loss"][name], 1.0, 3)]
            for name, r in results.items()]
    table = markdown_table(["method", "train acc %", "test acc %", "train SC %",
                            "best test acc %", "train loss"], rows)
    fraction = config.data.train_fraction
    n_train = int(fraction * modulus ** 2)
    opt = config.optimizer
    text = "\n".join([
        "# Grokking modular addition without weight decay", "",
        f"Variant `{config.variant}`: (a + b) mod {modulus}: {n_train} of {modulus ** 2} pairs "
        f"for training (a random {100 * fraction:g}% per seed), MLP "
        f"{2 * modulus}-{hidden}-{hidden}-{modulus} (ReLU, no biases, float32), full-batch "
        f"Adam (lr {opt.learning_rate:g}, eps {opt.eps:g}, no weight decay), {steps} steps, "
        f"{len(seeds)} seeds, one vmapped program, {seconds:.0f} s. Values at the last step "
        "(mean ± std over seeds); SC: the fraction of training examples whose float32 softmax "
        "denominator rounds to exactly 1 (Softmax Collapse); best test acc: the best logged "
        "test accuracy. The whole protocol is `config.json` beside this file.", "", table, "",
        "## The paper's claims (Prieto et al. 2025, arXiv:2501.04697)", "",
        "Rules fixed before the full run:", "", *[c.line() for c in verdicts], "",
        "## Notes", "", HISTORY])
    payload = {"config": config.to_dict(), "train_size": n_train,
               "methods": {name: {"loss": LOSSES[loss], "perpendicular_gradient": bool(perp),
                                  "beta2": b2}
                           for name, (loss, perp, b2) in methods.items()},
               "seconds": seconds, "logged_steps": steps_logged, "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(steps_logged, results, os.path.join(out_dir, "grokking.png"))
    return payload
