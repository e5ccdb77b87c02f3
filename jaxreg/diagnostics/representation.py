"""The geometry of learned features: alignment, uniformity and neural collapse.

* ``alignment`` and ``uniformity``: Wang & Isola, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere", ICML 2020, arXiv:2005.10242,
  Eq. 4-5, as their official ``align_loss`` and ``uniform_loss`` (SsnL/align_uniform), which
  take L2-normalized features.
* ``neural_collapse``: the four measures of Papyan, Han & Donoho, "Prevalence of Neural
  Collapse during the Terminal Phase of Deep Learning Training", PNAS 2020, arXiv:2008.08186,
  Sec. 3 and Fig. 2-7 (as tracked in "Perturbation Analysis of Neural Collapse").

All are jit/vmap-safe. ``alignment`` and ``uniformity`` are the batch means of the losses
``jaxreg.losses.contrastive.alignment`` and ``uniformity``, which they call (differentiable
everywhere; the losses also take ``axis_name``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array
from jaxreg.losses import contrastive


def alignment(x, y, *, alpha=2.0, normalize: bool = True) -> jax.Array:
    """``E ||f(x) - f(y)||^alpha`` over positive pairs (Wang & Isola 2020, Eq. 4): the mean of
    :func:`jaxreg.losses.contrastive.alignment`.

    Args:
        x: features ``[n, d]``.
        y: their positives ``[n, d]``.
        alpha: the exponent (2 in the paper).
        normalize: project both onto the unit sphere first (the paper's setting; the
            official function assumes it was done).

    Returns:
        A scalar.
    """
    return jnp.mean(contrastive.alignment(x, y, alpha=alpha, normalize=normalize))


def uniformity(x, *, t=2.0, normalize: bool = True) -> jax.Array:
    """``log E_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)`` over distinct pairs (Wang & Isola 2020,
    Eq. 5; the official ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``), in a stable
    log-sum-exp form: :func:`jaxreg.losses.contrastive.uniformity`.

    Args:
        x: features ``[n, d]``, ``n >= 2``.
        t: the Gaussian kernel's scale (2 in the paper).
        normalize: project onto the unit sphere first (the paper's setting).

    Returns:
        A scalar, at most 0; lower is more uniform.
    """
    return contrastive.uniformity(x, t=t, normalize=normalize)


def neural_collapse(features, labels, num_classes: int, *, classifier=None,
                    bias=None) -> dict[str, jax.Array]:
    """Papyan, Han & Donoho's neural-collapse measures of last-layer features.

    With class means ``mu_c``, the global mean ``mu_G`` of all features, ``M = [mu_c - mu_G]``,
    the within-class covariance ``Sigma_W`` (over all examples) and the between-class
    covariance ``Sigma_B = M^T M / C``:

    * ``nc1``: ``tr(Sigma_W Sigma_B^+) / C``, the pseudo-inverse of rank ``C - 1`` (Fig. 6).
    * ``equinorm``: std / mean of ``||mu_c - mu_G||`` (Fig. 2).
    * ``equiangularity``: std of ``cos(mu_c - mu_G, mu_c' - mu_G)`` over ``c != c'`` (Fig. 3).
      Both are sample standard deviations (``ddof=1``; the authors' notebook takes the
      equinorm's with ``torch.std``).
    * ``max_angle``: mean of ``|cos + 1 / (C - 1)|`` over ``c != c'``, 0 for a simplex
      equiangular tight frame (Fig. 4).
    * with ``classifier`` ``W``: ``self_duality``, ``||W / ||W||_F - M / ||M||_F||_F^2``
      (Fig. 5), and ``ncc_mismatch``, the fraction of examples whose prediction differs from
      the nearest class mean's (Fig. 7).

    Every class must occur in ``labels`` (a class mean of no example is undefined).

    Args:
        features: last-layer features ``[n, d]``.
        labels: integer classes ``[n]``.
        num_classes: ``C`` (static).
        classifier: the last layer's weights ``[d, C]`` (a flax ``Dense`` kernel), optional.
        bias: its bias ``[C]``, optional (used for the predictions of ``ncc_mismatch``).

    Returns:
        A dict of scalars.
    """
    features = float_array(features, "features", min_ndim=2)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != features.shape[:1]:
        raise ValueError(f"`labels` must be integer classes of shape {features.shape[:1]}, got "
                         f"{labels.dtype} {labels.shape}.")
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
    n, d = features.shape
    counts = jax.ops.segment_sum(jnp.ones((n,), features.dtype), labels, num_classes)
    means = jax.ops.segment_sum(features, labels, num_classes) / counts[:, None]
    centred = means - jnp.mean(features, axis=0)  # M, [C, d]
    within = features - means[labels]
    sigma_w = within.T @ within / n
    sigma_b = centred.T @ centred / num_classes
    values, vectors = jnp.linalg.eigh(sigma_b)  # ascending
    rank = min(num_classes - 1, d)
    top_values, top_vectors = values[-rank:], vectors[:, -rank:]
    pinv = (top_vectors / top_values) @ top_vectors.T
    norms = jnp.linalg.norm(centred, axis=-1)
    unit = centred / norms[:, None]
    off = 1.0 - jnp.eye(num_classes)  # ordered pairs c != c'
    pairs = num_classes * (num_classes - 1)
    cosines = unit @ unit.T
    mean_cosine = jnp.sum(off * cosines) / pairs
    out = {"nc1": jnp.trace(sigma_w @ pinv) / num_classes,
           "equinorm": jnp.std(norms, ddof=1) / jnp.mean(norms),
           "equiangularity": jnp.sqrt(jnp.sum(off * jnp.square(cosines - mean_cosine))
                                      / max(pairs - 1, 1)),
           "max_angle": jnp.sum(off * jnp.abs(cosines + 1 / (num_classes - 1))) / pairs}
    if classifier is not None:
        w = float_array(classifier, "classifier")
        if w.shape != (d, num_classes):
            raise ValueError(f"`classifier` must have shape {(d, num_classes)} (features x "
                             f"classes), got {w.shape}.")
        out["self_duality"] = jnp.sum(jnp.square(
            w.T / jnp.linalg.norm(w) - centred / jnp.linalg.norm(centred)))
        logits = features @ w + (0.0 if bias is None else float_array(bias, "bias"))
        nearest = jnp.argmin(jnp.sum(jnp.square(features[:, None] - means[None]), -1), -1)
        out["ncc_mismatch"] = jnp.mean(jnp.argmax(logits, -1) != nearest)
    elif bias is not None:
        raise ValueError("`bias` needs `classifier`.")
    return out
