"""Softmax contrastive losses over large batches in bounded memory, and the gradient cache.

The dense losses of ``jaxreg.losses.contrastive`` build the ``[N, M]`` similarity matrix of a
batch, whose memory grows as the batch squared (65536 x 65536 float32 logits are 16 GiB,
before their gradient). The losses here compute the same values and gradients, up to float
rounding, in memory linear in the batch:

* The log-sum-exp over the keys of every row is accumulated over chunks of ``chunk_size``
  keys with the online max/sum update (a ``lax.scan``), so only an ``[N, chunk_size]`` tile
  of logits exists at a time. Its ``jax.custom_vjp`` recomputes each tile in the backward
  pass (the softmax ``exp(s - max) / sum``, from the forward pass's row max and sum) and
  accumulates the gradients of the queries and the keys, storing nothing of size ``N x M``:
  the tiling of Inf-CL ("Breaking the Memory Barrier: Near Infinite Batch Size Scaling for
  Contrastive Loss", Cheng et al. 2024, arXiv 2410.17243) and of FlashAttention's backward
  pass. The temperature multiplies the queries before the tiles, so a learned temperature
  (or CLIP logit scale, ``temperature = 1 / scale``) gets its gradient by ordinary autodiff.
* Keys a row must not use (the anchor itself; for DCL also its positive) are left out by
  index: key ``j`` is excluded from row ``i`` when their ids are equal. Keys padding the last
  chunk are excluded from every row, so ``N`` need not be a multiple of ``chunk_size``.
* The positive terms are linear in the logits: InfoNCE's and DCL's is one pair,
  ``s q_i . k_i``, and SupCon's sum over the positives is ``s q_a . sum_{p in P(a)} c_p``, with
  the sum over each class from a segment sum (O(N D) memory, no tile at all).

Conventions are the dense losses': embeddings of any float dtype, computed in float32 or
wider (bfloat16 is upcast), L2-normalized inside when ``normalize=True`` (the default);
per-example losses ``[N]``, unreduced (their mean is the reference's loss); keyword-only
hyperparameters that may be traced (``jit``/``vmap`` over them), concrete ones checked (> 0).
``chunk_size`` is a static Python int (a larger one than the batch is the batch): larger
chunks mean fewer, larger matrix products and more memory, the same result. The peak
temporary memory is about ``N x chunk_size`` floats for the tiles plus ``O((N + M) D)``.
Differentiate in reverse mode (``grad``, ``vjp``): the tiled log-sum-exp is a
``custom_vjp``, which has no forward mode (``jvp``, ``jacfwd``).

``axis_name``: inside ``jax.shard_map`` over that axis each device passes its shard of the
batch; the keys are gathered (``_embeddings.gather``, whose transpose returns each shard its
gradient) and each device returns its local examples' losses against the global batch, as
the dense losses do: values and gradients equal those of the unsharded loss. The tiles are
then ``N_local x chunk_size`` per device.

:func:`gradient_cache` (Gao et al. 2021, arXiv 2101.06983) bounds the other memory of a large
contrastive batch, the encoder's activations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxreg._validate import static_int
from jaxreg.losses import _embeddings as emb

DEFAULT_CHUNK_SIZE = 1024


# -- The tiled log-sum-exp ---------------------------------------------------------------------

def _key_chunks(keys, key_ids, chunk_size):
    """Keys ``[M, D]`` and their ids ``[M]`` padded to whole chunks: ``[C, chunk, D]``,
    ``[C, chunk]`` and each chunk's first key index ``[C]``."""
    m, d = keys.shape
    chunk = min(chunk_size, m)
    count = -(-m // chunk)
    pad = count * chunk - m
    keys = jnp.pad(keys, ((0, pad), (0, 0))).reshape(count, chunk, d)
    key_ids = jnp.pad(key_ids, (0, pad)).reshape(count, chunk)
    return keys, key_ids, jnp.arange(count) * chunk


def _tile(queries, query_ids, chunk, num_keys):
    """One tile: the logits ``[N, chunk]`` of the queries with a chunk of
    :func:`_key_chunks`, and which of them each row uses (a real key, not one padding the last
    chunk, whose id differs from the row's)."""
    key_chunk, chunk_ids, start = chunk
    real = start + jnp.arange(key_chunk.shape[0]) < num_keys
    return queries @ key_chunk.T, real[None, :] & (query_ids[:, None] != chunk_ids[None, :])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _masked_logsumexp(queries, keys, query_ids, key_ids, chunk_size):
    """``lse_i = log sum_{j: key_ids[j] != query_ids[i]} exp(q_i . k_j)`` for queries
    ``[N, D]`` (already multiplied by ``1 / T``) and keys ``[M, D]``, over chunks of keys;
    ``[N]`` (``-inf`` for a row that may use no key).

    The temperature scales the queries outside, so that both passes compute the very same
    tile ``queries @ keys^T`` (XLA may round ``scale * (q @ k^T)`` differently in two
    programs), and its gradient comes from ordinary autodiff."""
    return _logsumexp_forward(queries, keys, query_ids, key_ids, chunk_size)[0]


def _logsumexp_forward(queries, keys, query_ids, key_ids, chunk_size):
    def step(carry, chunk):
        running_max, running_sum = carry
        logits, used = _tile(queries, query_ids, chunk, keys.shape[0])
        logits = jnp.where(used, logits, -jnp.inf)
        new_max = jnp.maximum(running_max, logits.max(axis=1))
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        running_sum = (running_sum * jnp.exp(running_max - shift)
                       + jnp.exp(logits - shift[:, None]).sum(axis=1))
        return (new_max, running_sum), None

    row = queries[:, 0]  # *_like keeps the queries' type (varying over shard_map axes)
    start = (jnp.full_like(row, -jnp.inf), jnp.zeros_like(row))
    (row_max, row_sum), _ = jax.lax.scan(step, start, _key_chunks(keys, key_ids, chunk_size))
    return row_max + jnp.log(row_sum), (queries, keys, query_ids, key_ids, row_max, row_sum)


def _logsumexp_backward(chunk_size, residuals, g):
    """Recomputes each tile's softmax ``p = exp(s - max) / sum``; with ``ds = g p``
    accumulates ``dq = ds k`` over the chunks and returns ``dk = ds^T q`` chunk by chunk.

    The softmax is normalised by the forward pass's running max and sum, not taken as
    ``exp(s - lse)``: at logits of magnitude ``1 / T = 1000``, the rounding of ``lse``
    (1000 eps) would make each row's softmax sum to ``1 +- 1e-4``, and gradients that are
    differences of such sums (the temperature's, a confident row's) lose their digits."""
    queries, keys, query_ids, key_ids, row_max, row_sum = residuals
    weight = g / row_sum

    def step(d_queries, chunk):
        logits, used = _tile(queries, query_ids, chunk, keys.shape[0])
        d_logits = jnp.where(used, weight[:, None] * jnp.exp(logits - row_max[:, None]), 0.0)
        return d_queries + d_logits @ chunk[0], d_logits.T @ queries

    d_queries, d_keys = jax.lax.scan(step, jnp.zeros_like(queries),
                                     _key_chunks(keys, key_ids, chunk_size))
    return d_queries, d_keys.reshape(-1, keys.shape[1])[:keys.shape[0]], None, None


_masked_logsumexp.defvjp(_logsumexp_forward, _logsumexp_backward)


def _scale_of(temperature, dtype):
    """``1 / temperature`` (checked when concrete) as a scalar array of ``dtype``."""
    return jnp.asarray(1.0 / emb.temperature(temperature), dtype)


def _local_ids(axis_name, n):
    """Global indices of this device's ``n`` examples in the gathered batch."""
    return emb.shard_offset(axis_name, n) + jnp.arange(n)


# -- Losses ------------------------------------------------------------------------------------

def chunked_info_nce(queries, keys, *, temperature=0.07, symmetric: bool = False,
                     normalize: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     axis_name=None) -> jax.Array:
    """InfoNCE (CLIP when symmetric) with in-batch negatives, in memory linear in the batch.

    With ``s_ij = q_i . k_j / T`` (cosines when ``normalize``),

        L_i = -log( exp(s_ii) / sum_j exp(s_ij) ) = lse_j(s_ij) - s_ii,

    the cross-entropy of row ``i`` of the ``[N, N]`` logits against its pair (van den Oord et
    al., "Representation Learning with Contrastive Predictive Coding", 2018, arXiv 1807.03748,
    Eq. 4). ``symmetric=True`` averages it with the key-to-query direction,
    ``(L_i + lse_j(s_ji) - s_ii) / 2``: the CLIP loss (Radford et al. 2021, arXiv 2103.00020,
    Fig. 3). The values and gradients of the dense ``jaxreg.losses.contrastive.info_nce``
    (RElbers/info-nce-pytorch ``InfoNCE``; open_clip ``ClipLoss`` at ``logit_scale = 1 / T``
    when symmetric), by this module's tiled log-sum-exp (Inf-CL, arXiv 2410.17243). A learned
    logit scale ``s`` is ``temperature=1 / s`` (traced; it gets its gradient). No gradient is
    stopped.

    Args:
      queries: ``[N, D]`` embeddings.
      keys: ``[N, D]`` embeddings; ``keys[i]`` is the positive of ``queries[i]``.
      temperature: ``T > 0`` (0.07, MoCo's and CLIP's initial value).
      symmetric: also contrast each key against all queries and average (CLIP).
      normalize: L2-normalize both first.
      chunk_size: keys per tile (static).
      axis_name: mapped axis the batch is sharded over; every device's keys (and queries,
        when symmetric) are negatives.

    Returns:
      ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    q, k = emb.paired(queries, keys, "queries", "keys")
    chunk_size = static_int(chunk_size, "chunk_size", low=1)
    scale = _scale_of(temperature, q.dtype)
    q, k = emb.maybe_normalize(q, normalize), emb.maybe_normalize(k, normalize)
    positive = scale * jnp.sum(q * k, axis=-1)

    def one_way(rows, columns):
        columns = emb.gather(columns, axis_name)
        every_key = jnp.full(rows.shape[0], -1)  # no key id (>= 0) equals it
        return _masked_logsumexp(scale * rows, columns, every_key,
                                 jnp.arange(columns.shape[0]), chunk_size) - positive

    loss = one_way(q, k)
    return 0.5 * (loss + one_way(k, q)) if symmetric else loss


def _positive_sums(anchors, contrast, anchor_ids, contrast_labels):
    """For each anchor ``a`` (row ``anchor_ids[a]`` of ``contrast``): the sum of the contrast
    rows with its label but itself, ``[A, D]``, and their number ``[A]``, from per-class
    segment sums (no ``[A, M]`` mask)."""
    m = contrast.shape[0]
    _, classes = jnp.unique(contrast_labels, size=m, return_inverse=True)
    classes = classes.reshape(m)
    class_sums = jax.ops.segment_sum(contrast, classes, num_segments=m)
    class_counts = jax.ops.segment_sum(jnp.ones(m, contrast.dtype), classes, num_segments=m)
    own = classes[anchor_ids]
    return class_sums[own] - anchors, class_counts[own] - 1


def chunked_supervised_contrastive(features, labels=None, *, temperature=0.07,
                                   base_temperature=0.07, contrast_mode: str = "all",
                                   normalize: bool = True,
                                   chunk_size: int = DEFAULT_CHUNK_SIZE,
                                   axis_name=None) -> jax.Array:
    """Supervised contrastive loss ``L_out`` (SimCLR's NT-Xent without labels), in memory
    linear in the batch.

    Khosla et al., "Supervised Contrastive Learning", 2020, arXiv 2004.11362, Eq. 2. The views
    are stacked view-major into ``C`` (``V N`` rows); the anchors are all of them
    (``contrast_mode='all'``) or the first view of each example (``'one'``). With
    ``s_ac = a . c / T`` and ``P(a)`` the rows of ``C`` with ``a``'s label other than ``a``
    itself (without labels: the other views of ``a``'s example),

        l_a = -(T / base_T) * ( sum_{p in P(a)} s_ap / |P(a)| - lse_{c != a} s_ac ),

    0 (with a zero gradient) for an anchor without positives; the loss of example ``i`` is the
    mean of ``l_a`` over its anchor views. The values and gradients of the dense
    ``jaxreg.losses.contrastive.supervised_contrastive`` (HobbitLong/SupContrast
    ``losses.py::SupConLoss``, defaults ``temperature=0.07``, ``base_temperature=0.07``,
    ``contrast_mode='all'``; ``base_temperature=None`` drops the factor, as
    pytorch-metric-learning ``SupConLoss``). The positive sum is linear, ``s_a . sum_{p in
    P(a)} c_p``, so it comes from per-class sums of ``C``; the log-sum-exp is tiled. The
    reference's detached row-max shift changes neither value nor gradient and is not needed;
    no gradient is stopped.

    NT-Xent (SimCLR; lightly ``NTXentLoss(temperature)``, optax ``ntxent``) is this loss on
    ``jnp.stack([z0, z1], axis=1)`` with ``labels=None`` and ``base_temperature=None``.

    Args:
      features: ``[N, V, D]`` embeddings, ``V >= 1`` views of each of ``N`` examples.
      labels: integer class labels ``[N]``, or None (each example its own class: SimCLR).
      temperature: ``T > 0``.
      base_temperature: ``base_T > 0``, or None for no ``T / base_T`` factor.
      contrast_mode: ``'all'`` (every view an anchor) or ``'one'`` (view 0 only).
      normalize: L2-normalize the features first.
      chunk_size: contrast rows per tile (static).
      axis_name: mapped axis the batch is sharded over (``features`` and ``labels`` are this
        device's shard).

    Returns:
      ``[N]`` (``[N_local]`` with ``axis_name``) per-example losses.
    """
    features = emb.embeddings(features, "features", ndim=3)
    n, views, dim = features.shape
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"`contrast_mode` must be one of ('all', 'one'), got "
                         f"{contrast_mode!r}.")
    local = _local_ids(axis_name, n)
    labels = local if labels is None else emb.labels_for(labels, n)
    chunk_size = static_int(chunk_size, "chunk_size", low=1)
    scale = _scale_of(temperature, features.dtype)
    factor = 1.0
    if base_temperature is not None:
        factor = temperature / emb.temperature(base_temperature, "base_temperature")
    z = emb.maybe_normalize(features, normalize)
    z_all = emb.gather(z, axis_name)
    total = z_all.shape[0]
    contrast = jnp.swapaxes(z_all, 0, 1).reshape(views * total, dim)  # view-major
    anchor_views = 1 if contrast_mode == "one" else views
    anchors = jnp.swapaxes(z[:, :anchor_views], 0, 1).reshape(anchor_views * n, dim)
    anchor_ids = (jnp.arange(anchor_views)[:, None] * total + local).reshape(-1)
    lse = _masked_logsumexp(scale * anchors, contrast, anchor_ids, jnp.arange(views * total),
                            chunk_size)
    positive_sum, count = _positive_sums(anchors, contrast, anchor_ids,
                                         jnp.tile(emb.gather(labels, axis_name), views))
    mean_positive = scale * jnp.sum(anchors * positive_sum, axis=-1) / jnp.maximum(count, 1)
    per_anchor = -factor * jnp.where(count > 0, mean_positive - lse, 0.0)
    return per_anchor.reshape(anchor_views, n).mean(axis=0)


def chunked_decoupled_contrastive(z0, z1, *, temperature=0.1, normalize: bool = True,
                                  chunk_size: int = DEFAULT_CHUNK_SIZE,
                                  axis_name=None) -> jax.Array:
    """Decoupled contrastive loss (DCL), in memory linear in the batch.

    Yeh et al., "Decoupled Contrastive Learning", 2022, arXiv 2110.06848, Eq. 6: InfoNCE with
    the positive pair removed from the denominator. With ``s(a, b) = a . b / T`` on
    L2-normalized views,

        L(z0, z1)_i = -s(z0_i, z1_i) + lse( {s(z0_i, z0_k)}_{k != i} U {s(z0_i, z1_k)}_{k != i} ),

    and the loss of pair ``i`` is ``(L(z0, z1)_i + L(z1, z0)_i) / 2``. The values and gradients
    of the dense ``jaxreg.losses.contrastive.decoupled_contrastive`` (lightly 1.6.0
    ``DCLLoss(temperature=0.1, weight_fn=None)``, its mean); both directions share one tiled
    log-sum-exp over the keys ``[z0; z1]``, row ``i`` leaving out both views of example ``i``.
    No gradient is stopped.

    Args:
      z0: ``[N, D]`` embeddings of one view, ``N >= 2``.
      z1: ``[N, D]`` embeddings of the other view.
      temperature: ``T > 0``.
      normalize: L2-normalize both first (lightly always does).
      chunk_size: keys per tile (static).
      axis_name: mapped axis the batch is sharded over; both views of every device are
        negatives (lightly's ``gather_distributed=True``).

    Returns:
      ``[N]`` (``[N_local]`` with ``axis_name``) per-pair losses.
    """
    z0, z1 = emb.paired(z0, z1, "z0", "z1")
    n = z0.shape[0]
    if axis_name is None and n < 2:
        raise ValueError(f"`z0` must hold at least 2 examples (one for the negatives), got "
                         f"shape {z0.shape}.")
    chunk_size = static_int(chunk_size, "chunk_size", low=1)
    scale = _scale_of(temperature, z0.dtype)
    z0, z1 = emb.maybe_normalize(z0, normalize), emb.maybe_normalize(z1, normalize)
    local = _local_ids(axis_name, n)
    keys = jnp.concatenate([emb.gather(z0, axis_name), emb.gather(z1, axis_name)])
    key_ids = jnp.tile(jnp.arange(keys.shape[0] // 2), 2)
    lse = _masked_logsumexp(scale * jnp.concatenate([z0, z1]), keys, jnp.tile(local, 2),
                            key_ids, chunk_size)
    return 0.5 * (lse[:n] + lse[n:]) - scale * jnp.sum(z0 * z1, axis=-1)


# -- Gradient cache ----------------------------------------------------------------------------

def gradient_cache(encode, loss_fn, params, inputs, *, chunk_size: int):
    """The loss of a large batch and its gradient, encoding ``chunk_size`` examples at a time.

    Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
    Setup", arXiv 2101.06983, Sec. 3: (1) embed the whole batch chunk by chunk without
    keeping activations (``lax.map`` with the parameters' gradient stopped), (2) compute the
    loss and its gradient with respect to the embeddings (and to ``params``, for a loss with
    its own parameters, such as CLIP's learned logit scale), (3) re-encode each chunk and pull
    its cached embedding gradient back to the parameters (a VJP per chunk), accumulating the
    parameter gradients in a ``lax.scan``. The result equals

        jax.value_and_grad(lambda p: loss_fn(p, encode(p, inputs)))(params)

    up to float rounding, with the encoder's activation memory that of one chunk (plus the
    loss's own memory: pair it with the chunked losses of this module for a large batch).
    Jittable; ``chunk_size`` is static; a batch that is not a multiple of it is padded with
    copies of its first examples, whose embedding gradients are zero.

    Args:
      encode: ``encode(params, inputs_chunk) -> embeddings``: a pytree of arrays batched on
        axis 0 (several towers or views: a tuple). It must be deterministic (pass dropout keys
        inside ``inputs``): each chunk is encoded twice. Per-example computation only (no
        batch statistics across the chunk, e.g. training-mode BatchNorm).
      loss_fn: ``loss_fn(params, embeddings) -> scalar`` on the embeddings of the whole batch.
      params: the parameters (any pytree).
      inputs: a pytree of arrays batched on axis 0 (the same batch size for every leaf).
      chunk_size: examples encoded at a time.

    Returns:
      ``(loss, grads)``, ``grads`` shaped like ``params``.
    """
    chunk_size = static_int(chunk_size, "chunk_size", low=1)
    sizes = {leaf.shape[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(inputs)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"`inputs` must be arrays batched on axis 0 with one batch size, got "
                         f"batch sizes {sorted(sizes, key=str)}.")
    batch = sizes.pop()
    chunk = min(chunk_size, batch)
    count = -(-batch // chunk)
    padded = count * chunk

    def split(x):  # [count * chunk, ...] -> [count, chunk, ...]
        return x.reshape(count, chunk, *x.shape[1:])

    wrap = jnp.arange(padded) % batch
    chunks = jax.tree.map(lambda x: split(jnp.take(x, wrap, axis=0)), inputs)
    frozen = jax.lax.stop_gradient(params)
    embedded = jax.lax.map(lambda x: encode(frozen, x), chunks)
    embedded = jax.tree.map(lambda e: e.reshape(padded, *e.shape[2:])[:batch], embedded)
    loss, (grads, d_embedded) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, embedded)
    d_chunks = jax.tree.map(
        lambda g: split(jnp.pad(g, [(0, padded - batch)] + [(0, 0)] * (g.ndim - 1))),
        d_embedded)

    def accumulate(total, chunk_and_cotangent):
        x, d_x = chunk_and_cotangent
        _, pullback = jax.vjp(lambda p: encode(p, x), params)
        return jax.tree.map(jnp.add, total, pullback(d_x)[0]), None

    grads, _ = jax.lax.scan(accumulate, grads, (chunks, d_chunks))
    return loss, grads
