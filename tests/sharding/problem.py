"""A small classifier and three objectives shared by the sharding tests: a summed one, two
conflicting tasks for the aggregators, and a batch-level InfoNCE loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

IN, HIDDEN, CLASSES, BATCH, STEPS = 16, 32, 8, 16, 4


def init_params(key=None):
    key = jax.random.PRNGKey(0) if key is None else key
    k1, k2, k3 = jax.random.split(key, 3)
    return {"hidden": {"kernel": jax.random.normal(k1, (IN, HIDDEN)) / 4,
                       "bias": jnp.zeros(HIDDEN)},
            "out": {"kernel": jax.random.normal(k2, (HIDDEN, CLASSES)) / 6,
                    "bias": 0.1 * jax.random.normal(k3, (CLASSES,))},
            "scale": jnp.ones(())}


def features_of(params, x):
    return jnp.tanh(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])


def logits_of(params, x):
    return params["scale"] * (features_of(params, x) @ params["out"]["kernel"]
                              + params["out"]["bias"])


def summed(params, batch, hparams, key):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_of(params, batch["x"]),
                                                         batch["y"]).mean()
    return {"ce": ce, "l2": 1e-3 * optax.tree.norm(params, squared=True)}


def two_tasks(params, batch, hparams, key):
    logits = logits_of(params, batch["x"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return {"ce": ce, "reconstruction": jnp.mean((logits[:, :4] - batch["x"][:, :4]) ** 2)}


def batch_level(params, batch, hparams, key):
    """InfoNCE over the batch: every example's loss depends on every other example."""
    z = features_of(params, batch["x"])
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
    similarity = z @ z.T / 0.5 - 1e9 * jnp.eye(BATCH)
    partner = jnp.arange(BATCH) ^ 1  # pairs (0, 1), (2, 3), ...
    nce = optax.softmax_cross_entropy_with_integer_labels(similarity, partner).mean()
    return {"nce": nce}




def dataset(n=96):
    """A training set for ``fit``: ``n`` examples of ``IN`` features and a label."""
    kx, ky = jax.random.split(jax.random.PRNGKey(3))
    return {"x": np.asarray(jax.random.normal(kx, (n, IN))),
            "y": np.asarray(jax.random.randint(ky, (n,), 0, CLASSES))}
