"""A physics-informed network for 1-D Poisson, with conflict-free and multi-objective updates.

Problem: ``-u''(x) = f(x)`` on [0, 1], ``u(0) = u(1) = 0``, with the known solution
``u(x) = sin(2 pi x) + 0.1 sin(16 pi x)`` (a low and a high frequency: the second is what
plain PINN training learns slowly). Network: MLP 1-32-32-32-1 with tanh; ``u''`` by nested
``jax.grad``. Two loss terms: the mean squared residual on a batch of collocation points and
the squared boundary values. Trained with: their sum (Adam), PCGrad (+Adam), ConFIG (+Adam),
M-ConFIG (+SGD, as its authors advise) and MultiAdam (one Adam per loss), same learning rate
1e-3, seeds vmapped. Metric: relative L2 error ``||u_theta - u|| / ||u||`` on 1001 points,
over training.

Claim checked (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", 2024, arXiv 2408.11104): ConFIG and M-ConFIG train PINNs to a lower error than
the summed loss and than PCGrad and MultiAdam. Verdict per pair: lower final error by more
than twice the standard error of the difference over seeds.
"""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import multiobjective, optim, train
from jaxreg.protocol.report import (
    Claim,
    experiment_parser,
    markdown_table,
    mean_std,
    run_size,
    write_results,
)

LR = 1e-3


def solution(x):
    return jnp.sin(2 * jnp.pi * x) + 0.1 * jnp.sin(16 * jnp.pi * x)


def source(x):
    """``f = -u''`` for the solution above."""
    return (2 * jnp.pi) ** 2 * jnp.sin(2 * jnp.pi * x) \
        + 0.1 * (16 * jnp.pi) ** 2 * jnp.sin(16 * jnp.pi * x)


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.asarray(x)[..., None]
        for _ in range(3):
            h = jnp.tanh(nn.Dense(32)(h))
        return nn.Dense(1)(h)[..., 0]


NET = _Net()


def u_fn(params):
    """``x (scalar) -> u_theta(x)``."""
    return lambda x: NET.apply(params, x)


def objective(params, batch, hparams, key):
    u = u_fn(params)
    u_xx = jax.vmap(jax.grad(jax.grad(u)))(batch["x"])
    residual = -u_xx - source(batch["x"])
    boundary = jnp.stack([u(0.0), u(1.0)])
    return {"residual": jnp.mean(residual ** 2), "boundary": jnp.mean(boundary ** 2)}


def methods() -> dict:
    """name -> (optimizer, aggregator or None)."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=LR)
    return {
        "sum": (adam, None),
        "pcgrad": (adam, multiobjective.pcgrad(num_objectives=2)),
        "config": (adam, multiobjective.config(num_objectives=2)),
        "momentum_config": (optax.inject_hyperparams(optax.sgd)(learning_rate=LR),
                            multiobjective.momentum_config(num_objectives=2)),
        # MultiAdam is the optimizer: it takes the per-loss gradients and returns the update.
        "multi_adam": (optax.identity(), optax.inject_hyperparams(
            optim.multi_adam, static_args=("num_objectives",))(learning_rate=LR,
                                                                num_objectives=2)),
    }


def run_method(name, optimizer, aggregator, *, seeds, epochs, collocation, batch_size,
               progress=True):
    grid_x = jnp.linspace(0.0, 1.0, 1001)
    exact = solution(grid_x)

    def evaluate(state, member):
        pred = jax.vmap(u_fn(state.params))(grid_x)
        return {"relative_l2": jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)}

    points = np.random.default_rng(0).uniform(0.0, 1.0, collocation).astype(np.float32)
    return train.grid(objective, optimizer, lambda key: NET.init(key, jnp.zeros(())),
                      {"x": points}, hparams={"learning_rate": [LR]}, seeds=seeds, epochs=epochs,
                      batch_size=batch_size, evaluate=evaluate, aggregator=aggregator,
                      progress=progress, desc=name)


def _better(errors, a, b):
    """Does method a end with a lower error than b (paired over seeds, > 2 standard errors)?"""
    diff = np.asarray(errors[b]) - np.asarray(errors[a])
    se = diff.std() / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    return bool(diff.mean() > 2 * se), float(diff.mean())


def main(argv=None) -> dict:
    parser = experiment_parser("pinn", __doc__, seeds=3, epochs=2000, batch_size=128,
                               quick_epochs=3)
    parser.add_argument("--collocation", type=int, default=512)
    args = parser.parse_args(argv)
    seeds, epochs = run_size(args)
    results, start = {}, time.time()
    for name, (optimizer, aggregator) in methods().items():
        t0 = time.time()
        result = run_method(name, optimizer, aggregator, seeds=seeds, epochs=epochs,
                            collocation=args.collocation, batch_size=args.batch_size,
                            progress=not args.no_progress)
        curve = result.history["eval/relative_l2"][0]  # [seeds, epochs]
        results[name] = {"final": curve[:, -1].tolist(), "best": curve.min(-1).tolist(),
                         "curve_mean": curve.mean(0).tolist(), "seconds": time.time() - t0}
    finals = {n: r["final"] for n, r in results.items()}
    verdicts = []
    for ours in ("config", "momentum_config"):
        for other in ("sum", "pcgrad", "multi_adam"):
            ok, gap = _better(finals, ours, other)
            verdicts.append(Claim(f"{ours} reaches a lower error than {other}",
                                  "paired final relative L2, mean difference > 2 standard errors",
                                  ok, f"{other} - {ours} = {100 * gap:+.2f} points of rel. L2"))
    rows = [[n, mean_std(r["final"], digits=2), mean_std(r["best"], digits=2),
             f"{r['seconds']:.0f}"] for n, r in results.items()]
    text = "\n".join([
        "# PINN: 1-D Poisson with two scales", "",
        f"{len(seeds)} seeds (vmapped), {epochs} epochs of {args.collocation // args.batch_size} "
        f"steps, {time.time() - start:.0f} s. Relative L2 error in %, mean ± std over seeds.", "",
        markdown_table(["method", "final rel. L2 %", "best rel. L2 %", "s"], rows), "",
        "## The paper's claim", "", *[c.line() for c in verdicts],
        *(["", "(--quick run: too short to test the claim.)"] if args.quick else [])])
    payload = {"seeds": seeds, "epochs": epochs, "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(args.out, text, payload)
    _plot(results, os.path.join(args.out, "relative_l2.png"))
    return payload


def _plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.semilogy(np.arange(1, len(r["curve_mean"]) + 1), r["curve_mean"], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("relative L2 error (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
