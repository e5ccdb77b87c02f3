"""Losses that are robust to noisy labels: GCE, SCE/RCE, MAE, the normalized losses, APL, ELR.

Every function takes ``logits [..., B, K]`` (a batch axis and at least 2 classes, at least
one example; any float dtype, computed in float32 or wider) and integer ``labels [..., B]``
and returns the per-example loss of shape ``labels.shape``, unreduced; the reference
implementations return the batch mean.

Integer labels follow one rule (shared with ``jaxreg.losses.classification``, see
``jaxreg._validate``): a label outside ``[0, K)`` (``K``, ``1000``, ``-1``: no wrap-around)
gives a NaN loss for its example, never a finite value; ``ignore_index`` (keyword-only, a
static int, default None, as in PyTorch) gives the examples with that label a loss of exactly
0 and a zero gradient; concrete (untraced) labels out of range raise a ``ValueError`` naming
``labels``, the values and ``K`` before any computation, and traced ones are checked with
``checkify`` under ``jaxreg.checks.debug_checks()``.

Hyperparameters given as concrete numbers are checked against their domains at call time
(``ValueError("`q` must be in [0, 1], got 1.5.")``); traced ones (swept by ``jax.vmap``) are
not checked.

The floors the references put on probabilities (``clamp(p, 1e-7, 1)``) are applied in log
space, ``max(log p, log 1e-7)``, so the losses stay finite, with finite gradients, for
logits of any magnitude.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreg._validate import (
    batched_logits_and_labels,
    float_array,
    hyperparameter,
    nonnegative,
    same_shape,
)

_LOG_P_FLOOR = math.log(1e-7)  # APL / SCE: clamp(softmax, min=1e-7)
_RCE_SCALE = -math.log(1e-4)  # APL / SCE: log clamp(one_hot, min=1e-4) = log(1e-4) off the label


def _log_probs(logits, labels, ignore_index):
    """Checks the inputs; returns ``log_softmax(logits)`` [..., K], the safe integer labels
    and the label mask (see ``jaxreg._validate.class_labels``)."""
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    if logits.shape[-1] < 2:
        raise ValueError(
            f"`logits` must have at least 2 classes on its last axis, got shape {logits.shape}.")
    return jax.nn.log_softmax(logits, axis=-1), labels, mask


def _at_label(values, labels):
    """``values[..., label]``, the entry of the labelled class (safe labels, in range)."""
    return jnp.take_along_axis(values, labels[..., None], axis=-1, mode="fill")[..., 0]


def _check_q(q, name="q"):
    hyperparameter(q, name, low=0, high=1)


def _box_cox(log_p, q):
    """``(1 - clamp(p, 1e-7, 1)**q) / q`` with its limit ``-max(log p, log 1e-7)`` at
    ``q = 0``, smooth in ``q`` (values and gradients finite at ``q = 0``, also traced).

    With ``l = max(log p, log 1e-7)`` and ``u = q l`` it is ``-l expm1(u) / u``, with the
    series ``-l (1 + u/2 + u^2/6)`` for ``|u| < 1e-2`` (as ``classification.comp_sum``).
    """
    clamped = jnp.maximum(log_p, _LOG_P_FLOOR)
    u = q * clamped
    small = jnp.abs(u) < 1e-2
    safe_q = jnp.where(small, 1.0, q)
    series = -clamped * (1.0 + u / 2.0 + u * u / 6.0)
    return jnp.where(small, series, -jnp.expm1(jnp.where(small, 0.0, u)) / safe_q)


# Private losses on checked inputs: log-probabilities [..., K] and safe labels.

def _ce(log_p, labels):
    return -_at_label(log_p, labels)


def _gce(log_p, labels, q):
    return _box_cox(_at_label(log_p, labels), q)


def _rce(log_p, labels):
    off_label = labels[..., None] != jnp.arange(log_p.shape[-1])
    clamped_p = jnp.exp(jnp.maximum(log_p, _LOG_P_FLOOR))
    return _RCE_SCALE * jnp.sum(jnp.where(off_label, clamped_p, 0.0), axis=-1)


def _mae(log_p, labels):
    return -jnp.expm1(_at_label(log_p, labels))


def _nce(log_p, labels):
    return _at_label(log_p, labels) / jnp.sum(log_p, axis=-1)


def _nfl(log_p, labels, gamma):
    focal = -jax.lax.stop_gradient(jnp.power(-jnp.expm1(log_p), gamma)) * log_p
    return _at_label(focal, labels) / jnp.sum(focal, axis=-1)


def _ngce(log_p, labels, q):
    per_class = _box_cox(log_p, q)
    return _at_label(per_class, labels) / jnp.sum(per_class, axis=-1)


def generalized_cross_entropy(logits, labels, *, q=0.7, ignore_index=None):
    """Generalized cross-entropy (GCE), the negative Box-Cox transform of ``p_y``.

    ``GCE = (1 - clamp(p_y, 1e-7, 1)**q) / q`` for ``q`` in (0, 1]. It tends to the
    cross-entropy as ``q -> 0`` and equals the (reduced) MAE ``1 - p_y`` at ``q = 1``. At
    ``q = 0`` (concrete or traced) it is that limit, the cross-entropy ``-log p_y`` (floored
    like the rest at ``-log 1e-7``), with finite gradients in the logits and in ``q``;
    ``q`` must lie in ``[0, 1]``.

    Paper: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
    with Noisy Labels" (2018), arXiv:1805.07836 (the L_q loss); default ``q = 0.7``.

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``GeneralizedCrossEntropy`` (same
    ``1e-7`` floor), with ``p_y**q`` computed as ``exp(q * log p_y)`` from the log-softmax.
    The paper's truncated variant (L_trunc, with a threshold k) is not implemented.
    """
    _check_q(q)
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_gce(log_p, labels, q))


def reverse_cross_entropy(logits, labels, *, ignore_index=None):
    """Reverse cross-entropy (RCE): the cross-entropy of the label under the prediction.

    ``RCE = -sum_k clamp(p_k, 1e-7, 1) * log clamp(y_k, 1e-4, 1)
          = -log(1e-4) * sum_{k != y} clamp(p_k, 1e-7, 1)``, about ``9.21 * (1 - p_y)``.

    Paper: Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels" (2019),
    arXiv:1908.06112 (``log 0`` replaced by a constant ``A``; here, as in both official codes,
    ``A = log 1e-4``).

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``ReverseCrossEntropy`` (``scale=1``).
    """
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_rce(log_p, labels))


def symmetric_cross_entropy(logits, labels, *, alpha=0.1, beta=1.0, ignore_index=None):
    """Symmetric cross-entropy (SCE): ``alpha * CE + beta * RCE``.

    ``CE = -log p_y`` (unclamped); ``RCE`` as in :func:`reverse_cross_entropy`. Defaults are
    the paper's CIFAR-10 setting (``alpha = 0.1, beta = 1``; CIFAR-100 uses 6.0 and 0.1).

    Paper: Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels" (2019),
    arXiv:1908.06112.

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``SCELoss``. The authors' Keras code
    (YisenWang/symmetric_cross_entropy_for_noisy_labels ``loss.py``) puts the ``1e-7`` floor
    on the CE term and none on the RCE term instead; the two agree unless some ``p_k < 1e-7``.
    ``alpha, beta >= 0``.
    """
    nonnegative(alpha, "alpha")
    nonnegative(beta, "beta")
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(alpha * _ce(log_p, labels) + beta * _rce(log_p, labels))


def mae(logits, labels, *, ignore_index=None):
    """Mean absolute error between the softmax and the one-hot label, halved: ``1 - p_y``.

    The true MAE ``sum_k |p_k - y_k|`` equals ``2 - 2 p_y``; this is the "reduced MAE" that the
    APL code and paper use (half of it), computed as ``-expm1(log p_y)``.

    Paper: Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels" (2020),
    arXiv:2006.13554 (MAE as a passive loss; after Ghosh et al., 2017, arXiv:1712.09482).

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``MeanAbsoluteError`` (``scale=1``).
    """
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_mae(log_p, labels))


def normalized_cross_entropy(logits, labels, *, ignore_index=None):
    """Normalized cross-entropy (NCE): the CE of the label over the CE summed over all labels.

    ``NCE = log p_y / sum_k log p_k``, in [0, 1].

    Paper: Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels" (2020),
    arXiv:2006.13554.

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``NormalizedCrossEntropy``
    (``scale=1``): no probability floor, and the gradient flows through the denominator.
    """
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_nce(log_p, labels))


def normalized_focal(logits, labels, *, gamma=0.5, ignore_index=None):
    """Normalized focal loss (NFL): the focal loss of the label over its sum over all labels.

    ``NFL = FL_y / sum_k FL_k`` with ``FL_k = -(1 - p_k)**gamma * log p_k``, in [0, 1].

    Paper: Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels" (2020),
    arXiv:2006.13554; default ``gamma = 0.5`` (the APL configs).

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``NormalizedFocalLoss`` (``scale=1``),
    including its gradient: every modulating factor ``(1 - p_k)**gamma`` is detached
    (``stop_gradient``), in the numerator and the denominator; ``log p_k`` is not. The factor is
    computed as ``(-expm1(log p_k))**gamma``, exact for ``p_k`` near 1. ``gamma >= 0``.
    """
    nonnegative(gamma, "gamma")
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_nfl(log_p, labels, gamma))


def normalized_generalized_cross_entropy(logits, labels, *, q=0.7, ignore_index=None):
    """Normalized generalized cross-entropy (NGCE): GCE of the label over GCE summed over labels.

    ``NGCE = (1 - p_y**q) / (K - sum_k p_k**q)`` with ``p = clamp(softmax, 1e-7, 1)``, in
    [0, 1], for ``q`` in (0, 1]. The denominator is computed as ``sum_k (1 - p_k**q)``.
    ``q`` must lie in ``[0, 1]``: at ``q = 0`` it is the limit, the NCE of the floored
    probabilities (each term computed as ``(1 - p**q) / q``, smooth through ``q = 0``).

    Paper: Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels" (2020),
    arXiv:2006.13554 (normalized GCE, used in the NGCE+MAE and NGCE+RCE configs);
    default ``q = 0.7``, the class default and the CIFAR-100 configs (CIFAR-10 and MNIST
    configs use 0.1).

    Matches HanxunH/Active-Passive-Losses ``loss.py`` ``NormalizedGeneralizedCrossEntropy``
    (``scale=1``), including the ``1e-7`` floor on every ``p_k``.
    """
    _check_q(q)
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(_ngce(log_p, labels, q))


_ACTIVE = {
    "ce": lambda log_p, labels, gamma, q: _ce(log_p, labels),
    "gce": lambda log_p, labels, gamma, q: _gce(log_p, labels, q),
    "nce": lambda log_p, labels, gamma, q: _nce(log_p, labels),
    "nfl": lambda log_p, labels, gamma, q: _nfl(log_p, labels, gamma),
    "ngce": lambda log_p, labels, gamma, q: _ngce(log_p, labels, q),
}
_PASSIVE = {"mae": _mae, "rce": _rce}


def active_passive(logits, labels, *, active="nce", passive="rce", alpha=1.0, beta=1.0,
                   gamma=0.5, q=0.7, ignore_index=None):
    """Active passive loss (APL): ``alpha * active + beta * passive``.

    ``active`` is one of ``"nce"``, ``"nfl"``, ``"ngce"`` (the paper's normalized active
    losses), ``"ce"`` or ``"gce"``; ``passive`` is ``"rce"`` or ``"mae"``. ``gamma`` is used by
    ``"nfl"`` only, ``q`` by ``"gce"`` and ``"ngce"`` only. ``active`` and ``passive`` are
    static strings; the numeric hyperparameters may be traced.

    Paper configs (HanxunH/Active-Passive-Losses ``configs/``): CIFAR-10 ``alpha = 1,
    beta = 1``; CIFAR-100 ``alpha = 10, beta = 0.1`` (NGCE+MAE: ``beta = 1``); MNIST
    ``alpha = 1, beta = 10``; ``gamma = 0.5``; NGCE ``q = 0.1`` (CIFAR-100: 0.7).
    ``active="ce", passive="rce"`` is :func:`symmetric_cross_entropy`.

    Paper: Ma et al., "Normalized Loss Functions for Deep Learning with Noisy Labels" (2020),
    arXiv:2006.13554 (NCE+RCE, NCE+MAE, NFL+RCE, NFL+MAE; the code adds NGCE+RCE and
    NGCE+MAE).

    Matches the reference classes ``NCEandRCE``, ``NCEandMAE``, ``NFLandRCE``, ``NFLandMAE``,
    ``NGCEandRCE`` and ``NGCEandMAE`` in HanxunH/Active-Passive-Losses ``loss.py``. Departure,
    following the paper: ``GCEandMAE`` and ``GCEandRCE`` there ignore ``alpha`` (GCE enters
    with weight 1); here ``alpha`` weights GCE. The normalized passive
    losses are not offered: they are RCE and MAE times a constant that ``beta`` absorbs, and the
    reference's ``NormalizedReverseCrossEntropy`` computes that constant as ``1 / 4 * (K - 1)``,
    i.e. ``(K - 1) / 4`` (an operator-precedence slip for ``1 / (4 (K - 1))``).

    Domains: ``alpha, beta, gamma >= 0``, ``q`` in ``[0, 1]`` (checked whichever losses use
    them).
    """
    if active not in _ACTIVE:
        raise ValueError(f"`active` must be one of {sorted(_ACTIVE)}, got {active!r}.")
    if passive not in _PASSIVE:
        raise ValueError(f"`passive` must be one of {sorted(_PASSIVE)}, got {passive!r}.")
    nonnegative(alpha, "alpha")
    nonnegative(beta, "beta")
    nonnegative(gamma, "gamma")
    _check_q(q)
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    return mask.apply(alpha * _ACTIVE[active](log_p, labels, gamma, q)
                      + beta * _PASSIVE[passive](log_p, labels))


def elr(logits, labels, targets, *, beta=0.7, lam=3.0, ignore_index=None):
    """Early-learning regularization (ELR): CE plus ``lam * log(1 - <t, p>)`` with EMA targets.

    ``p = clamp(softmax(logits), 1e-4, 1 - 1e-4)``;
    ``t_new = beta * t + (1 - beta) * sg(p) / sum_k sg(p_k)`` (``sg`` = stop_gradient);
    ``loss = -log p_y + lam * log(1 - sum_k t_new_k p_k)``. ``t_new`` enters the loss as a
    constant: no gradient flows through the target update.

    ``targets [..., K]`` are the caller's per-example EMA rows for this batch, gathered from a
    ``[N, K]`` buffer that starts at zeros; the function returns ``(loss [...], t_new [..., K])``
    and the train step scatters ``t_new`` back (``buffer.at[idx].set(t_new)``).

    Paper: Liu et al., "Early-Learning Regularization Prevents Memorization of Noisy Labels"
    (2020), arXiv:2007.00151. Defaults are the CIFAR-10 symmetric-noise config
    (``ELR/config_cifar10.json``: ``beta = 0.7, lambda = 3``; CIFAR-100 uses 0.9 and 7,
    CIFAR-10 asymmetric 0.9 and 1; the ``elr_loss`` class default ``beta = 0.3`` is unused).

    Matches shengliu66/ELR ``ELR/model/loss.py`` ``elr_loss``, per example (the reference
    averages CE and the regularizer over the batch). ``beta`` in ``[0, 1]``, ``lam >= 0``.
    The label rule applies to the loss; the target update does not depend on the label, so
    ``t_new`` is returned for every example (ignored or not).
    """
    hyperparameter(beta, "beta", low=0, high=1)
    nonnegative(lam, "lam")
    log_p, labels, mask = _log_probs(logits, labels, ignore_index)
    targets = float_array(targets, "targets")
    same_shape(log_p, targets, "logits", "targets")
    p = jnp.clip(jnp.exp(log_p), 1e-4, 1.0 - 1e-4)
    new_targets = jax.lax.stop_gradient(
        beta * targets + (1.0 - beta) * p / jnp.sum(p, axis=-1, keepdims=True))
    agreement = jnp.sum(new_targets * p, axis=-1)
    return mask.apply(-_at_label(log_p, labels) + lam * jnp.log1p(-agreement)), new_targets
