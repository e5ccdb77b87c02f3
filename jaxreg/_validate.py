"""Trace-time input checks shared by every component.

Each check raises a ``ValueError`` or ``TypeError`` whose message names the argument, what
was expected and what came. They look only at shapes and dtypes, so they cost nothing under
``jax.jit``; values (a label out of range) cannot be checked at trace time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def float_array(x, name: str, *, min_ndim: int = 0):
    """Returns ``x`` as a floating array, upcast to float32 if it is narrower.

    Low-precision inputs (bfloat16, float16) are computed in float32 so that log-sum-exp and
    powers stay finite.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating array, got dtype {x.dtype}.")
    if x.ndim < min_ndim:
        raise ValueError(
            f"`{name}` must have at least {min_ndim} dimension(s), got shape {x.shape}.")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def logits_and_labels(logits, labels, *, logits_name="logits", labels_name="labels"):
    """Checks ``logits [..., K]`` against integer ``labels [...]``; returns both (logits in
    float32 or wider)."""
    logits = float_array(logits, logits_name, min_ndim=1)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"`{labels_name}` must hold integer class indices, got dtype {labels.dtype}; "
            "for soft or one-hot targets use a loss that takes probabilities.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`{labels_name}` must have shape {logits.shape[:-1]} (the shape of "
            f"`{logits_name}` without its class axis), got {labels.shape}.")
    return logits, labels


def same_shape(a, b, a_name: str, b_name: str):
    """Raises unless ``a`` and ``b`` have the same shape."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`{b_name}` must have the shape of `{a_name}`, {jnp.shape(a)}, got {jnp.shape(b)}.")


def logits_and_targets(logits, targets, *, logits_name="logits", targets_name="targets"):
    """Checks ``logits [..., K]`` against same-shaped targets (multi-hot or probabilities)."""
    logits = float_array(logits, logits_name, min_ndim=1)
    targets = jnp.asarray(targets)
    dtype = targets.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"`{targets_name}` must be real (float, integer or boolean), got dtype "
                        f"{targets.dtype}.")
    same_shape(logits, targets, logits_name, targets_name)
    return logits, targets.astype(logits.dtype)


def class_vector(values, num_classes: int, name: str):
    """Checks a per-class vector (counts or priors) of length ``num_classes``; returns float32+."""
    values = jnp.asarray(values)
    if not jnp.issubdtype(values.dtype, jnp.floating):
        values = values.astype(jnp.float32)
    values = float_array(values, name)
    if values.shape != (num_classes,):
        raise ValueError(f"`{name}` must have shape ({num_classes},), got {values.shape}.")
    return values


def kernels_only(params):
    """The default leaf mask: leaves with at least two dimensions (kernels and embeddings, not
    biases or normalisation scales)."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def every_leaf(params):
    """A leaf mask selecting every leaf."""
    return jax.tree.map(lambda _: True, params)


def leaf_mask(mask, params, name: str = "mask", *, default=kernels_only):
    """Resolves ``mask`` (None: ``default``, :func:`kernels_only` unless given; a pytree of
    booleans; or a function of the parameters returning one) to a pytree of Python booleans
    shaped like ``params``."""
    chosen = default if mask is None else mask
    chosen = chosen(params) if callable(chosen) else chosen
    try:
        return jax.tree.map(lambda _, on: bool(on), params, chosen)
    except ValueError as error:
        raise ValueError(f"`{name}` must have the tree structure of the parameters: "
                         f"{error}") from None


def tree_like(tree, params, name: str):
    """Checks that ``tree`` (an anchor, a Fisher diagonal) matches ``params`` leaf for leaf in
    structure and shape; returns its leaves as float32-or-wider arrays."""
    try:
        pairs = jax.tree.map(lambda p, t: (p, t), params, tree)
    except ValueError as error:
        raise ValueError(f"`{name}` must have the tree structure of the parameters: "
                         f"{error}") from None

    def check(pair):
        p, t = pair
        same_shape(p, t, "params", name)
        return float_array(t, name)

    return jax.tree.map(check, pairs, is_leaf=lambda x: isinstance(x, tuple))
