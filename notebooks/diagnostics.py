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
# # Diagnostics: Hessian spectrum, loss landscape, calibration
#
# Two MLPs trained on digits, one with plain SGD and one with SAM (sharpness-aware
# minimization, Foret et al. 2021: `make_step(..., perturbation=sam())`), compared with the
# tools of `jaxreg.diagnostics`: the top Hessian eigenvalue (power iteration on
# Hessian-vector products), the Hutchinson trace, the eigenvalue density by stochastic
# Lanczos quadrature (Ghorbani et al. 2019), filter-normalized loss slices (Li et al. 2018)
# and the expected calibration error. None of them builds the Hessian: each costs a few
# Hessian-vector products.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from jaxreg import data, diagnostics, losses, models, train
from jaxreg.optim import sam

train_set, test_set = data.load_digits("train"), data.load_digits("test")
model = models.mlp((8, 8, 1), num_outputs=10, hidden=(64, 64))


def objective(params, batch, hparams, key):
    logits = model.apply(params, batch["image"])
    return {"cross_entropy": losses.cross_entropy(logits, batch["label"]).mean()}


def trained(perturbation):
    optimizer = optax.sgd(0.05, momentum=0.9)
    state = train.init_state(model.init(jax.random.PRNGKey(0)), optimizer,
                             key=jax.random.PRNGKey(1))
    step = train.make_step(objective, optimizer, perturbation=perturbation)
    state, _ = train.fit(step, state, train_set, epochs=20, batch_size=64, seed=0,
                         progress=False)
    return state.params


params = {"SGD": trained(None), "SAM": trained(sam(rho=0.1))}

# %% [markdown]
# ## Curvature at the end of training
#
# The training loss on the whole training set, as a function of the parameters alone, is
# what the Hessian tools take.

# %%
images, labels = jnp.asarray(train_set["image"]), jnp.asarray(train_set["label"])


def training_loss(p):
    return losses.cross_entropy(model.apply(p, images), labels).mean()


key = jax.random.PRNGKey(2)
curvature = {}
for name, p in params.items():
    top, _ = jax.jit(lambda q: diagnostics.hessian_top_eigenvalue(
        training_loss, q, key, num_iterations=50))(p)
    trace = jax.jit(lambda q: diagnostics.hessian_trace(
        training_loss, q, key, num_samples=50))(p)
    curvature[name] = (float(top), float(trace))
    print(f"{name}: top eigenvalue {float(top):.3f}, Hutchinson trace {float(trace):.2f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
grid = np.linspace(-0.5, max(top for top, _ in curvature.values()) * 1.2, 400)
for name, p in params.items():
    nodes, weights = jax.jit(lambda q: diagnostics.hessian_spectral_density(
        training_loss, q, key, num_iterations=40))(p)
    density = diagnostics.spectral_density(nodes, weights, grid, variance=1e-3)
    ax.semilogy(grid, np.maximum(density, 1e-6), label=name)
ax.set(xlabel="eigenvalue", ylabel="density", title="Hessian eigenvalue density (SLQ)")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## Loss landscape along a filter-normalized direction
#
# Li et al. scale each filter of a random direction to the norm of the corresponding filter
# of the weights, so that slices of networks with different weight scales are comparable.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for name, p in params.items():
    line = diagnostics.loss_landscape(training_loss, p, jax.random.PRNGKey(3), span=1.0,
                                      num_points=25)
    axes[0].plot(line["steps"], line["losses"], label=name)
axes[0].set(xlabel="step along the direction", ylabel="training loss", title="1-D slices")
axes[0].legend()
plane = diagnostics.loss_landscape(training_loss, params["SGD"], jax.random.PRNGKey(4),
                                   span=1.0, num_points=15, dims=2)
diagnostics.plot_landscape(plane, ax=axes[1])
axes[1].set_title("SGD: a 2-D slice")
fig.tight_layout()

# %% [markdown]
# ## Calibration on the test set

# %%
test_x, test_y = jnp.asarray(test_set["image"]), jnp.asarray(test_set["label"])
for name, p in params.items():
    logits = model.apply(p, test_x)
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_y))
    ece = float(diagnostics.expected_calibration_error(logits, test_y))
    aurc = float(diagnostics.aurc(logits, test_y))
    print(f"{name}: test accuracy {accuracy:.3f}, ECE {ece:.4f}, AURC {aurc:.4f}")
