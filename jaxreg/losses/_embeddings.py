"""Input checks and the cross-device gather shared by the embedding losses
(``contrastive``, ``metric``, ``self_supervised``, ``chunked``).

Every check raises a ``TypeError`` or ``ValueError`` naming the argument. Embeddings are
computed in float32 or wider (bfloat16 and float16 inputs are upcast), so temperatures,
exponentials and Gram matrices stay finite.

Batch-level losses take ``axis_name``: inside ``shard_map``/``pmap`` over that axis, each
device holds its shard of the batch, :func:`gather` concatenates the shards along the batch
axis (``all_gather(tiled=True)``, whose transpose sends each device the gradient of its own
shard, the JAX form of lightly's ``gather_distributed``), and :func:`shard_offset` says where
the local shard starts in the gathered batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array, positive


def embeddings(x, name: str = "embeddings", *, ndim: int = 2) -> jax.Array:
    """Checks a floating array of exactly ``ndim`` axes (``[N, D]`` by default; ``[N, V, D]``
    for views); returns it in float32 or wider."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating array, got dtype {x.dtype}.")
    if x.ndim != ndim:
        axes = "[N, D]" if ndim == 2 else "[N, V, D]" if ndim == 3 else f"{ndim} axes"
        raise ValueError(f"`{name}` must have shape {axes}, got shape {x.shape}.")
    if x.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one example, got shape {x.shape}.")
    return float_array(x, name)


def paired(a, b, a_name: str, b_name: str) -> tuple[jax.Array, jax.Array]:
    """Checks two views ``[N, D]`` of the same batch (same shape); returns both as
    :func:`embeddings`."""
    a, b = embeddings(a, a_name), embeddings(b, b_name)
    if a.shape != b.shape:
        raise ValueError(f"`{a_name}` and `{b_name}` must have the same shape, got {a.shape} "
                         f"and {b.shape}.")
    return a, b


def labels_for(labels, n: int, name: str = "labels") -> jax.Array:
    """Checks integer class labels ``[n]`` for a batch of ``n`` embeddings."""
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integer class labels, got dtype {labels.dtype}.")
    if labels.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},), one label per embedding, got "
                         f"{labels.shape}.")
    return labels


def temperature(value, name: str = "temperature"):
    """A temperature (or scale): a concrete value must be > 0; traced values pass."""
    return positive(value, name)


def normalize(x, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis (``torch.nn.functional.normalize``), with
    a finite gradient at ``x = 0`` (the norm is never differentiated below the floor)."""
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    above = squared > eps * eps
    return x / jnp.where(above, jnp.sqrt(jnp.where(above, squared, 1.0)), eps)


def maybe_normalize(x, enabled: bool) -> jax.Array:
    """:func:`normalize` ``x`` when ``enabled`` (a loss's ``normalize=``), else ``x``."""
    return normalize(x) if enabled else x


def gather(x, axis_name) -> jax.Array:
    """The global batch: ``x`` of every device along ``axis_name`` concatenated on axis 0
    (``x`` itself when ``axis_name`` is None)."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def shard_offset(axis_name, n_local: int):
    """Index of this device's first example in the gathered batch (0 without ``axis_name``)."""
    if axis_name is None:
        return 0
    return jax.lax.axis_index(axis_name) * n_local


def batch_sum(x, axis_name) -> jax.Array:
    """``x`` summed over the devices of ``axis_name`` (``x`` itself when it is None): for
    batch statistics (means, covariances) of the global batch."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def global_logsumexp(x, axis: int | None = None, axis_name=None) -> jax.Array:
    """``log sum exp x`` along ``axis`` (kept; None: over the whole array, a scalar), summed
    also over the devices of ``axis_name`` when given; shifted by the (global) maximum,
    which gets no gradient, so finite for scores of any magnitude."""
    keep = axis is not None
    top = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=keep))  # pmax: no derivative
    if axis_name is not None:
        top = jax.lax.pmax(top, axis_name)
    return top + jnp.log(batch_sum(jnp.sum(jnp.exp(x - top), axis=axis, keepdims=keep),
                                   axis_name))
