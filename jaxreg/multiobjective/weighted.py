"""Aggregators that weight the objectives' gradients: mean, sum, random, IMTL-G, Aligned-MTL.

Each is ``J -> J^T w`` with weights ``w`` computed from the Gramian ``G = J J^T`` alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import from_weighting, keyed

_EPS32 = float(jnp.finfo(jnp.float32).eps)


def mean(*, num_objectives: int | None = None) -> optax.GradientTransformation:
    """The average of the objectives' gradients, ``J^T 1 / m`` (torchjd ``Mean``)."""
    return from_weighting(lambda g: jnp.full(g.shape[0], 1.0 / g.shape[0], g.dtype),
                          num_objectives)


def sum(*, num_objectives: int | None = None) -> optax.GradientTransformation:  # noqa: A001
    """The sum of the objectives' gradients, ``J^T 1``: the gradient of the summed losses
    (torchjd ``Sum``)."""
    return from_weighting(lambda g: jnp.ones(g.shape[0], g.dtype), num_objectives)


def random_weighting(*, seed: int = 0, num_objectives: int | None = None
                     ) -> optax.GradientTransformation:
    """Random loss weighting: ``w = softmax(z)``, ``z ~ N(0, I)`` drawn anew each step.

    Paper: Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning" (2022), arXiv:2111.10603. Matches torchjd ``Random``; the key lives
    in the state, so runs are reproducible from ``seed``.
    """
    return from_weighting(
        # drawn in float32 whatever the dtype: the same weights under x64
        keyed(lambda gram, key: jax.nn.softmax(
            jax.random.normal(key, (gram.shape[0],)).astype(gram.dtype)), seed),
        num_objectives)


def imtl_g_weights(gram: jax.Array) -> jax.Array:
    """IMTL-G weights from the Gramian: ``v = G^+ diag(G)^(1/2)``, ``w = v / sum(v)``
    (zero when ``|sum(v)| < 1e-12``)."""
    v = jnp.linalg.pinv(gram, hermitian=True) @ jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    total = jnp.sum(v)
    ok = jnp.abs(total) >= 1e-12
    return jnp.where(ok, v / jnp.where(ok, total, 1.0), 0.0)


def imtl_g(*, num_objectives: int | None = None) -> optax.GradientTransformation:
    """IMTL-G: the update whose projections on every objective's unit gradient are equal.

    ``d = J^T w`` with ``w = v / sum(v)``, ``v = G^+ diag(G)^(1/2)``: torchjd's Gramian
    generalisation of the paper's closed form (it also handles linearly dependent
    gradients); equal to ``nash-mtl``'s ``IMTLG`` for full-row-rank Jacobians.

    Paper: Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), gradient part
    (IMTL-G). Matches torchjd ``IMTLG``.
    """
    return from_weighting(imtl_g_weights, num_objectives)


SCALE_MODES = ("min", "median", "rmse")


def aligned_mtl_weights(gram: jax.Array, pref: jax.Array | None = None,
                        scale_mode: str = "min") -> jax.Array:
    """Aligned-MTL weights ``B p`` with ``B = sqrt(s) V Lambda^(-1/2) V^T`` on the eigenvectors
    of ``G`` whose eigenvalues exceed ``lambda_max * m * eps_float32``; ``s`` is the smallest
    kept eigenvalue (``"min"``), their median or their mean (``"rmse"``)."""
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"`scale_mode` must be one of {SCALE_MODES}, got {scale_mode!r}")
    m = gram.shape[0]
    p = jnp.full(m, 1.0 / m, gram.dtype) if pref is None else jnp.asarray(pref, gram.dtype)
    lam, vecs = jnp.linalg.eigh(gram)
    keep = lam > jnp.max(lam) * m * _EPS32
    safe = jnp.where(keep, lam, 1.0)
    if scale_mode == "min":
        scale = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":
        scale = jnp.nanmedian(jnp.where(keep, lam, jnp.nan))
    else:
        scale = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(jnp.sum(keep), 1)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    balance = jnp.sqrt(jnp.where(jnp.any(keep), scale, 0.0)) * (vecs * inv_sqrt) @ vecs.T
    return jnp.where(jnp.any(keep), balance @ p, p)


def aligned_mtl(*, pref=None, scale_mode: str = "min", num_objectives: int | None = None
                ) -> optax.GradientTransformation:
    """Aligned-MTL: align the principal components of the gradients, scaled by the smallest.

    Paper: Senushkin et al., "Independent Component Alignment for Multi-Task Learning"
    (CVPR 2023), arXiv:2305.19000. Matches torchjd ``AlignedMTL`` (preference ``p = 1/m`` by
    default; LibMTL uses ``p = 1``), including its eigenvalue cutoff.
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"`scale_mode` must be one of {SCALE_MODES}, got {scale_mode!r}")
    return from_weighting(lambda g: aligned_mtl_weights(g, pref, scale_mode), num_objectives)
