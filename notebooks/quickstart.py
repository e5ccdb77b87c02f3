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
# # Quickstart: a loss, a regularizer and an optimizer in one jitted step
#
# An objective returns **named terms**; `jaxreg.train.make_step` turns them into one pure
# `(state, batch) -> (state, metrics)` function that `jax.jit` compiles, `jax.vmap` sweeps and
# `jaxreg.train.fit` checkpoints. Here: an MLP on scikit-learn's digits with 40 % of the
# training labels flipped, the generalized cross-entropy (Zhang & Sabuncu 2018) as the loss,
# an L2 penalty on the kernels and the confidence penalty (Pereyra et al. 2017) as
# regularizers, and Adam.

# %%
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxreg import data, losses, models, regularizers, train

train_set, test_set = data.load_digits("train"), data.load_digits("test")
noisy = data.symmetric_noise(train_set["label"], 0.4, 10, seed=0)
train_set = {**train_set, "label": noisy}
print({k: v.shape for k, v in train_set.items()}, "noise:",
      data.noise_report(data.load_digits("train")["label"], noisy, 10)["noise_rate"])

# %% [markdown]
# ## The objective: named terms
#
# Every hyperparameter comes from `hparams`, so it may be a traced array: the same objective
# serves one run and a vmapped grid.

# %%
model = models.mlp((8, 8, 1), num_outputs=10, hidden=(64, 64))


def objective(params, batch, hparams, key):
    logits = model.apply(params, batch["image"])
    return {
        "gce": losses.generalized_cross_entropy(logits, batch["label"], q=hparams["q"]).mean(),
        "l2": regularizers.l2(params, strength=hparams["l2"]),
        "confidence": regularizers.confidence_penalty(logits, strength=0.1).mean(),
    }


optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=3e-3)


def new_state():
    return train.init_state(model.init(jax.random.PRNGKey(0)), optimizer,
                            key=jax.random.PRNGKey(1), hparams={"q": 0.7, "l2": 1e-4})


state = new_state()
step = jax.jit(train.make_step(objective, optimizer))
state, metrics = step(state, {k: v[:64] for k, v in train_set.items()})
{k: float(v) for k, v in metrics.items()}

# %% [markdown]
# ## Train, evaluate, checkpoint, resume
#
# `fit` draws the batches as a deterministic function of `(seed, epoch)` and keeps the PRNG
# key in the state, so a run stopped after 60 steps and resumed from its checkpoint ends with
# exactly the parameters of an uninterrupted run. The jitted step donates the state's buffers
# (no second copy of the weights in memory), so each run starts from a `new_state()`.

# %%
test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])


def evaluate(state):
    predictions = jnp.argmax(model.apply(state.params, test_x), -1)
    return {"test_accuracy": jnp.mean(predictions == test_y)}


step = train.make_step(objective, optimizer)
run = dict(epochs=10, batch_size=64, seed=0, evaluate=evaluate, progress=False)
full, history = train.fit(step, new_state(), train_set, **run)

out_dir = tempfile.mkdtemp()
train.fit(step, new_state(), train_set, out_dir=out_dir, checkpoint_every=20, max_steps=60,
          **run)                                                  # stopped after 60 steps
resumed, _ = train.fit(step, new_state(), train_set, out_dir=out_dir, checkpoint_every=20,
                       **run)                                     # resumes from step 60
same = all(np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)))
print(f"test accuracy {history[-1]['eval/test_accuracy']:.3f}; resumed run identical: {same}")

# %% [markdown]
# ## A grid: 3 values of q x 2 L2 strengths x 3 seeds as one program
#
# `grid` vmaps the whole training run over configurations and seeds: 18 runs, one
# compilation.

# %%
def evaluate_member(state, member):
    return evaluate(state)


result = train.grid(objective, optimizer, model.init, train_set,
                    hparams=train.product(q=[0.1, 0.7, 1.0], l2=[0.0, 1e-3]),
                    seeds=[0, 1, 2], epochs=10, batch_size=64, evaluate=evaluate_member,
                    progress=False)
for row in result.summary("eval/test_accuracy"):
    print(f"q={row['q']:.1f} l2={row['l2']:g}: last {row['last_mean']:.3f} "
          f"± {row['last_std']:.3f}")

# %%
curves = result.history["eval/test_accuracy"]  # [configurations, seeds, epochs]
fig, ax = plt.subplots(figsize=(6, 3.5))
for k, config in enumerate(result.configs):
    ax.plot(np.arange(1, curves.shape[-1] + 1), curves[k].mean(0),
            label=f"q={config['q']:.1f}, l2={config['l2']:g}")
ax.set(xlabel="epoch", ylabel="test accuracy", title="GCE under 40 % label noise")
ax.legend(fontsize=7)
fig.tight_layout()
