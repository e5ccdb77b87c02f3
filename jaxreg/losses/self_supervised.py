"""Non-contrastive self-supervised losses: Barlow Twins, Mixed Barlow Twins, VICReg, W-MSE,
negative cosine (BYOL/SimSiam), DINO, SwaV and KoLeo.

Embeddings are ``[N, D]`` (one view of a batch of ``N`` examples), ``[V, N, D]`` (``V``
views, view-major as lightly stacks them) or prototype scores ``[V, N, K]``; any float
dtype, computed in float32 or wider. Losses that average over examples (negative cosine,
DINO, SwaV, KoLeo) return the per-example loss ``[N]``, unreduced: its mean is the
reference's loss. Losses built on batch statistics (Barlow Twins, Mixed Barlow Twins,
VICReg, W-MSE) return a scalar.

Distributed batches: the functions that take ``axis_name`` run inside ``jax.shard_map`` (or
``pmap``) over that mesh axis with each device holding its shard of the batch. Batch
statistics (means, variances, cross-correlations, Sinkhorn sums, the DINO center) are those
of the global batch (``_embeddings.batch_sum``, like ``SyncBatchNorm`` and ``all_reduce`` in
the references); batch-level scalars are the global value on every device, per-example losses
are the local examples' ``[N_local]``. Value and gradient equal the single-device loss on the
global batch (lightly #1977 scaled the Barlow Twins gradient by the world size).

Hyperparameters are keyword-only and may be traced (swept with ``jax.vmap``) except the
static ones (iteration counts, ``w_size``, ``crops_for_assign``); concrete values are checked
against their domains. Stop-gradients are where the references detach: the DINO teacher and
center, the SwaV codes, the BYOL/SimSiam target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg._validate import float_array, hyperparameter, nonnegative, static_int
from jaxreg.losses._embeddings import (
    batch_sum,
    embeddings,
    gather,
    global_logsumexp,
    normalize,
    paired,
    shard_offset,
)
from jaxreg.losses._embeddings import temperature as check_temperature

# -- Shared pieces ----------------------------------------------------------------------------


def _global_count(n_local: int, axis_name):
    """The number of examples in the global batch: an integer (a Python int on one device),
    so that it promotes to the embeddings' dtype (float64 stays float64)."""
    return batch_sum(n_local, axis_name)


def _at_least_two(z, name: str, axis_name):
    """Batch statistics need two examples: checked on one device (the global batch is at
    least the local one, so a sharded batch is not checked)."""
    if axis_name is None and z.shape[-2] < 2:
        raise ValueError(f"`{name}` must hold at least 2 examples (the loss uses batch "
                         f"statistics), got shape {z.shape}.")


def _standardize(z, axis_name, *, ddof: int, eps):
    """``(z - mean) / sqrt(var + eps)`` per feature over the global batch (``ddof=0``: the
    biased variance of BatchNorm; ``ddof=1``: ``torch.std``); returns it and the global N.
    A constant feature with ``eps = 0`` standardises to 0 (the reference: NaN), with a finite
    gradient."""
    n = _global_count(z.shape[0], axis_name)
    mean = batch_sum(jnp.sum(z, axis=0), axis_name) / n
    centred = z - mean
    var = batch_sum(jnp.sum(centred**2, axis=0), axis_name) / (n - ddof) + eps
    return centred / jnp.sqrt(jnp.where(var > 0, var, 1.0)), n


def _correlation(a, b, n, axis_name):
    """``a^T b / N`` summed over the global batch (the references' ``all_reduce(c)``)."""
    return batch_sum(a.T @ b, axis_name) / n


def _off_diagonal_sum_of_squares(c):
    return jnp.sum(jnp.where(jnp.eye(c.shape[0], dtype=bool), 0.0, c**2))


def _redundancy_reduction(c, lambda_):
    """``sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2`` (Barlow Twins, Eq. 1)."""
    return jnp.sum((jnp.diagonal(c) - 1.0) ** 2) + lambda_ * _off_diagonal_sum_of_squares(c)


# -- Barlow Twins and Mixed Barlow Twins ------------------------------------------------------


def barlow_twins(z0, z1, *, lambda_=0.0051, eps=1e-5, axis_name=None):
    """Barlow Twins: make the cross-correlation of the two views' embeddings the identity.

    ``c = BN(z0)^T BN(z1) / N`` with ``BN`` the batch standardisation of
    ``BatchNorm1d(affine=False)`` in training mode (biased variance, ``eps``) over the global
    batch of ``N``; ``L = sum_i (1 - c_ii)^2 + lambda_ * sum_{i != j} c_ij^2`` (Eq. 1).
    Returns a scalar. Invariant to a per-feature affine map of either view.

    Paper: Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
    (2021), arXiv:2103.03230.

    Matches facebookresearch/barlowtwins ``main.py`` ``BarlowTwins.forward`` (``SyncBatchNorm``,
    ``c.div_(batch_size)``, ``all_reduce(c)``; no scale-loss: it was removed in 046eec3) with
    its default ``lambd=0.0051``, the default here. lightly ``BarlowTwinsLoss`` computes the
    same loss with ``lambda_param=5e-3`` by default (pass ``lambda_=5e-3`` for it);
    solo-learn further multiplies by ``scale_loss`` (0.025 or 0.1).

    Args:
      z0: the first view's embeddings ``[N, D]``.
      z1: the second view's embeddings ``[N, D]``.
      lambda_: weight of the redundancy-reduction (off-diagonal) term, >= 0.
      eps: added to the variance (BatchNorm's 1e-5), >= 0.
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    nonnegative(lambda_, "lambda_")
    nonnegative(eps, "eps")
    z0, z1 = paired(z0, z1, "z0", "z1")
    _at_least_two(z0, "z0", axis_name)
    a, n = _standardize(z0, axis_name, ddof=0, eps=eps)
    b, _ = _standardize(z1, axis_name, ddof=0, eps=eps)
    return _redundancy_reduction(_correlation(a, b, n, axis_name), lambda_)


def mixup_views(key, x0, x1, *, alpha=1.0):
    """The mixed inputs of Mixed Barlow Twins: ``ratio * x0 + (1 - ratio) * x1[permutation]``.

    ``ratio ~ Beta(alpha, alpha)`` (one scalar for the batch) and ``permutation`` a random
    permutation of the ``N`` examples (the leading axis), both drawn from ``key``. Returns
    ``(mixed, ratio, permutation)``: encode ``mixed`` with the same network and pass its
    embeddings with ``ratio`` and ``permutation`` to :func:`mixed_barlow_twins`. Works on any
    inputs (images ``[N, H, W, C]``, features ``[N, F]``). The reference draws
    ``alpha = np.random.beta(1.0, 1.0)`` and ``torch.randperm(batch_size)``; with
    ``axis_name`` each device mixes its own shard (pass a local permutation).
    """
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    if x0.shape != x1.shape or x0.ndim < 1:
        raise ValueError(f"`x0` and `x1` must be batches of the same shape, got {x0.shape} and "
                         f"{x1.shape}.")
    ratio_key, perm_key = jax.random.split(key)
    ratio = jax.random.beta(ratio_key, alpha, alpha)
    permutation = jax.random.permutation(perm_key, x0.shape[0])
    mixed = ratio.astype(x0.dtype) * x0 + (1 - ratio).astype(x1.dtype) * x1[permutation]
    return mixed, ratio, permutation


def mixed_barlow_twins(z0, z1, z_mixed, ratio, permutation, *, lambda_=0.0078125,
                       mixed_lambda=4.0, eps=0.0, axis_name=None):
    """Mixed Barlow Twins: Barlow Twins plus a MixUp regulariser on the cross-correlations.

    The caller mixes the inputs of the two views, ``x_m = ratio * x0 + (1 - ratio) *
    x1[permutation]`` (:func:`mixup_views`), and encodes them: ``z_mixed = f(x_m)``. With
    ``Z0, Z1, Zm`` the batch-standardised embeddings (``torch.std``: unbiased, plus ``eps``),
    ``C(A, B) = A^T B / N`` and ``P`` the permutation, the regulariser asks the mixed
    embeddings' cross-correlations to be the same mixture of the views' cross-correlations::

        C_gt0 = ratio * C(Z0, Z0) + (1 - ratio) * C(P Z1, Z0)
        C_gt1 = ratio * C(Z0, Z1) + (1 - ratio) * C(P Z1, Z1)
        L = L_BT + mixed_lambda * lambda_ * (||C(Zm, Z0) - C_gt0||_F^2
                                             + ||C(Zm, Z1) - C_gt1||_F^2)

    with ``L_BT`` the Barlow Twins loss of ``(Z0, Z1)`` (see :func:`barlow_twins`). Returns a
    scalar. Gradients flow into every embedding (the reference detaches nothing).

    Paper: Bandara, De Melo and Patel, "Guarding Barlow Twins Against Overfitting with Mixed
    Samples" (2023), arXiv:2312.02151.

    Matches wgcban/mix-bt ``main.py`` ``train`` (the CIFAR/STL/TinyImageNet script; its README
    equations): standardisation with ``torch.std`` and no eps (``eps=0``), ``loss_bt +
    mixup_loss_scale * lmbda * (...)``. Defaults are its CIFAR-10 setting
    (``scripts-pretrain-resnet18/cifar10.sh``: ``lmbda = 1/128`` for 1024 features,
    ``mixup_loss_scale=4``). Its ImageNet script ``main_imagenet.py`` writes the regulariser
    as ``0.5 * lambd * lambda_mixup * (...)`` (so its ``lambda_mixup=2`` with ``lambd=0.0051``
    is ``mixed_lambda=1, lambda_=0.0051`` here) and uses ``ratio * Z1^T Z1`` instead of
    ``ratio * Z0^T Z1`` in ``C_gt1``, which departs from the paper; this follows the paper.

    Args:
      z0: the first view's embeddings ``[N, D]``.
      z1: the second view's embeddings ``[N, D]``.
      z_mixed: embeddings ``[N, D]`` of the mixed inputs.
      ratio: the mixing ratio (a scalar, in [0, 1]; not differentiated in the reference).
      permutation: integer ``[N]``, the permutation of the second view in the mix (local to
        the device with ``axis_name``).
      lambda_: Barlow Twins' off-diagonal weight, >= 0 (also scales the regulariser).
      mixed_lambda: weight of the regulariser relative to ``lambda_``, >= 0.
      eps: added to the variance before the square root, >= 0.
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    nonnegative(lambda_, "lambda_")
    nonnegative(mixed_lambda, "mixed_lambda")
    nonnegative(eps, "eps")
    hyperparameter(ratio, "ratio", low=0, high=1)
    z0, z1 = paired(z0, z1, "z0", "z1")
    _, z_mixed = paired(z0, z_mixed, "z0", "z_mixed")
    permutation = jnp.asarray(permutation)
    if not jnp.issubdtype(permutation.dtype, jnp.integer) or permutation.shape != (z0.shape[0],):
        raise ValueError(f"`permutation` must be integer indices of shape ({z0.shape[0]},), got "
                         f"{permutation.dtype} {permutation.shape}.")
    _at_least_two(z0, "z0", axis_name)
    a, n = _standardize(z0, axis_name, ddof=1, eps=eps)
    b, _ = _standardize(z1, axis_name, ddof=1, eps=eps)
    m, _ = _standardize(z_mixed, axis_name, ddof=1, eps=eps)
    corr = lambda u, v: _correlation(u, v, n, axis_name)  # noqa: E731
    b_mixed_in = b[permutation]
    mixed_loss = 0.0
    for view in (a, b):
        target = ratio * corr(a, view) + (1 - ratio) * corr(b_mixed_in, view)
        mixed_loss = mixed_loss + jnp.sum((corr(m, view) - target) ** 2)
    return _redundancy_reduction(corr(a, b), lambda_) + mixed_lambda * lambda_ * mixed_loss


# -- VICReg -----------------------------------------------------------------------------------


def _variance_and_covariance(z, n, axis_name, eps):
    """VICReg's ``mean_j relu(1 - sqrt(var_j + eps))`` and ``sum_{i != j} cov_ij^2 / D`` of
    one view over the global batch (unbiased, centred on the global mean)."""
    centred = z - batch_sum(jnp.sum(z, axis=0), axis_name) / n
    cov = batch_sum(centred.T @ centred, axis_name) / (n - 1)
    std = jnp.sqrt(jnp.diagonal(cov) + eps)
    return jnp.mean(jax.nn.relu(1.0 - std)), _off_diagonal_sum_of_squares(cov) / z.shape[1]


def vicreg(z0, z1, *, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4, axis_name=None):
    """VICReg: variance-invariance-covariance regularisation of two views' embeddings.

    ``inv = mean (z0 - z1)^2`` (over ``N * D``); per view, after centring over the global
    batch, ``std_j = sqrt(var_j + eps)`` (unbiased variance), ``v = mean_j relu(1 - std_j)``
    and ``c = sum_{i != j} cov_ij^2 / D`` with ``cov = z^T z / (N - 1)``;
    ``L = sim_coeff * inv + std_coeff * (v0 + v1) / 2 + cov_coeff * (c0 + c1)`` (Sec. 2).
    Returns a scalar, symmetric in ``(z0, z1)``.

    Paper: Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization
    for Self-Supervised Learning" (2022), arXiv:2105.04906.

    Matches facebookresearch/vicreg ``main_vicreg.py`` ``VICReg.forward`` (the variance term
    halved, ``/ 2``, per view; statistics after ``FullGatherLayer``) with its defaults, and
    lightly ``VICRegLoss`` (``lambda_param, mu_param, nu_param = 25, 25, 1``). solo-learn's
    ``vicreg_loss_func`` omits the ``/ 2`` (its variance term is twice this one). The
    reference's invariance term is the local MSE (equal to the global one averaged over
    devices by DDP); here it is the global batch's.

    Args:
      z0: the first view's embeddings ``[N, D]``.
      z1: the second view's embeddings ``[N, D]``.
      sim_coeff: weight of the invariance term, >= 0.
      std_coeff: weight of the variance term, >= 0.
      cov_coeff: weight of the covariance term, >= 0.
      eps: added to the variance before the square root, >= 0.
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    for value, name in ((sim_coeff, "sim_coeff"), (std_coeff, "std_coeff"),
                        (cov_coeff, "cov_coeff"), (eps, "eps")):
        nonnegative(value, name)
    z0, z1 = paired(z0, z1, "z0", "z1")
    _at_least_two(z0, "z0", axis_name)
    n = _global_count(z0.shape[0], axis_name)
    invariance = batch_sum(jnp.sum((z0 - z1) ** 2), axis_name) / (n * z0.shape[1])
    var0, cov0 = _variance_and_covariance(z0, n, axis_name, eps)
    var1, cov1 = _variance_and_covariance(z1, n, axis_name, eps)
    return (sim_coeff * invariance + std_coeff * (var0 + var1) / 2
            + cov_coeff * (cov0 + cov1))


# -- W-MSE ------------------------------------------------------------------------------------


def whiten(x, *, eps=0.0):
    """Cholesky whitening of a batch ``x [..., n, D]`` (W-MSE's ``Whitening2d``).

    ``Sigma = (x - mu)^T (x - mu) / (n - 1)``, ``Sigma' = (1 - eps) Sigma + eps I``,
    ``L = cholesky(Sigma')`` and ``z = (x - mu) L^{-T}``, so that ``z`` has zero mean and
    identity covariance (for ``eps=0``). Needs ``n > D`` and a full-rank batch (else NaN, as
    the reference); ``eps`` in [0, 1] shrinks towards the identity. Batched over leading axes.
    """
    hyperparameter(eps, "eps", low=0, high=1)
    x = float_array(x, "x", min_ndim=2)
    centred = x - jnp.mean(x, axis=-2, keepdims=True)
    n, dim = x.shape[-2:]
    cov = jnp.swapaxes(centred, -1, -2) @ centred / (n - 1)
    cov = (1 - eps) * cov + eps * jnp.eye(dim, dtype=x.dtype)
    chol = jnp.linalg.cholesky(cov)
    solved = jax.scipy.linalg.solve_triangular(chol, jnp.swapaxes(centred, -1, -2), lower=True)
    return jnp.swapaxes(solved, -1, -2)


def _pair_loss(a, b, normalized: bool):
    if normalized:
        return 2.0 - 2.0 * jnp.mean(jnp.sum(normalize(a) * normalize(b), axis=-1))
    return jnp.mean((a - b) ** 2)


def w_mse(views, key, *, w_size=128, w_iter=1, eps=0.0, normalize=True):
    """W-MSE: the MSE between positive pairs after whitening sub-batches of each view.

    For each of ``w_iter`` random permutations of the ``N`` examples (drawn from ``key``,
    ``jax.random.permutation`` of each of ``jax.random.split(key, w_iter)``) the examples
    are split into sub-batches of ``w_size``; each view's sub-batch is whitened
    (:func:`whiten`, Cholesky); the loss between every pair of views ``i < j`` is
    ``2 - 2 mean_n cos(z_i, z_j)`` (``normalize=True``) or ``mean (z_i - z_j)^2``; the
    result is their sum over pairs and iterations divided by ``w_iter * V(V-1)/2``.
    Returns a scalar.

    Paper: Ermolov et al., "Whitening for Self-Supervised Representation Learning" (2021),
    arXiv:2007.06346.

    Matches htdt/self-supervised ``methods/w_mse.py`` ``WMSE.forward`` with
    ``methods/whitening.py`` ``Whitening2d`` (training mode) and ``norm_mse_loss`` (or
    ``F.mse_loss`` with ``--no_norm``), given the same permutations; its defaults
    ``--w_size 128 --w_iter 1 --w_eps 0`` (with ``--emb 64``). lightly ``WMSELoss`` computes
    the same in training mode with ``w_size=256`` (``embedding_dim=128``) by default; it takes
    the views concatenated, ``[V * N, D]``, which is ``views.reshape(V, N, D)`` here.

    Args:
      views: ``[V, N, D]`` or a sequence of ``V >= 2`` arrays ``[N, D]``.
      key: a PRNG key for the permutations.
      w_size: sub-batch size (static int); must divide ``N`` and be at least ``2 * D``
        (lightly raises for smaller sub-batches: their whitening is unstable).
      w_iter: number of whitening iterations (static int, >= 1).
      eps: shrinkage of the covariance towards the identity, in [0, 1].
      normalize: compare L2-normalised whitened embeddings (True) or raw ones (static).
    """
    views = embeddings(jnp.stack(views) if isinstance(views, (list, tuple)) else views,
                       "views", ndim=3)
    num_views, n, dim = views.shape
    if num_views < 2:
        raise ValueError(f"`views` must hold at least 2 views, got shape {views.shape}.")
    w_size = static_int(w_size, "w_size", low=2)
    w_iter = static_int(w_iter, "w_iter", low=1)
    if w_size < 2 * dim:
        raise ValueError(f"`w_size` must be at least twice the embedding size, 2 * {dim}, for a "
                         f"stable whitening, got {w_size}.")
    if n % w_size:
        raise ValueError(f"`w_size` must divide the batch size {n}, got {w_size}.")
    pairs = [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]
    total = 0.0
    for sub_key in jax.random.split(key, w_iter):
        shuffled = views[:, jax.random.permutation(sub_key, n)]
        white = whiten(shuffled.reshape(num_views, n // w_size, w_size, dim), eps=eps)
        white = white.reshape(num_views, n, dim)
        total = total + sum(_pair_loss(white[i], white[j], normalize) for i, j in pairs)
    return total / (w_iter * len(pairs))


# -- BYOL / SimSiam ---------------------------------------------------------------------------


def negative_cosine(predictions, targets, *, stop_gradient=True, eps=1e-8):
    """Negative cosine similarity ``-cos(p, sg(z))`` of BYOL and SimSiam, per example ``[N]``.

    ``cos = <p / max(||p||, eps), z / max(||z||, eps)>`` (``torch.nn.functional.
    cosine_similarity``). With ``stop_gradient=True`` (the default) no gradient flows into
    ``targets``, as in both papers (SimSiam's ``D(p, stopgrad(z))``; BYOL's target
    network); the symmetrised SimSiam loss is ``(neg(p1, z2) + neg(p2, z1)) / 2`` and BYOL's
    ``2 + 2 * neg(p, z)``.

    Papers: Chen and He, "Exploring Simple Siamese Representation Learning" (2020),
    arXiv:2011.10566; Grill et al., "Bootstrap Your Own Latent" (2020), arXiv:2006.07733.

    Matches lightly ``NegativeCosineSimilarity`` (``eps=1e-8``) per example (lightly returns
    the mean). lightly does not detach its second input (the caller does);
    ``stop_gradient=False`` gives its gradient.
    """
    nonnegative(eps, "eps")
    predictions, targets = paired(predictions, targets, "predictions", "targets")
    if stop_gradient:
        targets = jax.lax.stop_gradient(targets)
    return -jnp.sum(normalize(predictions, eps) * normalize(targets, eps), axis=-1)


# -- DINO -------------------------------------------------------------------------------------


def _views(x, name: str, n: int | None = None, k: int | None = None):
    """Checks views ``[V, N, K]`` (matching ``n`` examples and ``k`` features if given)."""
    x = embeddings(x, name, ndim=3)
    if (n is not None and x.shape[1] != n) or (k is not None and x.shape[2] != k):
        raise ValueError(f"`{name}` must have shape [V, {n}, {k}], got {x.shape}.")
    return x


def dino(student, teacher, center, *, student_temperature=0.1, teacher_temperature=0.04,
         center_momentum=0.9, axis_name=None):
    """DINO: cross-entropy from the centred, sharpened teacher to the student, across views.

    ``t_v = softmax((teacher_v - center) / teacher_temperature)`` (no gradient) and
    ``s_w = log_softmax(student_w / student_temperature)``; the loss of example ``n`` is
    ``sum_{v, w; v != w} -<t_v[n], s_w[n]>`` divided by the number of those pairs (Sec. 3.1,
    multi-crop): teacher view ``v`` and student view ``v`` are the same crop, so the
    student's first ``V_t`` views must be the teacher's (global crops) and any further ones
    the local crops. Returns ``(loss [N], new_center [K])`` with ``new_center =
    center_momentum * center + (1 - center_momentum) * mean(teacher)`` over the teacher's
    views and the global batch, computed from the raw teacher outputs; start from
    ``center = jnp.zeros(K)``.

    Paper: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (2021),
    arXiv:2104.14294.

    Matches lightly ``DINOLoss`` (and facebookresearch/dino ``main_dino.py`` ``DINOLoss``) per
    example, with their defaults (``student_temp=0.1``, ``teacher_temp=0.04``,
    ``center_momentum=0.9``); lightly's argument order is ``(teacher_out, student_out)`` and
    its teacher-temperature warm-up is a schedule for ``teacher_temperature`` here.

    Args:
      student: student outputs ``[V_s, N, K]``.
      teacher: teacher outputs ``[V_t, N, K]``; ``V_s * V_t - min(V_s, V_t)`` must be > 0.
      center: the running center ``[K]``.
      student_temperature: the student's softmax temperature, > 0.
      teacher_temperature: the teacher's (sharpening) temperature, > 0.
      center_momentum: EMA momentum of the center, in [0, 1].
      axis_name: mesh axis over which the batch is sharded (for the center), or None.
    """
    check_temperature(student_temperature, "student_temperature")
    check_temperature(teacher_temperature, "teacher_temperature")
    hyperparameter(center_momentum, "center_momentum", low=0, high=1)
    student = _views(student, "student")
    num_student, n, k = student.shape
    teacher = jax.lax.stop_gradient(_views(teacher, "teacher", n, k))
    center = jax.lax.stop_gradient(embeddings(center, "center", ndim=1))
    if center.shape != (k,):
        raise ValueError(f"`center` must have shape ({k},), got {center.shape}.")
    num_teacher = teacher.shape[0]
    num_pairs = num_teacher * num_student - min(num_teacher, num_student)
    if num_pairs == 0:
        raise ValueError(f"`student` and `teacher` must give a pair of different views, got "
                         f"{num_student} student view(s) and {num_teacher} teacher view(s).")
    targets = jax.nn.softmax((teacher - center) / teacher_temperature, axis=-1)
    log_p = jax.nn.log_softmax(student / student_temperature, axis=-1)
    cross = -jnp.einsum("tnk,snk->tsn", targets, log_p)
    other_view = np.arange(num_teacher)[:, None] != np.arange(num_student)[None, :]
    loss = jnp.sum(jnp.where(other_view[..., None], cross, 0.0), axis=(0, 1)) / num_pairs
    count = num_teacher * _global_count(n, axis_name)
    batch_center = batch_sum(jnp.sum(teacher, axis=(0, 1)), axis_name) / count
    new_center = center_momentum * center + (1 - center_momentum) * batch_center
    return loss, new_center


# -- SwaV -------------------------------------------------------------------------------------


def sinkhorn_knopp(scores, *, epsilon=0.05, iterations=3, axis_name=None):
    """Soft codes ``Q [B, K]`` of SwaV: an equipartition of the batch over the prototypes.

    ``Q ∝ exp(scores / epsilon)``, then ``iterations`` rounds of normalising each prototype's
    column to total ``1/K`` over the (global) batch and each example's row to ``1/B``; the
    rows of the result sum to 1 (Sec. 3.1). No gradient flows (the codes are
    targets). Computed in log space, so finite for scores of any magnitude.

    Paper: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (2020), arXiv:2006.09882.

    Matches lightly ``swav_loss.sinkhorn`` (facebookresearch/swav ``distributed_sinkhorn``)
    with its defaults ``epsilon=0.05``, ``iterations=3``; ``axis_name`` plays its
    ``gather_distributed=True``.

    Args:
      scores: prototype scores ``[B, K]``.
      epsilon: entropic regularisation, > 0.
      iterations: number of Sinkhorn rounds (static int, >= 0).
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    check_temperature(epsilon, "epsilon")
    iterations = static_int(iterations, "iterations", low=0)
    scores = jax.lax.stop_gradient(embeddings(scores, "scores"))
    log_batch = jnp.log(jnp.asarray(_global_count(scores.shape[0], axis_name), scores.dtype))
    log_q = scores / epsilon
    log_q = log_q - global_logsumexp(log_q, axis_name=axis_name)
    for _ in range(iterations):
        log_q = log_q - global_logsumexp(log_q, 0, axis_name)  # each prototype over the batch
        log_q = log_q - global_logsumexp(log_q, 1) - log_batch  # each example
    return jnp.exp(log_q + log_batch)


def swav(scores, *, crops_for_assign=(0, 1), queue=None, temperature=0.1,
         sinkhorn_iterations=3, sinkhorn_epsilon=0.05, axis_name=None):
    """SwaV: predict the Sinkhorn code of one crop from the prototype scores of another.

    For each assigned crop ``a`` in ``crops_for_assign``, ``q_a = sinkhorn_knopp(scores[a])``
    (no gradient) and ``CE_{a,v} = -sum_k q_a log_softmax(scores[v] / temperature)``; the
    loss of each example is ``sum_a sum_{v != a} CE_{a,v} / ((V - 1) * len(crops_for_assign))``
    (Eq. 1, multi-crop). Returns ``[N]``.

    With ``queue [len(crops_for_assign), Q, K]`` (the scores of queued embeddings of each
    assigned crop) the codes are computed on ``concat(scores[a], queue[i])`` and the queue's
    rows dropped.

    Paper: Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (2020), arXiv:2006.09882.

    Matches lightly ``SwaVLoss`` per example, with its defaults: lightly's
    ``high_resolution_outputs`` (list of ``V_h`` arrays) and ``low_resolution_outputs`` are
    ``scores = stack(high + low)`` with ``crops_for_assign=range(V_h)`` (codes are computed
    for every high-resolution crop), ``queue_outputs`` is ``queue``. The default ``(0, 1)``
    is facebookresearch/swav's ``--crops_for_assign 0 1`` (two high-resolution crops first).

    Args:
      scores: prototype scores ``[V, N, K]`` of each crop (the normalised embeddings times
        the normalised prototypes).
      crops_for_assign: distinct indices of the crops whose codes are targets (static).
      queue: optional ``[len(crops_for_assign), Q, K]`` queued scores.
      temperature: softmax temperature of the predictions, > 0.
      sinkhorn_iterations: the ``iterations`` of :func:`sinkhorn_knopp`.
      sinkhorn_epsilon: the ``epsilon`` of :func:`sinkhorn_knopp`.
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    check_temperature(temperature)
    scores = _views(scores, "scores")
    num_crops, n, k = scores.shape
    assign = tuple(static_int(a, "crops_for_assign", low=0) for a in crops_for_assign)
    if not assign or len(set(assign)) != len(assign) or max(assign) >= num_crops:
        raise ValueError(f"`crops_for_assign` must be distinct crop indices in [0, {num_crops}), "
                         f"got {crops_for_assign}.")
    if num_crops < 2:
        raise ValueError(f"`scores` must hold at least 2 crops, got shape {scores.shape}.")
    targets = scores[jnp.asarray(assign)]
    if queue is not None:
        queue = _views(queue, "queue", k=k)
        if queue.shape[0] != len(assign):
            raise ValueError(f"`queue` must hold one [Q, K] block per assigned crop, "
                             f"{len(assign)}, got shape {queue.shape}.")
        targets = jnp.concatenate([targets, queue], axis=1)
    codes = jax.vmap(lambda s: sinkhorn_knopp(s, epsilon=sinkhorn_epsilon,
                                              iterations=sinkhorn_iterations,
                                              axis_name=axis_name))(targets)[:, :n]
    log_p = jax.nn.log_softmax(scores / temperature, axis=-1)
    cross = -jnp.einsum("ank,vnk->avn", codes, log_p)
    other_crop = np.asarray(assign)[:, None] != np.arange(num_crops)[None, :]
    total = jnp.sum(jnp.where(other_crop[..., None], cross, 0.0), axis=(0, 1))
    return total / ((num_crops - 1) * len(assign))


# -- KoLeo ------------------------------------------------------------------------------------


def koleo(x, *, eps=1e-8, axis_name=None):
    """KoLeo: the Kozachenko-Leonenko entropy estimator's ``-log`` nearest-neighbour distance.

    With ``x_hat = x / max(||x||, eps)`` and ``m(i)`` the nearest other example (largest
    cosine, self excluded, among the global batch), ``loss_i = -log(||x_hat_i - x_hat_m(i) +
    eps|| + eps)`` (``torch.nn.PairwiseDistance`` adds ``eps`` to the difference), per
    example ``[N]``. Finite, with finite gradients, for duplicated points. The gradient flows
    into both ``x_i`` and its neighbour, as in the reference.

    Paper: Sablayrolles et al., "Spreading vectors for similarity search" (2019),
    arXiv:1806.03198; used in DINOv2 (arXiv:2304.07193).

    Matches lightly ``KoLeoLoss`` (``p=2``, ``eps=1e-8``; after facebookresearch/dinov2
    ``dinov2/loss/koleo_loss.py``) per example. With ``axis_name`` the neighbours are searched
    in the global batch (the references search the local one).

    Args:
      x: embeddings ``[N, D]``, at least 2 in the (global) batch.
      eps: normalisation floor and distance offset, >= 0.
      axis_name: mesh axis over which the batch is sharded, or None.
    """
    nonnegative(eps, "eps")
    x = embeddings(x, "x")
    _at_least_two(x, "x", axis_name)
    unit = normalize(x, eps)
    everyone = gather(unit, axis_name)
    rows = jnp.arange(x.shape[0]) + shard_offset(axis_name, x.shape[0])
    is_self = rows[:, None] == jnp.arange(everyone.shape[0])[None, :]
    cosine = jnp.where(is_self, -jnp.inf, jax.lax.stop_gradient(unit @ everyone.T))
    # Both rows taken from the same array, so a duplicate's difference is exactly 0 under jit.
    difference = everyone[rows] - everyone[jnp.argmax(cosine, axis=1)]
    return -jnp.log(jnp.linalg.norm(difference + eps, axis=-1) + eps)
