"""Softmax Collapse: how many examples have a softmax that rounds to a one-hot vector.

Paper: Prieto, Barsbey, Mediano & Birdal, "Grokking at the Edge of Numerical Stability",
ICLR 2025, arXiv:2501.04697, Sec. 3. With the usual max-shift, the softmax is

    S(z)_k = exp(z_k - max z) / sum_j exp(z_j - max z),

and the term of the largest logit in the denominator is exactly ``exp(0) = 1``. Once every
other ``exp(z_j - max z)`` is below half an ulp of 1 (``z_max - z_j`` above about 16.6 in
float32, 36.7 in float64, 7.6 in float16, 5.5 in bfloat16), the sum rounds to exactly 1
(absorption): the probability of the largest class is exactly 1, the cross-entropy of a
correctly classified example is exactly 0, and that example stops contributing to learning.
The paper calls this Softmax Collapse (SC) and plots the fraction of training examples it
affects.

Matches the reference implementation (LucasPrietoAl/grokking-at-the-edge-of-numerical-
stability, ``logger.py``): ``compute_softmax_collapse`` casts the logits to the softmax
precision (``--softmax_precision``, default 32), subtracts the row maximum, and counts the
rows with ``sum(exp(.)) == 1`` (no labels); ``compute_zero_terms`` counts the rows whose
per-example loss is exactly 0, which for cross-entropy is SC on a correctly classified example
(the row maximum at the label). ``softmax_collapse_fraction`` returns the first without
``labels`` and the second with them. The count is defined on the sum, as the reference's
``torch.log_softmax`` form ``(z_y - max z) - log(sum)`` gives: a loss written as
``logsumexp(z) - z_y`` can also round to 0 without collapse (``max z + log(1 + 2^-23)`` is
``max z`` once ``|max z| >= 2``), so comparing such a loss with 0 is not this measure.

Not differentiable (a count); jit- and vmap-safe (``dtype`` is static).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import class_labels, float_array, logits_and_labels


def _computation_dtype(dtype):
    """The floating dtype to compute in; float64 needs x64 enabled (else JAX would silently
    compute in float32, which is a different measurement)."""
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
    available = jax.dtypes.canonicalize_dtype(dtype)
    if available != dtype:
        raise ValueError(f"`dtype` {dtype} needs `jax.enable_x64(True)`; JAX would compute in "
                         f"{available}.")
    return dtype


def softmax_collapse(logits, labels=None, *, dtype=jnp.float32):
    """Per-example Softmax Collapse indicator (a boolean ``[...]``), computed in ``dtype``.

    Args:
      logits: ``[..., K]`` floating logits (any floating dtype; cast to ``dtype``).
      labels: optional integer labels ``[...]``. Without them: ``sum_j exp(z_j - max z) == 1``
        in ``dtype`` (the reference's ``softmax_collapse``). With them: additionally the
        labelled logit is the maximum, i.e. the cross-entropy ``max z + log(sum) - z_y``
        is exactly 0 (the reference's ``zero_terms``).
      dtype: the precision of the softmax (float32 by default, as in the paper's runs;
        float16, bfloat16, or float64 with x64 enabled).

    Returns:
      A boolean array of shape ``logits.shape[:-1]``. Labels follow the losses' rule:
      concrete labels outside ``[0, K)`` raise naming ``labels``; a traced one marks its
      example as not collapsed (and makes :func:`softmax_collapse_fraction` NaN).
    """
    return _collapse(logits, labels, dtype)[0]


def _collapse(logits, labels, dtype):
    """The collapse mask and which examples have a label in ``[0, K)`` (all without labels).
    Concrete labels outside ``[0, K)`` raise, as in the losses."""
    dtype = _computation_dtype(dtype)
    if labels is None:
        z = float_array(logits, "logits", min_ndim=1)
    else:
        z, labels = logits_and_labels(logits, labels)
    z = z.astype(dtype)
    top = jnp.max(z, axis=-1, keepdims=True)
    collapsed = jnp.sum(jnp.exp(z - top), axis=-1) == jnp.ones((), dtype)
    if labels is None:
        return collapsed, jnp.ones(collapsed.shape, bool)
    labels, mask = class_labels(labels, z.shape[-1])
    at_label = jnp.take_along_axis(z, labels[..., None], axis=-1)[..., 0]
    return collapsed & (at_label == top[..., 0]) & mask.in_range, mask.in_range


def softmax_collapse_fraction(logits, labels=None, *, dtype=jnp.float32):
    """The fraction of examples in Softmax Collapse (Prieto et al. 2025, Sec. 3): the mean of
    :func:`softmax_collapse` over every axis but the class axis.

    Args:
      logits: ``[..., K]`` floating logits.
      labels: optional integer labels ``[...]``; with them, the fraction of examples whose
        cross-entropy is exactly 0 in ``dtype``.
      dtype: the precision of the softmax (default float32).

    Returns:
      A float32 scalar in ``[0, 1]``; NaN when a traced label is outside ``[0, K)``.
    """
    collapsed, valid = _collapse(logits, labels, dtype)
    fraction = jnp.mean(collapsed.astype(jnp.float32))
    return jnp.where(jnp.all(valid), fraction, jnp.nan)
