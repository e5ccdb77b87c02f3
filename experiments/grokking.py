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
the one-hot product. Variants:

* ``softmax CE``: the cross-entropy of the softmax, in float32;
* ``StableMax CE``: ``jaxreg.losses.classification.stablemax_cross_entropy`` on the float32
  logits cast to float64, as the reference's ``utils.stablemax_cross_entropy`` does (the
  model, the gradient it receives and Adam stay float32);
* ``softmax CE + ⊥Adam``: the softmax cross-entropy with
  ``jaxreg.optim.weight_decay.orthogonal_gradient`` applied to the gradient before Adam
  (the paper's ⊥AdamW with weight decay 0, the reference's ``OrthoGrad`` wrapper);
* ``StableMax CE, float32 loss``: the same StableMax loss computed in float32 (not in the
  paper; added after the first full run, see the results page).

All variants x seeds train as one jitted program: ``vmap`` over variants and seeds of a
``lax.scan`` over ``--log-every`` steps, called once per logging interval (the variant is a
traced flag selecting the loss and the projection, and a traced ``beta2``; the members of a
seed share the split and the initial parameters). Every ``--log-every`` steps: test
accuracy, training accuracy, and the fraction of training examples in Softmax Collapse
(``jaxreg.diagnostics.collapse``, float32, without labels: the reference logger's
``softmax_collapse``, which it also computes on the logits of the StableMax runs, where the
softmax is not what is trained).

Scale (fixed from the compute budget before any run, not from results): the paper uses
``p = 113`` and 80,000 full-batch steps for softmax and StableMax; here ``--modulus`` 41
(1681 pairs, 672 for training) and ``--steps`` 4000, sized for a few minutes on two CPU
cores (4 variants x 3 seeds); ``--modulus 113 --steps 80000`` is the paper's scale (the
reference runs ⊥AdamW for 300 steps, softmax and StableMax for 80,000).

Claims checked, with rules fixed before the full run (final = the last logged step; mean and
standard error (SE) over seeds):
(a) with softmax CE and no weight decay the model does not generalize while SC rises:
    mean final test accuracy + 2 SE < 0.5 and mean final training SC fraction - 2 SE > 0.5;
(b) StableMax and the perpendicular gradient grok without weight decay: for each, mean final
    test accuracy - 2 SE > 0.9.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxreg.diagnostics.collapse import softmax_collapse_fraction
from jaxreg.losses.classification import stablemax_cross_entropy
from jaxreg.optim.weight_decay import orthogonal_gradient
from jaxreg.protocol.report import (
    Claim,
    experiment_parser,
    markdown_table,
    mean_std,
    run_size,
    write_results,
)

HIDDEN = 200
LEARNING_RATE = 0.01
ADAM_EPS = 1e-25
TRAIN_FRACTION = 0.4
# name -> (loss index into LOSSES, uses the perpendicular gradient, Adam beta2), from the
# reference's Figure 1 commands.
VARIANTS = {"softmax CE": (0, 0, 0.99),
            "StableMax CE": (1, 0, 0.999),
            "softmax CE + ⊥Adam": (0, 1, 0.99),
            "StableMax CE, float32 loss": (2, 0, 0.999)}
LOSSES = ("softmax (float32)", "StableMax (float64)", "StableMax (float32)")  # by loss index
GROKKERS = ("StableMax CE", "softmax CE + ⊥Adam")  # claim (b)


def modular_addition(modulus: int):
    """All pairs ``(a, b)`` ``[p^2, 2]`` (int32) and their labels ``(a + b) mod p``."""
    a, b = np.meshgrid(np.arange(modulus), np.arange(modulus), indexing="ij")
    pairs = np.stack([a.ravel(), b.ravel()], 1).astype(np.int32)
    return jnp.asarray(pairs), jnp.asarray((pairs.sum(1) % modulus).astype(np.int32))


def init_mlp(rng: np.random.Generator, modulus: int, hidden: int = HIDDEN) -> list:
    """Kernels of ``2p-hidden-hidden-p`` (no biases), ``U(+-1/sqrt(fan_in))`` as
    ``torch.nn.Linear``'s default."""
    sizes = [2 * modulus, hidden, hidden, modulus]
    return [jnp.asarray(rng.uniform(-1.0, 1.0, (n_in, n_out)) / np.sqrt(n_in), jnp.float32)
            for n_in, n_out in zip(sizes[:-1], sizes[1:])]


def split(rng: np.random.Generator, modulus: int) -> dict:
    """A random ``TRAIN_FRACTION`` of the pairs for training, the rest for testing."""
    pairs, labels = modular_addition(modulus)
    order = rng.permutation(modulus ** 2)
    n_train = int(TRAIN_FRACTION * modulus ** 2)
    return {"train": (pairs[order[:n_train]], labels[order[:n_train]]),
            "test": (pairs[order[n_train:]], labels[order[n_train:]])}


def apply_mlp(params, pairs):
    """Logits ``[B, p]``: the one-hot input times ``W1`` is the sum of two rows of it."""
    w1, w2, w3 = params
    modulus = w3.shape[1]
    h = jax.nn.relu(w1[pairs[:, 0]] + w1[modulus + pairs[:, 1]])
    return jax.nn.relu(h @ w2) @ w3


def make_advance(log_every: int):
    """``advance(task, carry, variant) -> (carry, metrics)`` for one member: ``log_every``
    full-batch steps from ``carry = (params, adam_state)`` on ``task`` (see ``split``), then
    the metrics. ``variant`` is ``(loss, perpendicular, beta2)`` as traced scalars (``loss``
    indexes ``LOSSES``); trace it with x64 enabled (the float64 StableMax loss)."""
    project = orthogonal_gradient()

    def loss_fn(params, task, loss):
        x, y = task["train"]
        logits = apply_mlp(params, x)
        per_example = [
            optax.losses.softmax_cross_entropy_with_integer_labels(logits, y),
            stablemax_cross_entropy(logits.astype(jnp.float64), y).astype(jnp.float32),
            stablemax_cross_entropy(logits, y)]
        return jnp.select([loss == i for i in range(len(LOSSES))], per_example).mean()

    def advance(task, carry, variant):
        loss, perpendicular, beta2 = variant
        optimizer = optimizer_for(beta2)

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


def optimizer_for(beta2) -> optax.GradientTransformation:
    """The reference's optimizer: AdamW with weight decay 0, i.e. Adam (``beta2`` may be
    traced)."""
    return optax.adam(LEARNING_RATE, b1=0.9, b2=beta2, eps=ADAM_EPS)


def train_all(modulus: int, steps: int, log_every: int, seeds, progress: bool) -> dict:
    """Every variant x seed as one jitted, vmapped program, called once per ``log_every``
    steps; history: name -> [variants, seeds, steps // log_every]. Members of a seed share
    the split and the initial parameters."""
    rngs = [np.random.default_rng(seed) for seed in seeds]
    tasks = [split(rng, modulus) for rng in rngs]
    task = jax.tree.map(lambda *x: jnp.stack(x), *tasks)
    params = jax.tree.map(lambda *x: jnp.stack(x), *[init_mlp(rng, modulus) for rng in rngs])
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (len(VARIANTS), *x.shape)), params)
    opt_state = jax.vmap(jax.vmap(optimizer_for(0.99).init))(params)  # beta2 not in init
    carry = (params, opt_state)
    variant = tuple(jnp.asarray([v[i] for v in VARIANTS.values()], dtype)
                    for i, dtype in enumerate((jnp.int32, jnp.float32, jnp.float32)))
    # inner vmap: seeds (task, carry); outer: variants (carry, variant)
    advance_all = jax.jit(jax.vmap(jax.vmap(make_advance(log_every), in_axes=(0, 0, None)),
                                   in_axes=(None, 0, 0)))
    history = []
    with jax.enable_x64(True):  # traced with x64 for the reference's float64 StableMax loss
        for _ in tqdm(range(steps // log_every), desc=f"grokking p={modulus}",
                      disable=not progress, unit=f"x{log_every} steps", dynamic_ncols=True):
            carry, metrics = advance_all(task, carry, variant)
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
    """The rules of the module docstring; dicts variant -> [seeds] at the last logged step."""
    acc, acc_se = _mean_se(final_test["softmax CE"])
    sc, sc_se = _mean_se(final_sc["softmax CE"])
    verdicts = [Claim(
        "with softmax CE and no weight decay, test accuracy stays low while Softmax Collapse "
        "rises", "mean final test accuracy + 2 SE < 0.5 and mean final training SC fraction "
        "- 2 SE > 0.5", bool(acc + 2 * acc_se < 0.5 and sc - 2 * sc_se > 0.5),
        f"test accuracy {100 * acc:.1f} ± {100 * acc_se:.1f} %, SC fraction "
        f"{100 * sc:.1f} ± {100 * sc_se:.1f} % (mean ± SE)")]
    for name in GROKKERS:
        acc, acc_se = _mean_se(final_test[name])
        verdicts.append(Claim(
            f"{name} reaches high test accuracy (groks) without weight decay",
            "mean final test accuracy - 2 SE > 0.9", bool(acc - 2 * acc_se > 0.9),
            f"test accuracy {100 * acc:.1f} ± {100 * acc_se:.1f} % (mean ± SE)"))
    return verdicts


def _plot(steps_logged, variants, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    styles = (("tab:red", "-"), ("tab:blue", "-"), ("tab:green", "-"), ("tab:purple", "--"))
    for (name, r), (color, style) in zip(variants.items(), styles):
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


def main(argv=None) -> dict:
    parser = experiment_parser("grokking", __doc__, seeds=3, epochs=4000, batch_size=0,
                               quick_epochs=20,
                               quick="p = 11, ")
    parser.add_argument("--modulus", type=int, default=41, help="p (default 41; paper 113)")
    parser.add_argument("--log-every", type=int, default=100,
                        help="steps between measurements (default 100)")
    parser.add_argument("--steps", dest="epochs", type=int, default=4000,
                        help="full-batch steps (default 4000; --epochs is the same)")
    args = parser.parse_args(argv)
    seeds, steps = run_size(args)
    modulus = 11 if args.quick else args.modulus
    log_every = 10 if args.quick else args.log_every
    if steps % log_every:
        parser.error(f"--steps ({steps}) must be a multiple of --log-every ({log_every})")
    start = time.time()
    history = train_all(modulus, steps, log_every, seeds, not args.no_progress)
    seconds = time.time() - start
    steps_logged = list(range(log_every, steps + 1, log_every))
    variants = {name: {key: history[key][v].tolist() for key in history}
                for v, name in enumerate(VARIANTS)}
    final = {key: {name: [row[-1] for row in r[key]] for name, r in variants.items()}
             for key in history}
    verdicts = claims(final["test_accuracy"], final["train_sc_fraction"])
    rows = [[name, mean_std(final["train_accuracy"][name]),
             mean_std(final["test_accuracy"][name]),
             mean_std(final["train_sc_fraction"][name]),
             mean_std(np.max(r["test_accuracy"], 1)),
             mean_std(final["train_loss"][name], 1.0, 3)]
            for name, r in variants.items()]
    table = markdown_table(["variant", "train acc %", "test acc %", "train SC %",
                            "best test acc %", "train loss"], rows)
    n_train = int(TRAIN_FRACTION * modulus ** 2)
    text = "\n".join([
        "# Grokking modular addition without weight decay", "",
        f"(a + b) mod {modulus}: {n_train} of {modulus ** 2} pairs for training (a random 40% "
        f"per seed), MLP {2 * modulus}-{HIDDEN}-{HIDDEN}-{modulus} (ReLU, no biases, float32), "
        f"full-batch Adam (lr {LEARNING_RATE}, eps {ADAM_EPS:g}, no weight decay), {steps} "
        f"steps, {len(seeds)} seeds, one vmapped program, {seconds:.0f} s. Values at the last "
        "step (mean ± std over seeds); SC: the fraction of training examples whose float32 "
        "softmax denominator rounds to exactly 1 (Softmax Collapse); best test acc: the best "
        "logged test accuracy.", "", table, "",
        "## The paper's claims (Prieto et al. 2025, arXiv:2501.04697)", "",
        "Rules fixed before the full run:", "", *[c.line() for c in verdicts], "",
        "## Notes", "", HISTORY,
        *(["", "(--quick run: too small to test the claims.)"] if args.quick else [])])
    payload = {"modulus": modulus, "train_size": n_train, "steps": steps,
               "log_every": log_every, "seeds": seeds, "hidden": HIDDEN,
               "learning_rate": LEARNING_RATE, "adam_eps": ADAM_EPS,
               "variants_config": {name: {"loss": LOSSES[loss], "perpendicular_gradient":
                                          bool(perp), "beta2": b2}
                                   for name, (loss, perp, b2) in VARIANTS.items()},
               "seconds": seconds, "logged_steps": steps_logged, "variants": variants,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(args.out, text, payload)
    _plot(steps_logged, variants, os.path.join(args.out, "grokking.png"))
    return payload
