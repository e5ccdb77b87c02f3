"""Softmax and pair contrastive losses: InfoNCE, CLIP, SupCon, DCL/DCLW, the pair contrastive
loss of Hadsell et al., and Wang & Isola's alignment and uniformity.

Conventions shared by every function here:

* Embeddings are ``[N, D]`` (``[N, V, D]``, ``V`` views, for SupCon) of any float dtype,
  computed in float32 or wider (bfloat16 is upcast). With ``normalize=True`` (the default, as
  every reference normalizes, in the loss or in the model) rows are L2-normalized first, so
  similarities are cosines.
* The losses that are means over anchors return the per-example loss ``[N]``, unreduced:
  its mean is the reference's reduced loss. :func:`uniformity` is a batch-level scalar.
* Logits are masked after the temperature scaling, with the lowest finite float as the fill
  (never ``-inf``): excluded entries (an anchor itself, DCL's positive) get zero weight and
  zero gradient, a row with nothing left stays finite, and temperatures from 1e-4 to 1e4 keep
  values and gradients finite. Anchors without a positive give a loss of 0 with a zero
  gradient.
* ``axis_name``: inside ``jax.shard_map`` (or ``pmap``) over that axis each device passes its
  shard of the batch; the shards are gathered (``_embeddings.gather``: the gather's transpose
  returns each shard its gradient), each device returns its local examples' losses computed
  against the global batch, and :func:`uniformity` returns the global value on every device.
  Values and gradients equal those of the unsharded loss on the global batch.
* Hyperparameters are keyword-only and may be traced (``jit``/``vmap`` over them); concrete
  ones are checked against their domains (``ValueError`` naming the argument).

NT-Xent (SimCLR) is not here: it is ``optax.losses.ntxent(embeddings, labels,
temperature=0.07)`` (labels pairing the views), equal to lightly ``NTXentLoss`` and to
:func:`supervised_contrastive` without labels and with ``base_temperature=temperature``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array, hyperparameter, positive
from jaxreg.losses import _embeddings as emb

_CONTRAST_MODES = ("all", "one")
_REDUCERS = ("avg_nonzero", "mean")


# -- Shared pieces ------------------------------------------------------------------------------

def _masked_logsumexp(logits, mask):
    """``log sum_{mask} exp(logits)`` over the last axis; masked-out entries are filled with
    the lowest finite float, so they get zero weight and zero gradient and a row with no
    entry is finite."""
    return jax.nn.logsumexp(jnp.where(mask, logits, jnp.finfo(logits.dtype).min), axis=-1)


def _is_own(n_local: int, n_global: int, axis_name):
    """``[n_local, n_global]``: True where the global column is the local row's example."""
    rows = emb.shard_offset(axis_name, n_local) + jnp.arange(n_local)
    return rows[:, None] == jnp.arange(n_global)[None, :]


def _squared_distances(x, y):
    """``||x_i - y_j||^2``, ``[N, M]``, from the Gram matrix (clipped at 0)."""
    sq_x = jnp.sum(jnp.square(x), axis=-1)
    sq_y = jnp.sum(jnp.square(y), axis=-1)
    return jnp.maximum(sq_x[:, None] + sq_y[None, :] - 2.0 * x @ y.T, 0.0)


def _safe_power(squared, exponent):
    """``squared ** exponent`` with the value and gradient 0 at ``squared = 0`` (a norm to the
    power ``2 * exponent``; the plain form has a NaN gradient there)."""
    safe = jnp.where(squared > 0, squared, 1.0)
    return jnp.where(squared > 0, safe ** exponent, 0.0)


def _softmax_cross_modal(a, b, scale, *, symmetric: bool, axis_name):
    """InfoNCE of each row of ``a`` against the rows of ``b`` (global batch) with logits
    ``scale * a_i . b_j`` and the positive ``b_i``; with ``symmetric``, the mean with the
    ``b``-to-``a`` direction (CLIP). Per local row, ``[N]``."""
    def one_way(rows, columns):
        logits = scale * rows @ emb.gather(columns, axis_name).T
        # The positive is read from the same logits, so equal logits cancel exactly.
        own = _is_own(rows.shape[0], logits.shape[1], axis_name)
        return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(own, logits, 0.0), -1)

    loss = one_way(a, b)
    return 0.5 * (loss + one_way(b, a)) if symmetric else loss


# -- InfoNCE and CLIP ---------------------------------------------------------------------------

def info_nce(queries, keys, *, temperature=0.07, symmetric: bool = False,
             normalize: bool = True, axis_name=None) -> jax.Array:
    """InfoNCE with in-batch negatives: row ``i``'s positive is key ``i``, every other key a
    negative.

    With ``s_ij = q_i . k_j / T`` (cosines when ``normalize``),

        L_i = -log( exp(s_ii) / sum_j exp(s_ij) ) = lse_j(s_ij) - s_ii,

    the cross-entropy of row ``i`` of the ``[N, N]`` logits against its pair (van den Oord et
    al., "Representation Learning with Contrastive Predictive Coding", 2018, arXiv
    1807.03748, Eq. 4, with a cosine critic and a temperature). ``symmetric=True`` averages it
    with the key-to-query direction, ``(L_i + lse_j(s_ji) - s_ii) / 2``: the CLIP loss
    (Radford et al. 2021, arXiv 2103.00020, Fig. 3; "Improved baselines for vision-language
    pre-training", Fini et al. 2023, arXiv 2305.16999) at a fixed temperature.

    Matches RElbers/info-nce-pytorch ``InfoNCE`` without ``negative_keys`` (which normalizes;
    its default temperature is 0.1) and, with ``symmetric=True``, open_clip ``ClipLoss`` at
    ``logit_scale = 1 / T`` on normalized features. The default ``T = 0.07`` is MoCo's
    (He et al. 2020, arXiv 1911.05722) and CLIP's initial temperature. No gradient is stopped.

    Args:
        queries: ``[N, D]`` embeddings.
        keys: ``[N, D]`` embeddings; ``keys[i]`` is the positive of ``queries[i]``.
        temperature: ``T > 0``.
        symmetric: also contrast each key against all queries and average (CLIP).
        normalize: L2-normalize both first.
        axis_name: mapped axis the batch is sharded over; every device's keys (and queries,
            when symmetric) are negatives.

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    q, k = emb.paired(queries, keys, "queries", "keys")
    emb.temperature(temperature)
    q, k = emb.maybe_normalize(q, normalize), emb.maybe_normalize(k, normalize)
    return _softmax_cross_modal(q, k, 1.0 / temperature, symmetric=symmetric,
                                axis_name=axis_name)


def clip(image, text, logit_scale, *, max_logit_scale=math.log(100.0), normalize: bool = True,
         axis_name=None) -> jax.Array:
    """The CLIP loss with a learned temperature: symmetric InfoNCE at the scale
    ``exp(min(logit_scale, max_logit_scale))``.

    ``logit_scale`` is the logarithm of the inverse temperature, the parameter CLIP learns
    (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    2021, arXiv 2103.00020, Fig. 3 and Sec. 2.5: initialized at ``log(1 / 0.07)``, clipped so
    that the scale stays at most 100; "Improved baselines for vision-language pre-training",
    Fini et al. 2023, arXiv 2305.16999). With ``s = exp(logit_scale)`` and ``c_ij = s x_i .
    t_j`` the loss of pair ``i`` is ``(lse_j(c_ij) - c_ii + lse_j(c_ji) - c_ii) / 2``, the
    same computation as :func:`info_nce` with ``symmetric=True`` and ``T = 1 / s``.

    Matches open_clip ``ClipLoss`` (mlfoundations/open_clip ``src/open_clip/loss.py``; its mean),
    which receives ``logit_scale.exp()`` and normalized features from the model; open_clip's
    ``train.py`` clamps the parameter into ``[0, log 100]`` after every optimizer step. Here the
    upper clamp is in the forward pass (``max_logit_scale``, None for none), so the scale never
    exceeds 100 and the gradient in ``logit_scale`` is 0 above it. No gradient is stopped.

    Args:
        image: ``[N, D]`` image embeddings.
        text: ``[N, D]`` text embeddings; ``text[i]`` is the caption of ``image[i]``.
        logit_scale: scalar, the log inverse temperature (learnable).
        max_logit_scale: upper clamp on ``logit_scale`` (``log 100``), or None.
        normalize: L2-normalize both first (open_clip's model does).
        axis_name: mapped axis the batch is sharded over (open_clip's ``local_loss=True``,
            ``gather_with_grad=True``).

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    x, t = emb.paired(image, text, "image", "text")
    logit_scale = float_array(logit_scale, "logit_scale")
    if logit_scale.ndim != 0:
        raise ValueError(f"`logit_scale` must be a scalar, got shape {logit_scale.shape}.")
    hyperparameter(max_logit_scale, "max_logit_scale")
    if max_logit_scale is not None:
        logit_scale = jnp.minimum(logit_scale, max_logit_scale)
    x, t = emb.maybe_normalize(x, normalize), emb.maybe_normalize(t, normalize)
    return _softmax_cross_modal(x, t, jnp.exp(logit_scale), symmetric=True,
                                axis_name=axis_name)


# -- Supervised contrastive ---------------------------------------------------------------------

def supervised_contrastive(features, labels=None, *, temperature=0.07, base_temperature=0.07,
                           contrast_mode: str = "all", normalize: bool = True,
                           axis_name=None) -> jax.Array:
    """Supervised contrastive loss ``L_out`` (SimCLR's NT-Xent without labels).

    Khosla et al., "Supervised Contrastive Learning", 2020, arXiv 2004.11362, Eq. 2. The views
    are stacked view-major into ``C`` (``V N`` rows); the anchors ``A`` are all of them
    (``contrast_mode='all'``) or the first view of each example (``'one'``). With
    ``s_ac = a . c / T`` and ``P(a)`` the rows of ``C`` with ``a``'s label other than ``a``
    itself (without labels: the other views of ``a``'s example),

        l_a = -(T / base_T) * sum_{p in P(a)} ( s_ap - lse_{c != a} s_ac ) / max(|P(a)|, 1),

    so an anchor without positives has ``l_a = 0`` (and a zero gradient). The loss of example
    ``i`` is the mean of ``l_a`` over its anchor views; the mean over examples is the mean over
    all anchors, anchors without positives counted.

    Matches HobbitLong/SupContrast ``losses.py::SupConLoss`` (defaults ``temperature=0.07``,
    ``contrast_mode='all'``, ``base_temperature=0.07``; after its "fix: nan loss values",
    which gives anchors without positives 0), whose features are normalized by the model. Its
    detached row-max shift changes neither value nor gradient and is not needed here; no
    gradient is stopped.

    Other conventions: ``base_temperature=None`` drops the ``T / base_T`` factor (the same as
    ``base_temperature=temperature``): pytorch-metric-learning ``SupConLoss`` (default
    ``temperature=0.1``) on the views flattened to ``[N V, D]``, whose default
    ``AvgNonZeroReducer`` then averages over the anchors with a positive only, i.e. it is
    ``sum(loss * V) / (number of anchors with a positive)`` (equal to the mean when every
    anchor has one, as with ``V >= 2``). google-research/supcon scales by ``T`` alone:
    ``base_temperature=1``.

    Args:
        features: ``[N, V, D]`` embeddings, ``V >= 1`` views of each of ``N`` examples.
        labels: integer class labels ``[N]``, or None (each example its own class: SimCLR).
        temperature: ``T > 0``.
        base_temperature: ``base_T > 0``, or None for no ``T / base_T`` factor.
        contrast_mode: ``'all'`` (every view an anchor) or ``'one'`` (view 0 only).
        normalize: L2-normalize the features first.
        axis_name: mapped axis the batch is sharded over (``features`` and ``labels`` are this
            device's shard).

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-example losses.
    """
    features = emb.embeddings(features, "features", ndim=3)
    n, views, dim = features.shape
    if views < 1:
        raise ValueError(f"`features` must have at least one view on axis 1, got shape "
                         f"{features.shape}.")
    if contrast_mode not in _CONTRAST_MODES:
        raise ValueError(f"`contrast_mode` must be one of {_CONTRAST_MODES}, got "
                         f"{contrast_mode!r}.")
    emb.temperature(temperature)
    factor = 1.0
    if base_temperature is not None:
        factor = temperature / emb.temperature(base_temperature, "base_temperature")
    z = emb.maybe_normalize(features, normalize)
    z_all = emb.gather(z, axis_name)
    total = z_all.shape[0]
    contrast = jnp.swapaxes(z_all, 0, 1).reshape(views * total, dim)  # view-major
    anchors = z[:, :1] if contrast_mode == "one" else z  # [n, A, D]
    logits = anchors @ contrast.T / temperature  # [n, A, V * total]
    own = jnp.tile(_is_own(n, total, axis_name), (1, views))  # [n, V * total]
    is_self = own[:, None, :] & (jnp.repeat(jnp.arange(views), total)
                                 == jnp.arange(anchors.shape[1])[:, None])
    if labels is None:
        same = own
    else:
        labels = emb.labels_for(labels, n)
        same = labels[:, None] == jnp.tile(emb.gather(labels, axis_name), views)[None, :]
    positives = same[:, None, :] & ~is_self
    log_prob = logits - _masked_logsumexp(logits, ~is_self)[..., None]
    count = jnp.sum(positives, axis=-1)
    mean_log_prob = jnp.sum(jnp.where(positives, log_prob, 0.0), axis=-1) / jnp.maximum(count, 1)
    return -factor * jnp.mean(mean_log_prob, axis=-1)


# -- Decoupled contrastive ----------------------------------------------------------------------

def _decoupled(z0, z1, temperature, sigma, normalize, axis_name):
    """DCL (``sigma`` None) or DCLW per pair, ``[N]``."""
    a, b = emb.paired(z0, z1, "z0", "z1")
    emb.temperature(temperature)
    if axis_name is None and a.shape[0] < 2:
        raise ValueError(f"`z0` must hold at least 2 examples (one for the negatives), got "
                         f"shape {a.shape}.")
    a, b = emb.maybe_normalize(a, normalize), emb.maybe_normalize(b, normalize)
    a_all, b_all = emb.gather(a, axis_name), emb.gather(b, axis_name)
    own = _is_own(a.shape[0], a_all.shape[0], axis_name)
    weight = 1.0
    if sigma is not None:
        # 2 - N softmax over the (global) batch of cos(z0_i, z1_i) / sigma, detached.
        scores = jax.lax.stop_gradient(jnp.sum(a * b, axis=-1)) / emb.temperature(sigma, "sigma")
        log_norm = jax.nn.logsumexp(emb.gather(scores, axis_name))
        weight = 2.0 - a_all.shape[0] * jnp.exp(scores - log_norm)

    def one_way(x, x_all, y_all):
        same_view, other_view = x @ x_all.T / temperature, x @ y_all.T / temperature
        positive = jnp.sum(jnp.where(own, other_view, 0.0), axis=-1)
        negatives = jnp.concatenate([same_view, other_view], axis=-1)
        return -weight * positive + _masked_logsumexp(negatives, ~jnp.tile(own, (1, 2)))

    return 0.5 * (one_way(a, a_all, b_all) + one_way(b, b_all, a_all))


def decoupled_contrastive(z0, z1, *, temperature=0.1, normalize: bool = True,
                          axis_name=None) -> jax.Array:
    """Decoupled contrastive loss (DCL): InfoNCE with the positive pair removed from the
    denominator.

    Yeh et al., "Decoupled Contrastive Learning", 2022, arXiv 2110.06848, Eq. 6. With
    ``s(a, b) = a . b / T`` on L2-normalized views,

        L(z0, z1)_i = -s(z0_i, z1_i) + lse( {s(z0_i, z0_k)}_{k != i} U {s(z0_i, z1_k)}_{k != i} ),

    and the loss of pair ``i`` is ``(L(z0, z1)_i + L(z1, z0)_i) / 2``. It can be negative.
    Matches lightly ``DCLLoss(temperature=0.1, weight_fn=None)`` (lightly 1.6.0,
    ``lightly/loss/dcl_loss.py``; its mean), after raminnakhli/Decoupled-Contrastive-Learning.
    No gradient is stopped.

    Args:
        z0: ``[N, D]`` embeddings of one view, ``N >= 2``.
        z1: ``[N, D]`` embeddings of the other view.
        temperature: ``T > 0``.
        normalize: L2-normalize both first (lightly always does).
        axis_name: mapped axis the batch is sharded over; both views of every device are
            negatives (lightly's ``gather_distributed=True``).

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    return _decoupled(z0, z1, temperature, None, normalize, axis_name)


def decoupled_contrastive_weighted(z0, z1, *, temperature=0.1, sigma=0.5,
                                   normalize: bool = True, axis_name=None) -> jax.Array:
    """Weighted decoupled contrastive loss (DCLW): DCL with the positive term weighted by
    the negative von Mises-Fisher weight.

    Yeh et al., "Decoupled Contrastive Learning", 2022, arXiv 2110.06848, Eq. 6 and Sec. 4
    (DCLW): :func:`decoupled_contrastive` with ``-s(z0_i, z1_i)`` multiplied by

        w_i = 2 - N exp(z0_i . z1_i / sigma) / sum_k exp(z0_k . z1_k / sigma),

    whose batch mean is 1. Matches lightly ``DCLWLoss(temperature=0.1, sigma=0.5)`` (lightly
    1.6.0, ``lightly/loss/dcl_loss.py``; its mean). The weights are detached (lightly builds
    them with ``torch.tensor`` from detached features): no gradient flows through ``w``.
    With ``axis_name`` the softmax of ``w`` runs over the global batch, so sharded and
    unsharded values agree (lightly's ``gather_distributed`` weighs each process's batch on
    its own).

    Args:
        z0: ``[N, D]`` embeddings of one view, ``N >= 2``.
        z1: ``[N, D]`` embeddings of the other view.
        temperature: ``T > 0``.
        sigma: the weight's temperature, ``> 0``.
        normalize: L2-normalize both first (lightly always does).
        axis_name: mapped axis the batch is sharded over.

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    return _decoupled(z0, z1, temperature, sigma, normalize, axis_name)


# -- Pair contrastive loss ----------------------------------------------------------------------

def pair_contrastive(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0,
                     reducer: str = "avg_nonzero", normalize: bool = True,
                     axis_name=None) -> jax.Array:
    """The pair contrastive loss: pull same-label pairs within ``pos_margin``, push
    other-label pairs beyond ``neg_margin``.

    Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping",
    CVPR 2006, Eq. 4 (there with squared terms and halves). As pytorch-metric-learning
    ``ContrastiveLoss`` (defaults ``pos_margin=0``, ``neg_margin=1``; distance ``LpDistance``:
    Euclidean between L2-normalized embeddings), over every ordered pair ``(i, j)``, ``j != i``,
    with ``d_ij = ||x_i - x_j||``: a positive pair (same label) costs
    ``relu(d_ij - pos_margin)``, a negative pair ``relu(neg_margin - d_ij)``.

    PML reduces each of the two sets of pair losses on its own and adds them: its default
    ``AvgNonZeroReducer`` (``reducer='avg_nonzero'``) divides the sum of the positive pair
    losses by the number of positive pairs with a nonzero loss (``n_pos``; the negatives alike,
    ``n_neg``), ``MeanReducer`` (``reducer='mean'``) by the number of positive (negative) pairs.
    The per-anchor value returned here is anchor ``i``'s share of that number,

        loss_i = N * ( sum_{j pos} relu(d_ij - m_pos) / n_pos
                       + sum_{j neg} relu(m_neg - d_ij) / n_neg ),

    with the counts taken over the whole (global) batch (an empty count counts as 1), so
    ``mean(loss)`` is PML's loss exactly. The counts are piecewise constant: no gradient flows
    through them. ``d`` has a zero gradient at ``d = 0``.

    Args:
        embeddings: ``[N, D]`` embeddings.
        labels: integer class labels ``[N]``.
        pos_margin: distance below which a positive pair costs nothing.
        neg_margin: distance beyond which a negative pair costs nothing.
        reducer: ``'avg_nonzero'`` (PML's default) or ``'mean'``.
        normalize: L2-normalize the embeddings first (PML's ``LpDistance`` default).
        axis_name: mapped axis the batch is sharded over.

    Returns:
        ``[N]`` (``[N_local]`` with ``axis_name``) per-anchor shares of the loss.
    """
    x = emb.embeddings(embeddings)
    labels = emb.labels_for(labels, x.shape[0])
    hyperparameter(pos_margin, "pos_margin")
    hyperparameter(neg_margin, "neg_margin")
    if reducer not in _REDUCERS:
        raise ValueError(f"`reducer` must be one of {_REDUCERS}, got {reducer!r}.")
    x = emb.maybe_normalize(x, normalize)
    x_all = emb.gather(x, axis_name)
    distances = _safe_power(_squared_distances(x, x_all), 0.5)
    same = labels[:, None] == emb.gather(labels, axis_name)[None, :]
    positive_pairs = same & ~_is_own(x.shape[0], x_all.shape[0], axis_name)
    negative_pairs = ~same
    pos_loss = jnp.where(positive_pairs, jax.nn.relu(distances - pos_margin), 0.0)
    neg_loss = jnp.where(negative_pairs, jax.nn.relu(neg_margin - distances), 0.0)

    def share(pair_loss, pairs):
        counted = pair_loss > 0 if reducer == "avg_nonzero" else pairs
        count = emb.batch_sum(jnp.sum(counted), axis_name)
        return jnp.sum(pair_loss, axis=-1) / jnp.maximum(count, 1)

    return x_all.shape[0] * (share(pos_loss, positive_pairs) + share(neg_loss, negative_pairs))


# -- Alignment and uniformity -------------------------------------------------------------------

def alignment(x, y, *, alpha=2.0, normalize: bool = True) -> jax.Array:
    """Alignment: ``||f(x_i) - f(y_i)||^alpha`` per positive pair.

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020, arXiv 2005.10242, Eq. 4 (``alpha = 2``). Its mean
    is the official ``align_loss`` (SsnL/align_uniform ``align_uniform/__init__.py``, which
    takes normalized features) and lightly ``HypersphereLoss``'s alignment term. At
    ``x_i = y_i`` the value and gradient are 0 (finite for every ``alpha > 0``).

    Args:
        x: ``[N, D]`` embeddings.
        y: ``[N, D]`` their positives.
        alpha: the exponent, ``> 0``.
        normalize: L2-normalize both first.

    Returns:
        ``[N]`` per-pair values.
    """
    x, y = emb.paired(x, y, "x", "y")
    positive(alpha, "alpha")
    x, y = emb.maybe_normalize(x, normalize), emb.maybe_normalize(y, normalize)
    squared = jnp.sum(jnp.square(x - y), axis=-1)
    return _safe_power(squared, alpha / 2)


def uniformity(x, *, t=2.0, normalize: bool = True, axis_name=None) -> jax.Array:
    """Uniformity: ``log E_{i != j} exp(-t ||f(x_i) - f(x_j)||^2)`` over distinct pairs.

    Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
    Uniformity on the Hypersphere", ICML 2020, arXiv 2005.10242, Eq. 5. The official
    ``uniform_loss(x, t=2)`` (SsnL/align_uniform, ``torch.pdist(x).pow(2).mul(-t).exp().mean()
    .log()``, over the pairs ``i < j``: the same mean) uses ``t = 2``, the default here;
    lightly ``HypersphereLoss`` uses ``t = 1``. Computed as a log-sum-exp, so it stays finite
    when every ``exp`` underflows (large ``t``). At most 0; lower is more uniform.

    Args:
        x: ``[N, D]`` embeddings, ``N >= 2`` (over the global batch with ``axis_name``).
        t: the Gaussian kernel's scale, ``> 0``.
        normalize: L2-normalize first (the paper's setting).
        axis_name: mapped axis the batch is sharded over; the value is that of the global
            batch, on every device.

    Returns:
        A scalar.
    """
    x = emb.embeddings(x, "x")
    positive(t, "t")
    if axis_name is None and x.shape[0] < 2:
        raise ValueError(f"`x` needs at least 2 rows to form a pair, got shape {x.shape}.")
    x = emb.maybe_normalize(x, normalize)
    x_all = emb.gather(x, axis_name)
    total = x_all.shape[0]
    others = ~_is_own(x.shape[0], total, axis_name)
    rows = _masked_logsumexp(-t * _squared_distances(x, x_all), others)
    return emb.global_logsumexp(rows, axis_name=axis_name) - math.log(total * (total - 1))
