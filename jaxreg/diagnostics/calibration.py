"""Calibration and selective-prediction metrics of a classifier's softmax confidence.

* ``expected_calibration_error``: Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern
  Neural Networks", ICML 2017, arXiv:1706.04599, Eq. 3.
* ``aurc``: the area under the risk-coverage curve and its excess over the best ordering
  (E-AURC), Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
  Classifiers", ICLR 2019, arXiv:1805.08206, Sec. 2-3.

The confidence of an example is its largest softmax probability (``aurc`` also takes any other
score). Both are metrics, not losses: jittable and vmappable, but piecewise constant in the
logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import class_labels, float_array, logits_and_labels


def _flat(logits, labels):
    """Softmax probabilities ``[n, K]``, labels ``[n]`` and whether every label is a class.

    The loss's label rule: concrete labels outside ``[0, K)`` raise naming ``labels``; traced
    ones make the measure NaN, never a finite value.
    """
    logits, labels = logits_and_labels(logits, labels)
    _, mask = class_labels(labels, logits.shape[-1])
    logits = logits.reshape(-1, logits.shape[-1])
    return (jax.nn.softmax(logits, axis=-1), labels.reshape(-1),
            jnp.all(mask.in_range))


def _if_valid(valid, value):
    return jnp.where(valid, value, jnp.nan)


def expected_calibration_error(logits, labels, num_bins: int = 15) -> jax.Array:
    """ECE, ``sum_m |B_m| / n |acc(B_m) - conf(B_m)|`` over ``num_bins`` equal-width
    confidence bins ``((m - 1) / M, m / M]`` (Guo et al. 2017, Eq. 3).

    Args:
        logits: ``[..., K]``.
        labels: integer labels ``[...]``.
        num_bins: the number of bins M (static; 15 in Guo et al.).

    Returns:
        The ECE, a scalar in [0, 1].
    """
    if num_bins < 1:
        raise ValueError(f"`num_bins` must be at least 1, got {num_bins}.")
    probs, labels, valid = _flat(logits, labels)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    gaps = jax.ops.segment_sum(correct - confidence, bins, num_segments=num_bins)
    return _if_valid(valid, jnp.sum(jnp.abs(gaps)) / labels.shape[0])


def _area(confidence, errors):
    """Mean selective risk over coverages ``k / n``, ``k = 1..n``, examples taken in
    decreasing confidence; within a run of equal confidences the errors are spread evenly
    (the expectation over the orderings of the tie)."""
    order = jnp.argsort(-confidence)
    descending, errors = -confidence[order], errors[order]
    start = jnp.searchsorted(descending, descending, side="left")
    end = jnp.searchsorted(descending, descending, side="right")
    before = jnp.concatenate([jnp.zeros((1,), errors.dtype), jnp.cumsum(errors)])
    group_rate = (before[end] - before[start]) / (end - start)
    covered = jnp.arange(1, errors.shape[0] + 1)
    risk = (before[start] + (covered - start) * group_rate) / covered
    return jnp.mean(risk)


def aurc(logits, labels, *, confidence=None, excess: bool = False) -> jax.Array:
    """Area under the risk-coverage curve (Geifman et al. 2019): reject the least confident
    examples first; at coverage ``k / n`` the selective risk is the error rate of the ``k``
    most confident; AURC is its mean over ``k = 1..n``. Lower is better.

    Examples of equal confidence are averaged over their orderings (so the value does not
    depend on the order of the batch; saturated float32 softmaxes tie at exactly 1).

    Args:
        logits: ``[..., K]``; the prediction is their argmax.
        labels: integer labels ``[...]``.
        confidence: the score to rank by, ``[...]`` (default: the largest softmax
            probability).
        excess: return E-AURC, AURC minus that of the ideal ranking (every correct example
            before every error), ``0`` for a perfect confidence score.

    Returns:
        A scalar in [0, 1].
    """
    if confidence is not None:
        confidence = float_array(confidence, "confidence")
        if confidence.shape != jnp.shape(labels):
            raise ValueError(f"`confidence` must have the shape of `labels` "
                             f"{jnp.shape(labels)}, got {confidence.shape}.")
    probs, labels, valid = _flat(logits, labels)
    errors = (jnp.argmax(probs, axis=-1) != labels).astype(probs.dtype)
    score = jnp.max(probs, axis=-1) if confidence is None else confidence.reshape(-1)
    area = _area(score, errors)
    return _if_valid(valid, area - _area(-errors, errors) if excess else area)
