"""Metric-learning and margin-softmax losses: Circle, Multi-Similarity, Proxy-Anchor, the
additive-margin heads (AM-softmax, CosFace, ArcFace, AdaFace) and GE2E.

Conventions (shared with the other embedding losses, see ``jaxreg.losses._embeddings``):

* Embeddings ``[N, D]`` of any float dtype are computed in float32 or wider; similarities
  are cosines (both sides L2-normalised inside, as PyTorch Metric Learning's
  ``CosineSimilarity`` and the face-recognition heads do).
* The pair losses (:func:`circle`, :func:`multi_similarity`) take integer ``labels [N]``: the
  positives of anchor ``i`` are the other examples with its label, the negatives those with
  another label. They return the per-anchor loss ``[N]``, unreduced; an anchor without a
  positive (or, for Circle, without a negative) gets 0, with a finite gradient.
* ``axis_name``: inside ``shard_map``/``pmap`` over that axis each device holds a shard of
  the batch; the pair losses return the local anchors' losses against the gathered global
  batch, :func:`proxy_anchor` the global scalar on every device.
* The classification heads take ``features [N, D]``, the class centres ``centers [K, D]``
  (the rows of the classifier weight, trained by the caller) and integer ``labels [N]`` in
  ``[0, K)``; they return the per-example cross-entropy of the scaled cosine logits ``[N]``
  (its mean is the references' loss). Labels follow the rule of ``jaxreg._validate``: a label
  outside ``[0, K)`` gives NaN for its example, and concrete labels are checked up front.
* Numeric hyperparameters are keyword-only and may be traced (``jax.vmap`` sweeps them);
  concrete values are checked against their domains.

The triplet margin loss is not here: use ``optax.losses.triplet_margin_loss``, which matches
``torch.nn.TripletMarginLoss`` (tested in ``tests/losses/test_metric.py``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxreg._validate import (
    class_labels,
    float_array,
    hyperparameter,
    nonnegative,
    positive,
)
from jaxreg.losses import _embeddings as emb

# -- Private helpers ----------------------------------------------------------------------------


def _masked_logsumexp(x, mask):
    """``log sum_{j in mask} exp x_j`` along the last axis; 0 for a row with no entry in the
    mask, with a finite (zero) gradient."""
    has = jnp.any(mask, axis=-1, keepdims=True)
    lse = jax.nn.logsumexp(x, axis=-1, where=mask | ~has)
    return jnp.where(has[..., 0], lse, 0.0)


def _log1p_sum_exp(x, mask, axis, axis_name=None):
    """``log(1 + sum_{mask} exp x)`` along ``axis``, the sum also taken over the devices of
    ``axis_name`` (0 where the mask is empty). Shifted by a detached ``c = max(0, max x)``:
    ``c + log1p(expm1(-c) + sum exp(x - c))``, exact for small sums too."""
    x = jnp.where(mask, x, -jnp.inf)
    shift = jnp.maximum(jax.lax.stop_gradient(jnp.max(x, axis=axis)), 0.0)
    if axis_name is not None:
        shift = jax.lax.pmax(shift, axis_name)
    total = emb.batch_sum(jnp.sum(jnp.exp(x - jnp.expand_dims(shift, axis)), axis=axis),
                          axis_name)
    return shift + jnp.log1p(jnp.expm1(-shift) + total)


def _pairs(embeddings, labels, axis_name):
    """Cosine similarities of the local anchors to the global batch ``[n, N]`` and the
    positive (same label, not itself) and negative (other label) masks."""
    x = emb.embeddings(embeddings)
    labels = emb.labels_for(labels, x.shape[0])
    unit = emb.normalize(x)
    every, every_label = emb.gather(unit, axis_name), emb.gather(labels, axis_name)
    rows = emb.shard_offset(axis_name, x.shape[0]) + jnp.arange(x.shape[0])
    same = labels[:, None] == every_label[None, :]
    itself = rows[:, None] == jnp.arange(every.shape[0])[None, :]
    return unit @ every.T, same & ~itself, ~same


def _at_label(values, labels):
    """``values[i, labels[i]]`` (labels in range)."""
    return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def _cosines(features, centers, labels, names=("features", "centers")):
    """Checks a head's inputs; returns the cosines ``[N, K]`` clamped to ``[-1, 1]`` (as
    insightface's ``PartialFC`` does), the safe labels and the label mask."""
    features = emb.embeddings(features, names[0])
    centers = emb.embeddings(centers, names[1])
    if centers.shape[1] != features.shape[1]:
        raise ValueError(f"`{names[1]}` must have shape (num_classes, {features.shape[1]}) "
                         f"(one row per class, as wide as `{names[0]}`), got {centers.shape}.")
    labels = emb.labels_for(labels, features.shape[0])
    safe, mask = class_labels(labels, centers.shape[0])
    cos = emb.normalize(features) @ emb.normalize(centers).T
    return jnp.clip(cos, -1.0, 1.0), safe, mask


def _margin_cross_entropy(cos, labels, mask, target, scale):
    """Cross-entropy of ``scale * cos`` with each row's labelled entry replaced by
    ``target [N]`` (the margin-modified cosine of the label), as
    ``softplus(lse_{j != y} scale (cos_j - target))``: equal to ``lse - scale * target`` but
    with full relative precision when the loss is small (at ``scale = 64`` the difference
    of two logits near 64 loses everything below 1e-5)."""
    is_label = labels[:, None] == jnp.arange(cos.shape[1])[None, :]
    others = jnp.where(is_label, -jnp.inf, scale * (cos - target[:, None]))
    return mask.apply(jax.nn.softplus(jax.nn.logsumexp(others, axis=-1)))


def _sin_of_angle(cos):
    """``sqrt(1 - cos^2)`` with a zero (finite) gradient at ``|cos| = 1``."""
    sq = 1.0 - cos * cos
    inside = sq > 0
    return jnp.where(inside, jnp.sqrt(jnp.where(inside, sq, 1.0)), 0.0)


# -- Pair and proxy losses ----------------------------------------------------------------------


def circle(embeddings, labels, *, margin=0.4, gamma=80.0, axis_name=None):
    """Circle loss, per anchor.

    With cosine similarities ``s``, ``alpha_p = relu(1 + m - s_p)``, ``alpha_n = relu(s_n + m)``
    (both detached, ``stop_gradient``, as in the reference), ``Delta_p = 1 - m``,
    ``Delta_n = m``::

        L_i = softplus( logsumexp_{n in N(i)} gamma alpha_n (s_n - Delta_n)
                      + logsumexp_{p in P(i)} -gamma alpha_p (s_p - Delta_p) )

    (``log(1 + sum_n sum_p exp(...))``, the paper's circle loss with its margins), and
    ``L_i = 0`` for an anchor without a positive or without a negative.

    Paper: Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization"
    (2020), arXiv:2002.10857. Its settings: face recognition ``m = 0.25, gamma = 256``,
    re-identification ``m = 0.25, gamma = 128``, fine-grained retrieval ``m = 0.4,
    gamma = 80`` (the defaults here and in PML).

    Matches pytorch-metric-learning 2.9.0 ``CircleLoss(m=0.4, gamma=80)`` per anchor. PML
    reduces with ``AvgNonZeroReducer``: the mean over the anchors whose loss is > 0, i.e.
    ``loss[loss > 0].mean()`` (0 if none), which is what to take of the output here to
    reproduce PML's value; ``.mean()`` counts the zero-loss anchors too.

    Args:
      embeddings: ``[N, D]`` (the local shard under ``axis_name``).
      labels: integer ``[N]``.
      margin: the relaxation ``m`` (any real).
      gamma: the scale, > 0.
      axis_name: gather the batch over this mesh axis (see the module docstring).

    Returns:
      ``[N]``: each local anchor's loss.
    """
    hyperparameter(margin, "margin")
    positive(gamma, "gamma")
    sim, pos, neg = _pairs(embeddings, labels, axis_name)
    fixed = jax.lax.stop_gradient(sim)
    pos_logits = -gamma * jax.nn.relu(1.0 + margin - fixed) * (sim - (1.0 - margin))
    neg_logits = gamma * jax.nn.relu(fixed + margin) * (sim - margin)
    valid = jnp.any(pos, axis=-1) & jnp.any(neg, axis=-1)
    total = _masked_logsumexp(pos_logits, pos) + _masked_logsumexp(neg_logits, neg)
    return jnp.where(valid, jax.nn.softplus(total), 0.0)


def multi_similarity(embeddings, labels, *, alpha=2.0, beta=50.0, base=0.5, axis_name=None):
    """Multi-Similarity loss, per anchor (without the paper's pair mining).

    With cosine similarities ``s`` and ``lambda = base``::

        L_i = 1/alpha log(1 + sum_{p in P(i)} exp(-alpha (s_p - lambda)))
            + 1/beta  log(1 + sum_{n in N(i)} exp( beta (s_n - lambda)))

    (the paper's L_MS over all pairs; an empty sum gives 0).

    Paper: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning" (2019), arXiv:1904.06627. Defaults are PML's, ``alpha = 2, beta = 50,
    lambda = 0.5``; the authors' code (MalongTech/research-ms-loss ``ms_loss.py`` and its
    default config) uses ``beta = 40`` and first mines the pairs (margin 0.1). Pair this loss
    with a miner of your own, or use none, as PML does by default.

    Matches pytorch-metric-learning 2.9.0 ``MultiSimilarityLoss(alpha=2, beta=50, base=0.5)``;
    its ``MeanReducer`` is ``.mean()`` of the output here. ``alpha, beta > 0``.

    Args:
      embeddings: ``[N, D]`` (the local shard under ``axis_name``).
      labels: integer ``[N]``.
      alpha: the positive pairs' scale, > 0.
      beta: the negative pairs' scale, > 0.
      base: the similarity offset ``lambda`` (any real).
      axis_name: gather the batch over this mesh axis (see the module docstring).

    Returns:
      ``[N]``: each local anchor's loss.
    """
    positive(alpha, "alpha")
    positive(beta, "beta")
    hyperparameter(base, "base")
    sim, pos, neg = _pairs(embeddings, labels, axis_name)
    return (_log1p_sum_exp(alpha * (base - sim), pos, axis=1) / alpha
            + _log1p_sum_exp(beta * (sim - base), neg, axis=1) / beta)


def proxy_anchor(embeddings, labels, proxies, *, margin=0.1, alpha=32.0, axis_name=None):
    """Proxy-Anchor loss over a batch (a scalar).

    With ``s(x, p)`` the cosine between an embedding and a proxy, ``P+`` the proxies of the
    classes present in the batch, ``X_p+`` the embeddings of class ``p`` and ``X_p-`` the
    others::

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    (the paper's Proxy-Anchor loss). Gradients flow to the embeddings and to the proxies, a
    parameter the caller trains (PML initialises them with
    ``kaiming_normal_(mode='fan_out')``; the paper trains them with a 100x larger learning
    rate).

    Paper: Kim et al., "Proxy Anchor Loss for Deep Metric Learning" (2020), arXiv:2003.13911;
    defaults ``margin = 0.1, alpha = 32``.

    Matches pytorch-metric-learning 2.9.0 ``ProxyAnchorLoss(margin=0.1, alpha=32)`` with its
    ``DivisorReducer``. With ``axis_name`` the inner per-proxy sums and ``|P+|`` run over the
    global batch (summed across devices), so every device gets the global loss.

    Args:
      embeddings: ``[N, D]`` (the local shard under ``axis_name``).
      labels: integer ``[N]`` in ``[0, K)``; an out-of-range label makes the loss NaN.
      proxies: ``[K, D]``, one per class.
      margin: ``delta``, >= 0.
      alpha: the scale, > 0.
      axis_name: sum over the devices of this mesh axis (see the module docstring).

    Returns:
      The scalar loss.
    """
    nonnegative(margin, "margin")
    positive(alpha, "alpha")
    cos, safe, mask = _cosines(embeddings, proxies, labels, ("embeddings", "proxies"))
    num_proxies = cos.shape[1]
    pos = safe[:, None] == jnp.arange(num_proxies)[None, :]
    pos_term = _log1p_sum_exp(alpha * (margin - cos), pos, axis=0, axis_name=axis_name)
    neg_term = _log1p_sum_exp(alpha * (cos + margin), ~pos, axis=0, axis_name=axis_name)
    with_positives = jnp.sum(emb.batch_sum(jnp.sum(pos, axis=0), axis_name) > 0)
    loss = jnp.sum(pos_term) / jnp.maximum(with_positives, 1) + jnp.sum(neg_term) / num_proxies
    invalid = emb.batch_sum(jnp.sum(~mask.in_range), axis_name)
    return loss * jnp.where(invalid > 0, jnp.nan, 1.0).astype(loss.dtype)


# -- Additive-margin classification heads -------------------------------------------------------


def _additive_margin(features, centers, labels, scale, margin):
    """The shared CosFace / AM-softmax head: target logit ``cos(theta_y) - margin``."""
    positive(scale, "scale")
    nonnegative(margin, "margin")
    cos, safe, mask = _cosines(features, centers, labels)
    return _margin_cross_entropy(cos, safe, mask, _at_label(cos, safe) - margin, scale)


def additive_margin_softmax(features, centers, labels, *, scale=30.0, margin=0.35):
    """Additive-margin softmax (AM-softmax): cross-entropy of ``s * cos``, the label's cosine
    lowered by ``m``.

    ``L_i = -log( e^{s (cos theta_y - m)} / (e^{s (cos theta_y - m)}
    + sum_{k != y} e^{s cos theta_k}) )``, cosines between the L2-normalised features and
    class centres.

    Paper: Wang et al., "Additive Margin Softmax for Face Verification" (2018),
    arXiv:1801.05599; ``s = 30, m = 0.35`` (its defaults here).

    The same head as :func:`cosface` (one implementation); matches pytorch-metric-learning
    2.9.0 ``CosFaceLoss(margin=0.35, scale=30)``. ``scale > 0, margin >= 0``.

    Returns:
      ``[N]``: the per-example cross-entropy.
    """
    return _additive_margin(features, centers, labels, scale, margin)


def cosface(features, centers, labels, *, scale=64.0, margin=0.35):
    """CosFace, the large margin cosine loss (LMCL): AM-softmax with the paper's ``s = 64``.

    ``L_i = -log( e^{s (cos theta_y - m)} / (e^{s (cos theta_y - m)}
    + sum_{k != y} e^{s cos theta_k}) )`` (Eq. 4 of the paper).

    Paper: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition" (2018),
    arXiv:1801.09414; ``s = 64, m = 0.35``. insightface's ``CosFace`` uses ``m = 0.40``
    (pass ``margin=0.4`` to match it).

    Matches pytorch-metric-learning 2.9.0 ``CosFaceLoss(margin=0.35, scale=64)`` and
    deepinsight/insightface ``recognition/arcface_torch/losses.py`` ``CosFace(s=64, m=0.4)``
    with ``margin=0.4``. ``scale > 0, margin >= 0``.

    Returns:
      ``[N]``: the per-example cross-entropy.
    """
    return _additive_margin(features, centers, labels, scale, margin)


def arcface(features, centers, labels, *, scale=64.0, margin=0.5, easy_margin=False):
    """ArcFace, the additive angular margin loss: the label's angle is increased by ``m``.

    Target logit ``cos(theta_y + m) = cos theta_y cos m - sin theta_y sin m`` where
    ``cos theta_y > cos(pi - m)``; below (where ``theta + m`` would pass ``pi`` and the
    logit stop decreasing) it is ``cos theta_y - m sin(pi - m)``. With ``easy_margin`` the
    margin applies only where ``cos theta_y > 0``. All logits are scaled by ``s``
    (Eq. 3 of the paper).

    Paper: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition"
    (2019), arXiv:1801.07698; ``s = 64, m = 0.5``.

    Matches deepinsight/insightface ``recognition/arcface_torch/losses.py``
    ``ArcFace(s=64.0, margin=0.5)`` (margin in radians, cosines clamped to ``[-1, 1]`` as its
    ``PartialFC`` does), and pytorch-metric-learning 2.9.0 ``ArcFaceLoss``, whose margin is in
    degrees (default 28.6): ``ArcFaceLoss(margin=math.degrees(0.5), scale=64)`` is the same
    loss. ``sin theta = sqrt(1 - cos^2)`` has a zero gradient at ``|cos theta| = 1`` (the
    references give NaN or inf there), so gradients stay finite.

    Args:
      scale: ``s`` > 0.
      margin: ``m`` in radians, >= 0.
      easy_margin: static bool.

    Returns:
      ``[N]``: the per-example cross-entropy.
    """
    positive(scale, "scale")
    nonnegative(margin, "margin")
    if not isinstance(easy_margin, bool):
        raise TypeError(f"`easy_margin` must be a bool (it is static), got {easy_margin!r}.")
    cos, safe, mask = _cosines(features, centers, labels)
    cos_y = _at_label(cos, safe)
    shifted = cos_y * jnp.cos(margin) - _sin_of_angle(cos_y) * jnp.sin(margin)
    if easy_margin:
        target = jnp.where(cos_y > 0, shifted, cos_y)
    else:
        fallback = cos_y - jnp.sin(math.pi - margin) * margin
        target = jnp.where(cos_y > jnp.cos(math.pi - margin), shifted, fallback)
    return _margin_cross_entropy(cos, safe, mask, target, scale)


class AdaFaceState(NamedTuple):
    """AdaFace's running statistics of the feature norms (the EMA of the batch mean and
    standard deviation); no gradient flows through them."""
    batch_mean: jax.Array
    batch_std: jax.Array


def adaface_init(dtype=jnp.float32) -> AdaFaceState:
    """AdaFace's initial state: ``batch_mean = 20``, ``batch_std = 100``, scalars of
    ``dtype`` (the state keeps its dtype from step to step, as a ``lax.scan`` carry must)."""
    return AdaFaceState(jnp.asarray(20.0, dtype), jnp.asarray(100.0, dtype))


_ADA_EPS = 1e-3  # head.py: self.eps


def adaface(features, centers, labels, state, *, margin=0.4, h=0.333, scale=64.0,
            t_alpha=1.0):
    """AdaFace: a margin that adapts to image quality, proxied by the feature norm.

    With ``n_i = clip(||f_i||, 1e-3, 100)`` (detached), the EMA ``mu <- t_alpha mean(n) +
    (1 - t_alpha) mu``, ``sigma <- t_alpha std(n) + (1 - t_alpha) sigma`` (unbiased std;
    detached), ``s_i = clip(h (n_i - mu) / (sigma + 1e-3), -1, 1)`` and the cosines clamped
    to ``[-1 + 1e-3, 1 - 1e-3]``, the label's logit is
    ``cos(clip(theta_y - m s_i, 1e-3, pi - 1e-3)) - (m + m s_i)``; all logits are scaled by
    ``scale`` (the paper's g_angle and g_add margins). High-norm (good quality) features get
    an angular margin, low-norm ones an additive one.

    Paper: Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition" (2022),
    arXiv:2204.00964.

    Matches mk-minchul/AdaFace ``head.py`` ``AdaFace`` followed by the cross-entropy, with
    the features of the backbone before its normalisation (the norms and the normalised
    embeddings it passes to the head both come from them). Defaults are the class defaults
    ``m = 0.4, h = 0.333, s = 64, t_alpha = 1.0`` (the EMA keeps only the current batch);
    the command-line defaults of its ``config.py`` differ: ``m = 0.5, h = 0.0, s = 64,
    t_alpha = 0.01``. The state is explicit: start from :func:`adaface_init`, feed back the
    returned one. Needs at least 2 examples (the batch std).

    Args:
      features: ``[N, D]``, unnormalised (their norms are the quality signal).
      centers: ``[K, D]``.
      labels: integer ``[N]`` in ``[0, K)``.
      state: an :class:`AdaFaceState`.
      margin: ``m`` >= 0; h: >= 0; scale: > 0; t_alpha: in ``[0, 1]``.

    Returns:
      ``(loss [N], new_state)``; the new state has the dtype of ``state``.
    """
    nonnegative(margin, "margin")
    nonnegative(h, "h")
    positive(scale, "scale")
    hyperparameter(t_alpha, "t_alpha", low=0, high=1)
    if not isinstance(state, AdaFaceState):
        raise TypeError(f"`state` must be an AdaFaceState (see adaface_init()), got "
                        f"{type(state).__name__}.")
    features = emb.embeddings(features, "features")
    if features.shape[0] < 2:
        raise ValueError(f"`features` must hold at least 2 examples (AdaFace uses the batch "
                         f"std of their norms), got shape {features.shape}.")
    cos, safe, mask = _cosines(features, centers, labels)
    cos = jnp.clip(cos, -1.0 + _ADA_EPS, 1.0 - _ADA_EPS)
    norms = jax.lax.stop_gradient(jnp.clip(jnp.linalg.norm(features, axis=-1), 1e-3, 100.0))
    mean = t_alpha * jnp.mean(norms) + (1.0 - t_alpha) * state.batch_mean
    std = t_alpha * jnp.std(norms, ddof=1) + (1.0 - t_alpha) * state.batch_std
    scaler = jnp.clip(h * (norms - mean) / (std + _ADA_EPS), -1.0, 1.0)
    theta = jnp.arccos(_at_label(cos, safe))
    angle = jnp.clip(theta - margin * scaler, _ADA_EPS, math.pi - _ADA_EPS)
    target = jnp.cos(angle) - margin * (1.0 + scaler)
    new_state = AdaFaceState(*(jax.lax.stop_gradient(v).astype(jnp.result_type(s))
                               for v, s in zip((mean, std), state)))
    return _margin_cross_entropy(cos, safe, mask, target, scale), new_state


# -- GE2E -------------------------------------------------------------------------------------

_GE2E_W_FLOOR = 1e-6


def _floored_weight(w):
    """``max(w, 1e-6)`` in value, with the gradient of ``w`` itself (straight through)."""
    return jax.lax.stop_gradient(jnp.maximum(w, _GE2E_W_FLOOR)) + (w - jax.lax.stop_gradient(w))


def _scalar(value, name):
    value = float_array(value, name)
    if value.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {value.shape}.")
    return value


def ge2e(embeddings, w, b, *, variant="softmax"):
    """Generalized end-to-end (GE2E) loss for speaker verification, per utterance.

    ``embeddings [S, U, D]``: ``U`` utterances of each of ``S`` speakers, L2-normalised
    inside. Utterance ``e_ji`` is compared with every speaker's centroid (the normalised
    mean of its embeddings) except its own, which is the exclusive centroid of the other
    ``U - 1`` utterances: ``S_ji,k = w cos(e_ji, c_k) + b`` (Section 2.1, Eq. 9). Then

    * ``variant='softmax'``: ``L_ji = -S_ji,j + log sum_k exp S_ji,k`` (Eq. 6);
    * ``variant='contrast'``: ``L_ji = 1 - sigmoid(S_ji,j) + max_{k != j} sigmoid(S_ji,k)``
      (Eq. 7).

    Paper: Wan et al., "Generalized End-to-End Loss for Speaker Verification" (2018),
    arXiv:1710.10467. ``w`` and ``b`` are learned; initialise them to ``w = 10, b = -5``
    (the paper's and CorentinJ's values). The paper requires ``w > 0``; here the loss uses
    ``max(w, 1e-6)`` with the gradient passed straight through to ``w``, so the similarity
    scale never flips sign and an optimiser that pushes ``w`` below the floor is not stuck
    with a zero gradient. The reference implementations do not enforce it: CorentinJ's has
    no clamp, and the ``torch.clamp(self.w, 1e-6)`` of other common GE2E codes discards its
    result. CorentinJ also scales the gradients of ``w`` and ``b`` by 0.01 (an optimiser
    setting, not part of the loss).

    Matches CorentinJ/Real-Time-Voice-Cloning ``encoder/model.py`` (the normalisation of
    ``SpeakerEncoder.forward``, ``similarity_matrix`` and the cross-entropy of ``loss``,
    whose value is the mean of the softmax variant); the contrast variant, not in that code,
    follows the paper. Needs ``S >= 2`` and ``U >= 2``.

    Args:
      embeddings: ``[S, U, D]``.
      w: the scalar similarity scale (a parameter the caller trains).
      b: the scalar similarity bias (a parameter the caller trains).
      variant: ``'softmax'`` or ``'contrast'`` (static).

    Returns:
      ``[S, U]``: the loss of each utterance.
    """
    if variant not in ("softmax", "contrast"):
        raise ValueError(f"`variant` must be 'softmax' or 'contrast', got {variant!r}.")
    x = jnp.asarray(embeddings)
    if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError("`embeddings` must have shape [S, U, D] with S >= 2 speakers and "
                         f"U >= 2 utterances each, got shape {x.shape}.")
    unit = emb.normalize(float_array(x, "embeddings"))
    w, b = _floored_weight(_scalar(w, "w")), _scalar(b, "b")
    inclusive = emb.normalize(jnp.mean(unit, axis=1))
    exclusive = emb.normalize(jnp.sum(unit, axis=1, keepdims=True) - unit)
    own = jnp.eye(x.shape[0], dtype=bool)[:, None, :]
    cos = jnp.where(own, jnp.sum(unit * exclusive, axis=-1)[..., None],
                    jnp.einsum("sud,kd->suk", unit, inclusive))
    sim = w * cos + b
    sim_own = jnp.sum(jnp.where(own, sim, 0.0), axis=-1)
    if variant == "softmax":
        return jax.nn.logsumexp(sim, axis=-1) - sim_own
    others = jnp.max(jnp.where(own, 0.0, jax.nn.sigmoid(sim)), axis=-1)
    return 1.0 - jax.nn.sigmoid(sim_own) + others
