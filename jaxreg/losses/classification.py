"""Classification losses: Poly-1, focal, comp-sum, squentropy, Z-loss, encouraging, harmonic,
stablemax, LDAM, logit adjustment, asymmetric (ASL) and LDR-KL.

Every function returns the per-example loss, unreduced, of shape ``logits.shape[:-1]`` (the
reference implementations mostly return the batch mean, ASL the sum). Inputs of any float
dtype are computed in float32 or wider. Logits need a batch axis and a class axis,
``[B, K]`` or ``[..., B, K]``, and at least one example (for one example pass
``logits[None]``, ``labels[None]``).

Integer labels (one rule for every loss here that takes them, see ``jaxreg._validate``):

* a label in ``[0, K)`` is a class; any other label (``K``, ``1000``, ``-1``: negative labels
  do not wrap around) gives a NaN loss for its example, never a finite value;
* ``ignore_index`` (keyword-only, a static int, default None, as in PyTorch): examples whose
  label equals it get a loss of exactly 0 and a zero gradient;
* labels given as concrete arrays (not traced) are checked before any computation: a label
  outside ``[0, K)`` that is not ``ignore_index`` raises a ``ValueError`` naming ``labels``,
  the offending values and ``K``; traced labels are checked with ``checkify`` under
  ``jaxreg.checks.debug_checks()``.

Every numeric hyperparameter may be a traced scalar (so ``jax.vmap`` can sweep it); none is
branched on in Python. A hyperparameter given as a concrete number (Python, NumPy or a JAX
array outside ``jit``) is checked against its domain at call time (``ValueError("`gamma` must
be >= 0, got -1.0.")``); a traced one is not checked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import (
    batched_logits_and_labels,
    class_vector,
    float_array,
    hyperparameter,
    logits_and_targets,
    nonnegative,
    positive,
)


def _at_label(values, labels):
    """``values[..., label]``, the entry of the labelled class (labels are the safe labels of
    ``batched_logits_and_labels``, always in range)."""
    return jnp.take_along_axis(values, labels[..., None], axis=-1, mode="fill")[..., 0]


def _log_p_label(logits, labels, ignore_index):
    """Checks the inputs; returns ``log p_y`` from the log-softmax (on the safe labels) and
    the label mask to apply to the loss."""
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    return _at_label(jax.nn.log_softmax(logits, axis=-1), labels), mask


def _counts(class_counts, num_classes):
    """``class_counts [K]``, checked positive where concrete."""
    counts = class_vector(class_counts, num_classes, "class_counts")
    return positive(counts, "class_counts")


def _power(base, exponent):
    """``base ** exponent`` for ``base`` in [0, 1], with finite gradients where ``base = 0``.

    The base is floored at the dtype's smallest normal number, so ``0 ** 0 = 1`` and the
    derivative at 0 is 0 rather than ``0 * inf``. Every caller multiplies the result by a
    term that vanishes where the base does, so the floor never shows in a value.
    """
    return jnp.maximum(base, jnp.finfo(base.dtype).tiny) ** exponent


def cross_entropy(logits, labels, *, ignore_index=None):
    """Softmax cross-entropy ``-log p_y``, the baseline every other loss is measured against.

    ``optax.losses.softmax_cross_entropy_with_integer_labels`` with jaxreg's input checks
    (errors that name the argument) and float32 computation for low-precision logits.
    """
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    return mask.apply(optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels))


def poly1_cross_entropy(logits, labels, *, epsilon=1.0, ignore_index=None):
    """Poly-1 cross-entropy, ``-log p_y + epsilon * (1 - p_y)``.

    Paper: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions" (2022), arXiv:2204.12511, Eq. (Poly-1); the paper's snippet uses
    ``epsilon = 1`` (optax's default is 2, the paper's ImageNet-21K value).

    A thin wrapper over ``optax.losses.poly_loss_cross_entropy`` for integer labels.
    ``epsilon >= -1`` (the paper's domain, where the loss stays decreasing in ``p_y``).
    """
    hyperparameter(epsilon, "epsilon", low=-1)
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return mask.apply(optax.losses.poly_loss_cross_entropy(logits, one_hot, epsilon=epsilon))


def poly1_focal(logits, targets, *, epsilon=1.0, gamma=2.0, alpha=0.25):
    """Poly-1 sigmoid focal loss, ``FL + epsilon * (1 - p_t)^(gamma + 1)``, summed over classes.

    ``FL = alpha_t (1 - p_t)^gamma BCE(z, y)`` is ``optax.losses.sigmoid_focal_loss``, with
    ``p_t = y p + (1 - y)(1 - p)``, ``p = sigmoid(z)``. As in the paper's snippet, ``alpha``
    weights only the focal term, not the polynomial one.

    Paper: Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
    Functions" (2022), arXiv:2204.12511 (the Poly-1 focal loss code snippet); ``epsilon`` is
    tuned per task there and may be negative (``epsilon >= -1``).

    ``(1 - p_t)^(gamma + 1)`` is computed in log space, ``log(1 - p_t) =
    log((1 - y) sigmoid(z) + y sigmoid(-z))``, as optax does for the focal weight.
    Domains: ``epsilon >= -1``, ``gamma >= 0``, ``alpha`` in ``[0, 1]``.
    """
    hyperparameter(epsilon, "epsilon", low=-1)
    nonnegative(gamma, "gamma")
    hyperparameter(alpha, "alpha", low=0, high=1)
    logits, targets = logits_and_targets(logits, targets)
    focal = optax.losses.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    log_one_minus_pt = jax.scipy.special.logsumexp(
        jnp.stack([jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)], axis=-1),
        b=jnp.stack([1.0 - targets, targets], axis=-1), axis=-1)
    poly = epsilon * jnp.exp((gamma + 1.0) * log_one_minus_pt)
    return jnp.sum(focal + poly, axis=-1)


def softmax_focal(logits, labels, *, gamma=2.0, stop_gradient_weight=False, ignore_index=None):
    """Softmax focal loss, ``-(1 - p_y)^gamma log p_y``.

    Paper: Lin et al., "Focal Loss for Dense Object Detection" (2017), arXiv:1708.02002 (the
    multi-class softmax form). ``gamma = 0`` is the cross-entropy.

    Matches HanxunH/Active-Passive-Losses ``FocalLoss`` (after clcarwin/focal_loss_pytorch,
    ``alpha=None``) in value; its weight uses ``p_y.data``, i.e. is detached, which
    ``stop_gradient_weight=True`` reproduces. The default differentiates the weight, as the
    paper's loss does. Computed in log space: ``1 - p_y = -expm1(log p_y)``. ``gamma >= 0``.
    """
    nonnegative(gamma, "gamma")
    log_py, mask = _log_p_label(logits, labels, ignore_index)
    weight = _power(-jnp.expm1(log_py), gamma)
    if stop_gradient_weight:
        weight = jax.lax.stop_gradient(weight)
    return mask.apply(-weight * log_py)


def sigmoid_focal(logits, targets, *, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss ``alpha_t (1 - p_t)^gamma BCE(z, y)``, summed over the class axis.

    Paper: Lin et al., "Focal Loss for Dense Object Detection" (2017), arXiv:1708.02002;
    defaults ``alpha = 0.25``, ``gamma = 2`` (the paper's and torchvision's).

    ``optax.losses.sigmoid_focal_loss`` (equal to torchvision ``sigmoid_focal_loss``), summed
    over the last axis to give one value per example. Domains: ``alpha`` in ``[0, 1]``,
    ``gamma >= 0``.
    """
    hyperparameter(alpha, "alpha", low=0, high=1)
    nonnegative(gamma, "gamma")
    logits, targets = logits_and_targets(logits, targets)
    return jnp.sum(optax.losses.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma),
                   axis=-1)


def comp_sum(logits, labels, *, tau=1.5, ignore_index=None):
    """Comp-sum loss ``Phi_tau(S)`` of ``S = sum_k exp(z_k - z_y) = 1 / p_y``.

    ``Phi_tau(S) = (S^(1 - tau) - 1) / (1 - tau)`` for ``tau != 1`` and ``log S`` for
    ``tau = 1``: ``tau = 0`` is the sum-exponential loss, ``tau = 1`` the cross-entropy,
    ``tau`` in (1, 2) the generalized cross-entropy with ``q = tau - 1`` and ``tau = 2`` the
    mean absolute error ``1 - p_y``.

    Paper: Mao, Mohri & Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
    Applications" (2023), arXiv:2304.07288 (comp-sum losses; no official code).

    Computed in log space as ``log S * expm1(u) / u`` with ``u = (1 - tau) log S``, and a
    Taylor series for ``|u| < 1e-2``, so the loss and its gradients (also in ``tau``) are
    smooth through ``tau = 1``. For ``tau < 1`` the loss grows like ``S^(1 - tau)`` and
    overflows to ``inf`` when ``(1 - tau) log S`` exceeds about 88 in float32. ``tau >= 0``
    (the paper's family).
    """
    nonnegative(tau, "tau")
    log_py, mask = _log_p_label(logits, labels, ignore_index)
    log_s = -log_py
    u = (1.0 - tau) * log_s
    small = jnp.abs(u) < 1e-2
    safe_u = jnp.where(small, 1.0, u)
    ratio = jnp.where(small, 1.0 + u / 2.0 + u * u / 6.0, jnp.expm1(safe_u) / safe_u)
    return mask.apply(log_s * ratio)


def squentropy(logits, labels, *, weight=1.0, ignore_index=None):
    """Squentropy, ``-log p_y + weight * sum_{k != y} z_k^2 / (K - 1)``.

    The squares are of the logits of the incorrect classes (not of probabilities).

    Paper: Hui, Belkin & Wright, "Cut your Losses with Squentropy" (2023), arXiv:2302.03952;
    ``weight = 1`` as in the paper.

    Matches Like-Hui/Squentropy_vision ``svhn.py`` (``loss_type='sqen'``, ``resquare`` =
    ``weight``) per example; the reference returns the batch mean. ``weight >= 0``; needs
    ``K >= 2`` classes.
    """
    nonnegative(weight, "weight")
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"`logits` must have at least 2 classes on its last axis, got shape "
                         f"{logits.shape}.")
    log_py = _at_label(jax.nn.log_softmax(logits, axis=-1), labels)
    is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
    squares = jnp.sum(jnp.where(is_label, 0.0, jnp.square(logits)), axis=-1)
    return mask.apply(-log_py + weight * squares / (num_classes - 1))


def spherical_z_loss(logits, labels, *, a=0.1, b=20.0, ignore_index=None):
    """Z-loss, ``softplus(a (b - z_y)) / a`` of the standardized logits ``z = (o - mean) / std``.

    ``mean`` and ``std`` are taken over the class axis, ``std`` the population one
    (``std^2 = mean(o^2) - mean(o)^2``), so the loss is invariant to ``o -> c o + d`` for any
    ``c > 0``. Not to be confused with the PaLM/T5X "z-loss" ``(logsumexp z)^2``.

    Paper: de Brebisson & Vincent, "The Z-loss: a shift and scale invariant classification
    loss belonging to the Spherical Family" (2016), arXiv:1604.08859 (the paper's definition).

    Departs from the paper only by ``1e-12`` added to the variance inside the square root, so
    that constant logits give a finite loss and gradient. ``a > 0``; ``b`` is any real.
    """
    positive(a, "a")
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(centred), axis=-1) + 1e-12)
    z_label = _at_label(centred, labels) / std
    return mask.apply(jax.nn.softplus(a * (b - z_label)) / a)


def encouraging(logits, labels, *, log_end=0.75, ignore_index=None):
    """Encouraging loss, ``-log p_y + bonus(p_y)``: the cross-entropy plus a reward for
    confidence that keeps growing on well-classified examples.

    ``bonus(p) = log(max(1 - p, 1e-5))`` for ``p <= log_end`` and, past it, the tangent line
    ``(p - log_end) / (log_end - 1) + log(1 - log_end)`` (the "conservative bonus");
    ``log_end = 1`` gives the plain bonus. The loss is negative for confident examples.

    Paper: Zhao et al., "Well-classified Examples are Underestimated in Classification with
    Deep Neural Networks" (2022), arXiv:2110.06537.

    Matches lancopku/well-classified-examples-are-underestimated ``EncouragingLoss`` (README
    and ``EncouragingLoss.py``; default ``log_end = 0.75``, same ``1e-5`` clamp), with
    ``1 - p_y`` computed as ``-expm1(log p_y)``. ``log_end`` in ``(0, 1]``.
    """
    hyperparameter(log_end, "log_end", low=0, high=1, low_open=True)
    log_py, mask = _log_p_label(logits, labels, ignore_index)
    p = jnp.exp(log_py)
    log_bonus = jnp.log(jnp.maximum(-jnp.expm1(log_py), 1e-5))
    # The tangent is only used where p > log_end, which never holds for log_end >= 1.
    safe_end = jnp.where(log_end < 1.0, log_end, 0.5)
    tangent = (p - safe_end) / (safe_end - 1.0) + jnp.log1p(-safe_end)
    return mask.apply(-log_py + jnp.where(p > log_end, tangent, log_bonus))


def harmonic(features, centers, labels, *, exponent=1.0, eps=1e-4, ignore_index=None):
    """Harmonic loss: cross-entropy of ``prob_c = d_c^(-2n) / sum_k d_k^(-2n)``.

    ``d_c^2 = ||x - w_c||^2 + eps`` is the squared distance from the features to class
    centre ``w_c``; ``loss = -log_softmax(-exponent * log d^2)_y``. The exponent ``n`` acts
    on the squared distance, as in the code; the paper writes ``d^(-n)`` with ``d`` the
    Euclidean distance, i.e. its ``n`` is twice this ``exponent``.

    Paper: Baek et al., "Harmonic Loss Trains Interpretable AI Models" (2025),
    arXiv:2502.01628. The authors suggest ``exponent`` in ``{1, sqrt(D), D}``.

    Matches KindXiaoming/grow-crystals ``DistLayer`` (``n=1``, ``eps=1e-4``) followed by
    ``-log`` of the normalised probabilities; the distances are computed from differences
    rather than ``|w|^2 + |x|^2 - 2 w.x``, which is more accurate (and exactly invariant to
    translating features and centres together). ``features [..., D]``, ``centers [K, D]``,
    integer ``labels [...]`` in ``[0, K)`` with ``K`` the number of centres.
    ``exponent > 0``, ``eps >= 0``.
    """
    positive(exponent, "exponent")
    nonnegative(eps, "eps")
    centers = float_array(centers, "centers")
    width = jnp.shape(features)[-1] if jnp.ndim(features) else None
    if centers.ndim != 2 or centers.shape[-1] != width or centers.shape[0] < 1:
        raise ValueError(f"`centers` must have shape (num_classes, {width}) "
                         f"(one row per class, as wide as `features`), got {centers.shape}.")
    features, labels, mask = batched_logits_and_labels(
        features, labels, ignore_index=ignore_index, num_classes=centers.shape[0],
        logits_name="features")
    sq_dist = jnp.sum(jnp.square(features[..., None, :] - centers), axis=-1) + eps
    log_prob = jax.nn.log_softmax(-exponent * jnp.log(sq_dist), axis=-1)
    return mask.apply(-_at_label(log_prob, labels))


def stablemax_cross_entropy(logits, labels, *, ignore_index=None):
    """Stablemax cross-entropy, ``-log(s(z_y) / sum_k s(z_k))``.

    ``s(x) = x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0``: a softmax whose
    ``exp`` is replaced by a function that grows linearly, so the probabilities do not
    saturate in floating point ("softmax collapse").

    Paper: Prieto et al., "Grokking at the Edge of Numerical Stability" (2025),
    arXiv:2501.04697.

    Matches ``stablemax_cross_entropy`` in the authors' code (LucasPrietoAl/grokking-at-the-
    edge-of-numerical-stability ``utils.py``), which casts the logits to float64 before the
    loss (its ``1e-30`` in ``1 / (1 - x + 1e-30)`` matters only there). Here the dtype is that
    of the logits, float32 or wider: for the reference's computation pass
    ``logits.astype(jnp.float64)`` with x64 enabled (``jaxreg run grokking`` does; in float32
    StableMax did not grok there). ``log s(z_y)`` is ``log1p(x)`` or ``-log1p(-x)``.
    """
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    nonneg = logits >= 0
    s = jnp.where(nonneg, logits + 1.0, 1.0 / (1.0 - jnp.minimum(logits, 0.0)))
    log_s = jnp.where(nonneg, jnp.log1p(jnp.maximum(logits, 0.0)),
                      -jnp.log1p(-jnp.minimum(logits, 0.0)))
    return mask.apply(jnp.log(jnp.sum(s, axis=-1)) - _at_label(log_s, labels))


def ldam(logits, labels, class_counts, *, max_margin=0.5, scale=30.0, ignore_index=None):
    """Label-distribution-aware margin (LDAM) loss, ``CE(scale * (z - m_y e_y), y)``.

    The margin of class ``c`` is ``m_c = C / n_c^(1/4)``, with ``C`` such that
    ``max_c m_c = max_margin``; it is subtracted from the labelled logit only.

    Papers: Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin
    Loss" (2019), arXiv:1906.07413; used in Rangwani et al., "Escaping Saddle Points for
    Effective Generalization on Class-Imbalanced Data" (2022), arXiv:2212.13827.

    Matches kaidic/LDAM-DRW ``losses.py`` ``LDAMLoss`` (``max_m=0.5``, ``s=30``,
    ``weight=None``) per example. There the logits are cosine similarities (normalised
    features and weights); here they are taken as given. ``class_counts [K]`` must be
    positive; ``max_margin >= 0``, ``scale > 0``.
    """
    nonnegative(max_margin, "max_margin")
    positive(scale, "scale")
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    counts = _counts(class_counts, logits.shape[-1])
    margins = counts ** -0.25
    margins = margins * (max_margin / jnp.max(margins))
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    adjusted = scale * (logits - margins * is_label)
    return mask.apply(-_at_label(jax.nn.log_softmax(adjusted, axis=-1), labels))


def logit_adjusted(logits, labels, class_counts, *, tau=1.0, ignore_index=None):
    """Logit-adjusted cross-entropy, ``CE(z + tau * log(pi), y)`` with class priors ``pi``.

    ``pi = class_counts / sum(class_counts)``; rare classes get their logits lowered during
    training, which makes the loss Fisher-consistent for the balanced error.

    Papers: Menon et al., "Long-tail learning via logit adjustment" (2021), arXiv:2007.07314
    (the logit-adjusted softmax cross-entropy, ``tau = 1``); used in Rangwani et al.,
    "Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data" (2022),
    arXiv:2212.13827.

    The paper's loss; implementations that compute ``log(pi ** tau + 1e-12)`` differ only
    for priors near ``1e-12``. ``tau * log(pi)`` is used as is, so ``class_counts [K]`` must
    be positive; ``tau >= 0``.
    """
    nonnegative(tau, "tau")
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    counts = _counts(class_counts, logits.shape[-1])
    log_prior = jnp.log(counts) - jnp.log(jnp.sum(counts))
    adjusted = logits + tau * log_prior
    return mask.apply(-_at_label(jax.nn.log_softmax(adjusted, axis=-1), labels))


def asymmetric(logits, targets, *, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8,
               stop_gradient_weight=True):
    """Asymmetric loss (ASL) for multi-label classification, summed over the class axis.

    With ``p = sigmoid(z)`` and the shifted negative probability
    ``p_neg = min(1 - p + clip, 1)``,
    ``L = -sum_k [y log max(p, eps) + (1 - y) log max(p_neg, eps)] (1 - p_t)^gamma_k``,
    ``p_t = y p + (1 - y) p_neg``, ``gamma_k = gamma_pos y + gamma_neg (1 - y)``. With
    ``gamma_pos = gamma_neg = clip = 0`` it is the binary cross-entropy (with the ``eps``
    floor).

    Paper: Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (2021),
    arXiv:2009.14119; defaults ``gamma_neg = 4``, ``gamma_pos = 0``, ``clip = 0.05`` (the
    paper's and ``train.py``'s; the class default is ``gamma_pos = 1``).

    Matches Alibaba-MIIL/ASL ``src/loss_functions/losses.py`` ``AsymmetricLoss`` with
    ``disable_torch_grad_focal_loss=True`` (the weight is detached;
    ``stop_gradient_weight=False`` differentiates it). The reference returns the sum over
    batch and classes; this returns the sum over classes, per example. ``1 - p`` is
    computed as ``sigmoid(-z)``, which differs from the reference's ``1 - sigmoid(z)`` only
    by float32 rounding. Domains: ``gamma_pos, gamma_neg >= 0``, ``clip`` in ``[0, 1]``,
    ``eps > 0``.
    """
    nonnegative(gamma_pos, "gamma_pos")
    nonnegative(gamma_neg, "gamma_neg")
    hyperparameter(clip, "clip", low=0, high=1)
    positive(eps, "eps")
    logits, targets = logits_and_targets(logits, targets)
    p = jax.nn.sigmoid(logits)
    p_neg = jnp.minimum(jax.nn.sigmoid(-logits) + clip, 1.0)
    log_likelihood = (targets * jnp.log(jnp.maximum(p, eps))
                      + (1.0 - targets) * jnp.log(jnp.maximum(p_neg, eps)))
    p_t = targets * p + (1.0 - targets) * p_neg
    weight = _power(1.0 - p_t, gamma_pos * targets + gamma_neg * (1.0 - targets))
    if stop_gradient_weight:
        weight = jax.lax.stop_gradient(weight)
    return -jnp.sum(log_likelihood * weight, axis=-1)


def label_distributionally_robust(logits, labels, *, lam=1.0, margin=0.1,
                                  normalize_logits=True, ignore_index=None):
    """LDR-KL loss, ``lam * log((1/K) sum_k exp((f_k + margin [k != y] - f_y) / lam))``.

    The worst case, over label distributions ``q``, of ``sum_k q_k (f_k + c_ky - f_y)``
    penalised by ``lam * KL(q, uniform)``: ``lam -> 0`` gives the Crammer-Singer hinge
    ``max_k (f_k + c_ky - f_y)``, ``lam -> inf`` the mean gap, and ``margin = 0, lam = 1``
    without normalisation the cross-entropy minus ``log K``.

    Paper: Zhu, Ying & Yang, "Label Distributionally Robust Losses for Multi-class
    Classification: Consistency, Robustness and Adaptivity" (ICML 2023), arXiv:2112.14869.

    Matches ``LDRLoss_V1`` of the official code, Optimization-AI/ICML2023_LDR ``loss.py``
    (also DixianZhu/LDR; the catalog's LibAUC does not ship it): with
    ``normalize_logits=True`` the scores are ``f = softplus(z) / mean_k softplus(z_k)``
    (non-negative, mean 1), as there; ``False`` uses ``f = z``. ``margin = 0.1`` is
    ``experiment.py``'s default (the class default is 2.0); ``lam = 1`` is one of its grid
    ``{0.1, 1, 10}``. Here ``f`` is computed in log space, ``f = exp(log softplus(z) -
    log mean exp(log softplus(z)))``, so it stays finite where every ``softplus(z_k)``
    underflows. ``lam > 0``, ``margin >= 0``.
    """
    positive(lam, "lam")
    nonnegative(margin, "margin")
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    if normalize_logits:
        # log softplus(z) = z + log1p(-e^z / 2 + ...) ~ z below -20 (float32 rounding).
        very_negative = logits < -20.0
        log_softplus = jnp.where(
            very_negative, logits,
            jnp.log(jax.nn.softplus(jnp.where(very_negative, 0.0, logits))))
        scores = jnp.exp(log_softplus - jax.nn.logsumexp(log_softplus, axis=-1, keepdims=True)
                         + jnp.log(logits.shape[-1]))
    else:
        scores = logits
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    gaps = margin * (1.0 - is_label) + scores - _at_label(scores, labels)[..., None]
    return mask.apply(lam * (jax.nn.logsumexp(gaps / lam, axis=-1) - jnp.log(logits.shape[-1])))
