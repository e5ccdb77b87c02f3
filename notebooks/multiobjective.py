# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Multi-objective steps: aggregators on a conflicting problem
#
# With `aggregator=`, `jaxreg.train.make_step` differentiates each term of the objective
# separately (one forward pass, a VJP vmapped over the terms) and hands the stacked gradients
# to an aggregator from `jaxreg.multiobjective`, whose single update the optimizer applies.
#
# The problem: two quadratics in the plane whose minima differ and whose scales differ by
# 10x, so their gradients conflict and the mean is dominated by the larger one:
# `f_a(x) = ||x - a||^2 / 2`, `f_b(x) = 10 ||x - b||^2 / 2`. Every point on the segment
# between `a` and `b` is Pareto optimal.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxreg import multiobjective as mo
from jaxreg import train

A, B = jnp.array([-1.0, 0.0]), jnp.array([1.0, 0.0])


def objective(params, batch, hparams, key):
    x = params["x"]
    return {"a": 0.5 * jnp.sum((x - A) ** 2), "b": 5.0 * jnp.sum((x - B) ** 2)}


AGGREGATORS = {
    "mean": mo.mean(num_objectives=2),
    "MGDA": mo.mgda(num_objectives=2),
    "UPGrad": mo.upgrad(num_objectives=2),
    "CAGrad": mo.cagrad(num_objectives=2),
    "IMTL-G": mo.imtl_g(num_objectives=2),
    "PCGrad": mo.pcgrad(),
    "ConFIG": mo.config(),
}

# %% [markdown]
# Each aggregator trains from the same start with plain SGD; `metrics` carries every term,
# the cosine between the two gradients, and the weights of the aggregators that log them.

# %%
def trajectory(aggregator, steps=60, lr=0.05):
    optimizer = optax.sgd(lr)
    state = train.init_state({"x": jnp.array([0.0, 2.0])}, optimizer,
                             key=jax.random.PRNGKey(0), aggregator=aggregator)
    step = jax.jit(train.make_step(objective, optimizer, aggregator=aggregator,
                                   gradient_metrics=True))
    points, rows = [np.asarray(state.params["x"])], []
    for _ in range(steps):
        state, metrics = step(state, {})
        points.append(np.asarray(state.params["x"]))
        rows.append({k: float(v) for k, v in metrics.items()})
    return np.stack(points), rows


runs = {name: trajectory(agg) for name, agg in AGGREGATORS.items()}
for name, (points, rows) in runs.items():
    final = objective({"x": jnp.asarray(points[-1])}, {}, {}, None)
    print(f"{name:8s} x = ({points[-1][0]:+.3f}, {points[-1][1]:+.3f})  "
          f"f_a = {float(final['a']):.3f}  f_b = {float(final['b']):.3f}  "
          f"cos(a, b) at the last step = {rows[-1]['cos/a,b']:+.2f}")

# %% [markdown]
# The trajectories, and the weight each aggregator gives `f_a` over the steps (MGDA, UPGrad,
# CAGrad and IMTL-G pick weights from the Gramian `G = J J^T`; the mean keeps 1/2).

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
grid = np.linspace(-1.6, 1.6, 120)
X, Y = np.meshgrid(grid, np.linspace(-0.4, 2.2, 100))
left.contour(X, Y, 0.5 * ((X + 1) ** 2 + Y ** 2) + 5 * ((X - 1) ** 2 + Y ** 2), 15,
             colors="0.85", linewidths=0.6)
left.plot([-1, 1], [0, 0], "k-", lw=3, alpha=0.2, label="Pareto set")
for name, (points, _) in runs.items():
    left.plot(points[:, 0], points[:, 1], lw=1.4, label=name)
left.set(xlabel="x1", ylabel="x2", title="trajectories from (0, 2)")
left.legend(fontsize=7)
for name, (_, rows) in runs.items():
    if "weight/a" in rows[0]:
        share = [r["weight/a"] / (r["weight/a"] + r["weight/b"]) for r in rows]
        right.plot(share, label=name)
right.set(xlabel="step", ylabel="weight of f_a / (sum of weights)",
          title="the weights the Gramian-based aggregators choose")
right.legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# UPGrad and MGDA never increase either objective to first order (they are
# *non-conflicting*); the mean and CAGrad follow the larger objective towards `b`; ConFIG
# stops where the two unit gradients cancel. Near the Pareto set the two gradients become
# anti-parallel and the Gramian singular: IMTL-G's weights, `G^+ diag(G)^(1/2)` normalized,
# are then ill-conditioned, and its last step jumps along the segment (torchjd's IMTL-G uses
# the same pseudo-inverse). The properties each
# aggregator satisfies are in the catalog (`jaxreg show upgrad`), and
# `tests/multiobjective/test_contract.py` checks them on a zoo of Jacobians.
