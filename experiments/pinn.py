"""A physics-informed network for 1-D Poisson, with conflict-free and multi-objective updates.

Problem: ``-u''(x) = f(x)`` on [0, 1], ``u(0) = u(1) = 0``, with the known solution
``u(x) = sin(2 pi x) + 0.1 sin(16 pi x)`` (a low and a high frequency: the second is what
plain PINN training learns slowly). Network: MLP 1-32-32-32-1 with tanh; ``u''`` by nested
``jax.grad``. Two loss terms: the mean squared residual on a batch of collocation points (512
uniform points, batch 128) and the squared boundary values. Trained with: their sum (Adam),
PCGrad (+Adam), ConFIG (+Adam), M-ConFIG (+SGD, as its authors advise) and MultiAdam (one Adam
per loss), same learning rate 1e-3, 2000 epochs, 3 seeds vmapped. Metric: relative L2 error
``||u_theta - u|| / ||u||`` on 1001 points, over training.

Claim checked (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", 2024, arXiv 2408.11104): ConFIG and M-ConFIG train PINNs to a lower error than
the summed loss and than PCGrad and MultiAdam. Verdict per pair: lower final error by more
than twice the standard error of the difference over seeds.

The protocol is one config (``get_config``; any field can be set with ``--set``, e.g.
``--set model.hidden=64,64`` or ``--set methods=sum,config``). One variant, ``default``: the
setup above. ``--quick``: 2 seeds, 3 epochs.
"""

from __future__ import annotations

import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxreg import multiobjective, optim, train
from jaxreg.protocol import config as config_lib
from jaxreg.protocol.report import Claim, markdown_table, mean_std, write_results

VARIANTS = ("default",)
METHODS = ("sum", "pcgrad", "config", "momentum_config", "multi_adam")
OURS, OTHERS = ("config", "momentum_config"), ("sum", "pcgrad", "multi_adam")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    """The whole protocol of ``jaxreg run pinn`` (see the module doc)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown pinn variant {variant!r}; variants: {', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.variant = variant
    # collocation points uniform on [0, 1] (drawn once with collocation_seed); the error is
    # measured on eval_points evenly spaced points
    config.data = dict(collocation=512, collocation_seed=0, eval_points=1001)
    config.model = dict(hidden=(32, 32, 32))  # tanh MLP 1-hidden-1
    # one learning rate for every method; Adam's moments for sum, PCGrad and ConFIG (plain
    # SGD under M-ConFIG, whose aggregator has its own moments); MultiAdam's own moments
    config.optimizer = dict(learning_rate=1e-3, adam_b1=0.9, adam_b2=0.999,
                            momentum_config_beta1=0.9, momentum_config_beta2=0.999,
                            multi_adam_b1=0.99, multi_adam_b2=0.99)
    config.methods = METHODS
    config.train = dict(epochs=2000, batch_size=128, seeds=(0, 1, 2))
    return config


def quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Two seeds, three epochs: checks the pipeline, not the claim."""
    return config_lib.replace(config, {"train.epochs": 3, "train.seeds": (0, 1)})


def solution(x):
    return jnp.sin(2 * jnp.pi * x) + 0.1 * jnp.sin(16 * jnp.pi * x)


def source(x):
    """``f = -u''`` for the solution above."""
    return (2 * jnp.pi) ** 2 * jnp.sin(2 * jnp.pi * x) \
        + 0.1 * (16 * jnp.pi) ** 2 * jnp.sin(16 * jnp.pi * x)


class Net(nn.Module):
    """``x (scalar) -> u_theta(x)``: a tanh MLP with the widths ``hidden``."""
    hidden: tuple[int, ...] = (32, 32, 32)

    @nn.compact
    def __call__(self, x):
        h = jnp.asarray(x)[..., None]
        for width in self.hidden:
            h = jnp.tanh(nn.Dense(width)(h))
        return nn.Dense(1)(h)[..., 0]


def u_fn(net, params):
    """``x (scalar) -> u_theta(x)``."""
    return lambda x: net.apply(params, x)


def make_objective(net):
    def objective(params, batch, hparams, key):
        u = u_fn(net, params)
        u_xx = jax.vmap(jax.grad(jax.grad(u)))(batch["x"])
        residual = -u_xx - source(batch["x"])
        boundary = jnp.stack([u(0.0), u(1.0)])
        return {"residual": jnp.mean(residual ** 2), "boundary": jnp.mean(boundary ** 2)}

    return objective


def methods(config=None) -> dict:
    """name -> (optimizer, aggregator or None), for the config's ``methods`` (all five with
    the default config)."""
    config = get_config() if config is None else config
    o = config.optimizer
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=o.learning_rate, b1=o.adam_b1,
                                                b2=o.adam_b2)
    every = {
        "sum": lambda: (adam, None),
        "pcgrad": lambda: (adam, multiobjective.pcgrad(num_objectives=2)),
        "config": lambda: (adam, multiobjective.config(num_objectives=2)),
        "momentum_config": lambda: (
            optax.inject_hyperparams(optax.sgd)(learning_rate=o.learning_rate),
            multiobjective.momentum_config(beta1=o.momentum_config_beta1,
                                           beta2=o.momentum_config_beta2, num_objectives=2)),
        # MultiAdam is the optimizer: it takes the per-loss gradients and returns the update.
        "multi_adam": lambda: (optax.identity(), optax.inject_hyperparams(
            optim.multi_adam, static_args=("num_objectives",))(
                learning_rate=o.learning_rate, b1=o.multi_adam_b1, b2=o.multi_adam_b2,
                num_objectives=2)),
    }
    return {name: every[name]() for name in config.methods}


def run_method(name, optimizer, aggregator, config, *, progress=True):
    net, d, t = Net(tuple(config.model.hidden)), config.data, config.train
    grid_x = jnp.linspace(0.0, 1.0, d.eval_points)
    exact = solution(grid_x)

    def evaluate(state, member):
        pred = jax.vmap(u_fn(net, state.params))(grid_x)
        return {"relative_l2": jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)}

    points = np.random.default_rng(d.collocation_seed).uniform(
        0.0, 1.0, d.collocation).astype(np.float32)
    return train.grid(make_objective(net), optimizer, lambda key: net.init(key, jnp.zeros(())),
                      {"x": points}, hparams={"learning_rate": [config.optimizer.learning_rate]},
                      **config_lib.grid_schedule(t), evaluate=evaluate, aggregator=aggregator,
                      progress=progress, desc=name)


def _better(errors, a, b):
    """Does method a end with a lower error than b (paired over seeds, > 2 standard errors)?"""
    diff = np.asarray(errors[b]) - np.asarray(errors[a])
    se = diff.std() / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
    return bool(diff.mean() > 2 * se), float(diff.mean())


def claims(finals: dict) -> list[Claim]:
    """ConFIG and M-ConFIG against each other method that ran (paired final errors)."""
    verdicts = []
    for ours in [m for m in OURS if m in finals]:
        for other in [m for m in OTHERS if m in finals]:
            ok, gap = _better(finals, ours, other)
            verdicts.append(Claim(f"{ours} reaches a lower error than {other}",
                                  "paired final relative L2, mean difference > 2 standard errors",
                                  ok, f"{other} - {ours} = {100 * gap:+.2f} points of rel. L2"))
    return verdicts


def run(config, out_dir: str, progress: bool) -> dict:
    t = config.train
    results, start = {}, time.time()
    for name, (optimizer, aggregator) in methods(config).items():
        t0 = time.time()
        result = run_method(name, optimizer, aggregator, config, progress=progress)
        curve = result.history["eval/relative_l2"][0]  # [seeds, epochs]
        results[name] = {"final": curve[:, -1].tolist(), "best": curve.min(-1).tolist(),
                         "curve_mean": curve.mean(0).tolist(), "seconds": time.time() - t0}
    verdicts = claims({n: r["final"] for n, r in results.items()})
    rows = [[n, mean_std(r["final"], digits=2), mean_std(r["best"], digits=2),
             f"{r['seconds']:.0f}"] for n, r in results.items()]
    hidden = "-".join(str(h) for h in config.model.hidden)
    text = "\n".join([
        "# PINN: 1-D Poisson with two scales", "",
        f"Variant `{config.variant}`: tanh MLP 1-{hidden}-1, learning rate "
        f"{config.optimizer.learning_rate}, {config.data.collocation} collocation points, "
        f"{len(t.seeds)} seeds (vmapped), {t.epochs} epochs of "
        f"{config.data.collocation // t.batch_size} steps (batch {t.batch_size}), "
        f"{time.time() - start:.0f} s. Relative L2 error in %, mean ± std over seeds. The "
        "whole protocol is `config.json` beside this file.", "",
        markdown_table(["method", "final rel. L2 %", "best rel. L2 %", "s"], rows), "",
        "## The paper's claim", "", *[c.line() for c in verdicts]])
    payload = {"config": config.to_dict(), "results": results,
               "claims": [c.__dict__ for c in verdicts]}
    write_results(out_dir, text, payload)
    _plot(results, os.path.join(out_dir, "relative_l2.png"))
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
