"""Penalties on the weights: sparsity, shrinkage, orthogonality, spectral norm, anchoring.

Every penalty is ``strength * R(params)``, a scalar, summed over the leaves chosen by ``mask``
(default: kernels only, the leaves with at least two dimensions; biases and normalisation
scales are never penalised unless asked). ``mask`` may be a pytree of booleans shaped like the
parameters or a function of the parameters returning one. ``strength`` and every numeric
hyperparameter may be traced (swept by ``jax.vmap``); a concrete ``strength`` must be ``>= 0``
(``ValueError("`strength` must be >= 0, got -1.0.")``), a traced one is not checked.

- ``l1``: ``lambda * sum |w|``.
- ``l2``: ``lambda / 2 * sum w^2``. The factor 1/2 makes its gradient ``lambda * w``, the
  "L2 regularization" of Loshchilov & Hutter (arXiv 1711.05101, Sec. 2) that equals SGD's
  weight decay ``lambda`` and that ``jaxreg.optim.decoupled_weight_decay`` decouples.
- ``group_lasso``: ``lambda * sum_g ||w_g||_2`` (Yuan & Lin 2006), one group per slice along
  ``axis`` (default ``-1``: per output unit of Flax kernels); unweighted (no ``sqrt(|g|)``),
  as ``jaxreg.optim.proximal.prox_group_lasso``, its proximal operator.
- ``orthogonality``: soft orthogonality (Achour, Malgouyres & Mamalet, "Existence, Stability
  and Scalability of Orthogonal Convolutional Neural Networks", JMLR 2022, arXiv 2108.05623).
  Dense ``W [in, out]``: ``||G - I||_F^2`` with ``G`` the smaller Gram matrix (``W W^T`` or
  ``W^T W``). Convolution kernels ``[*spatial, in, out]`` (Flax layout): their ``L_orth``,
  ``||conv(K, K, padding P, stride S) - I_r0||_F^2 - max(0, M - S^d C)`` with
  ``P = floor((k - 1) / S) S``, the identity at the centre of the output (Sec. 3 and
  Theorem 7; as ``LorthRegularizer`` of deel-ai/deel-lip, ``regularizers.py``, extended from
  2-D to any number of spatial dimensions). The subtracted constant makes the minimum 0 when
  ``M > S^d C``.
- ``spectral_norm``: ``lambda / 2 * sum_l sigma(W_l)^2`` (Yoshida & Miyato, "Spectral Norm
  Regularization for Improving the Generalizability of Deep Learning", arXiv 1705.10941,
  Eq. 6), sigma by power iteration from a fixed start (no state: ``num_iterations`` steps at
  each call; the paper keeps one step per SGD update with a persistent vector). Convolution
  kernels are flattened to ``[prod(spatial) * in, out]`` as in the paper. The gradient is
  ``lambda * sigma * u v^T``, the singular vectors held constant.
- ``l2_to_anchor``: ``lambda / 2 * sum ||w - w0||^2`` (L2-SP; Li, Grandvalet & Davoine,
  "Explicit Inductive Bias for Transfer Learning with CNNs", arXiv 1802.01483, Eq. 3; the
  baseline of Smith et al., "A Closer Look at Rehearsal-Free Continual Learning",
  arXiv 2203.17269).
- ``ewc``: ``lambda / 2 * sum_i F_i (w_i - w*_i)^2`` (Kirkpatrick et al., "Overcoming
  catastrophic forgetting in neural networks", arXiv 1612.00796, Eq. 3) with the diagonal
  Fisher of ``diagonal_fisher``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxreg._validate import check_strength, class_labels, float_array, leaf_mask, tree_like


def _chosen_leaves(params, mask) -> list[jax.Array]:
    """The leaves selected by ``mask``, checked floating and upcast to float32."""
    chosen = leaf_mask(mask, params)
    leaves = [float_array(p, "params") for p in jax.tree.leaves(params)]
    return [p for p, on in zip(leaves, jax.tree.leaves(chosen), strict=True) if on]


def _total(values) -> jax.Array:
    return sum(values, jnp.zeros([], jnp.float32))


def _safe_norm(x, axis=None) -> jax.Array:
    """Euclidean norm with gradient 0 (not NaN) at the origin."""
    squared = jnp.sum(jnp.square(x), axis=axis)
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def l1(params, *, strength: Any = 1.0, mask: Any = None) -> jax.Array:
    """``strength * sum |w|`` over the masked leaves.

    Args:
        params: a pytree of floating arrays.
        strength: lambda.
        mask: which leaves (default: kernels only); a pytree of booleans or a function.
    """
    check_strength(strength)
    return strength * _total(jnp.sum(jnp.abs(p)) for p in _chosen_leaves(params, mask))


def l2(params, *, strength: Any = 1.0, mask: Any = None) -> jax.Array:
    """``strength / 2 * sum w^2`` over the masked leaves (gradient ``strength * w``)."""
    check_strength(strength)
    return 0.5 * strength * _total(jnp.sum(jnp.square(p)) for p in _chosen_leaves(params, mask))


def group_lasso(params, *, strength: Any = 1.0, mask: Any = None, axis: int = -1) -> jax.Array:
    """``strength * sum_g ||w_g||_2``, one group per slice along ``axis`` of each masked leaf
    (a one-dimensional leaf is a single group)."""
    check_strength(strength)
    def groups(p):
        if p.ndim < 2:
            return _safe_norm(p)
        reduce = tuple(i for i in range(p.ndim) if i != axis % p.ndim)
        return jnp.sum(_safe_norm(p, axis=reduce))

    return strength * _total(groups(p) for p in _chosen_leaves(params, mask))


def _dense_orthogonality(w) -> jax.Array:
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return jnp.sum(jnp.square(gram - jnp.eye(gram.shape[0], dtype=w.dtype)))


def _conv_orthogonality(kernel, stride: int) -> jax.Array:
    """``L_orth`` of a kernel ``[*spatial, C, M]`` for a convolution of stride ``stride``."""
    spatial = kernel.shape[:-2]
    channels_in, channels_out = kernel.shape[-2:]
    if any(k % 2 == 0 for k in spatial):
        raise ValueError(f"orthogonality of convolution kernels needs odd spatial sizes, got a "
                         f"kernel of shape {kernel.shape} in `params`.")
    d = len(spatial)
    # The M filters as a batch of images [M, *spatial, C], zero-padded, convolved with K.
    images = jnp.moveaxis(kernel, -1, 0)
    pads = [((k - 1) // stride) * stride for k in spatial]
    images = jnp.pad(images, [(0, 0)] + [(p, p) for p in pads] + [(0, 0)])
    letters = "HWD"[:d] if d <= 3 else None
    if letters is None:
        raise ValueError(f"orthogonality supports 1 to 3 spatial dimensions, got kernel shape "
                         f"{kernel.shape} in `params`.")
    numbers = (f"N{letters}C", f"{letters}IO", f"N{letters}C")
    out = lax.conv_general_dilated(images, kernel, (stride,) * d, "VALID",
                                   dimension_numbers=numbers,
                                   precision=lax.Precision.HIGHEST)  # [M, *out, M]
    centre = tuple(n // 2 for n in out.shape[1:-1])
    target = jnp.zeros(out.shape, out.dtype).at[(slice(None), *centre, slice(None))].set(
        jnp.eye(channels_out, dtype=out.dtype))
    excess = max(0, channels_out - stride**d * channels_in)
    return jnp.sum(jnp.square(out - target)) - excess


def orthogonality(params, *, strength: Any = 1.0, mask: Any = None, stride: int = 1
                  ) -> jax.Array:
    """Soft orthogonality of dense and convolution kernels (see the module).

    Args:
        params: a pytree of floating arrays; two-dimensional leaves are dense kernels
            ``[in, out]``, leaves with three to five dimensions convolution kernels
            ``[*spatial, in, out]`` (odd spatial sizes).
        strength: lambda.
        mask: which leaves (default: kernels only).
        stride: the convolutions' stride ``S`` (a Python int, the same for every kernel;
            call once per stride with a mask when they differ).
    """
    check_strength(strength)
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be a positive int, got {stride!r}.")

    def one(p):
        if p.ndim == 2:
            return _dense_orthogonality(p)
        if p.ndim < 2:
            raise ValueError(f"orthogonality needs kernels with at least two dimensions, got "
                             f"shape {p.shape} in `params` (check `mask`).")
        return _conv_orthogonality(p, stride)

    return strength * _total(one(p) for p in _chosen_leaves(params, mask))


def top_singular_value(matrix, *, num_iterations: int = 20) -> jax.Array:
    """The largest singular value of ``matrix`` by ``num_iterations`` power iterations from a
    fixed random start; its gradient is ``u v^T`` (singular vectors held constant)."""
    matrix = float_array(matrix, "matrix", min_ndim=2)
    matrix = matrix.reshape(-1, matrix.shape[-1])
    start = jax.random.normal(jax.random.PRNGKey(0), (matrix.shape[1],), matrix.dtype)
    frozen = lax.stop_gradient(matrix)

    def step(v, _):
        u = frozen @ v
        u = u / (_safe_norm(u) + 1e-12)
        v = frozen.T @ u
        return v / (_safe_norm(v) + 1e-12), None

    v, _ = lax.scan(step, start / _safe_norm(start), None, length=num_iterations)
    u = frozen @ v
    u = lax.stop_gradient(u / (_safe_norm(u) + 1e-12))
    return u @ matrix @ lax.stop_gradient(v)


def spectral_norm(params, *, strength: Any = 1.0, mask: Any = None,
                  num_iterations: int = 20) -> jax.Array:
    """``strength / 2 * sum_l sigma(W_l)^2`` over the masked kernels (Yoshida & Miyato,
    Eq. 6); convolution kernels flattened to ``[prod(spatial) * in, out]``."""
    check_strength(strength)
    return 0.5 * strength * _total(
        jnp.square(top_singular_value(p, num_iterations=num_iterations))
        for p in _chosen_leaves(params, mask))


def _aligned(params, mask, **others):
    """Tuples ``(param, *others)`` of the leaves chosen by ``mask``; each of ``others`` (an
    anchor, a Fisher diagonal) is checked to match ``params`` leaf for leaf."""
    trees = [jax.tree.leaves(tree_like(tree, params, name)) for name, tree in others.items()]
    chosen = jax.tree.leaves(leaf_mask(mask, params))
    leaves = [float_array(p, "params") for p in jax.tree.leaves(params)]
    return [pair for pair, on in zip(zip(leaves, *trees, strict=True), chosen, strict=True)
            if on]


def l2_to_anchor(params, anchor, *, strength: Any = 1.0, mask: Any = None) -> jax.Array:
    """``strength / 2 * sum ||w - w0||^2`` (L2-SP) over the masked leaves.

    Args:
        params: a pytree of floating arrays.
        anchor: the starting point ``w0`` (e.g. pre-trained weights), shaped like ``params``.
        strength: lambda (alpha in L2-SP).
        mask: which leaves (default: kernels only).
    """
    check_strength(strength)
    return 0.5 * strength * _total(
        jnp.sum(jnp.square(p - a)) for p, a in _aligned(params, mask, anchor=anchor))


def ewc(params, anchor, fisher, *, strength: Any = 1.0, mask: Any = None) -> jax.Array:
    """Elastic weight consolidation, ``strength / 2 * sum F (w - w*)^2`` (Kirkpatrick et al.,
    Eq. 3).

    Args:
        params: a pytree of floating arrays.
        anchor: the previous task's solution ``w*``, shaped like ``params``.
        fisher: the diagonal Fisher information at ``w*`` (``diagonal_fisher``), shaped like
            ``params``.
        strength: lambda.
        mask: which leaves (default: kernels only).
    """
    check_strength(strength)
    return 0.5 * strength * _total(
        jnp.sum(f * jnp.square(p - a))
        for p, a, f in _aligned(params, mask, anchor=anchor, fisher=fisher))


def diagonal_fisher(apply_fn, params, inputs, labels=None, *, key=None) -> Any:
    """Diagonal of the Fisher information of a classifier, ``E_x E_y [(d log p(y|x)/dw)^2]``.

    With ``labels`` it is the empirical Fisher (the given labels); with ``key`` instead the
    labels are drawn from the model's own predictive distribution (one draw per example), the
    Monte Carlo estimate of the true Fisher that Kirkpatrick et al. use. Squared
    per-example gradients, averaged over the batch.

    Args:
        apply_fn: ``apply_fn(params, inputs) -> logits [B, K]``.
        params: the parameters (a pytree).
        inputs: a batch ``[B, ...]``.
        labels: integer labels ``[B]`` in ``[0, K)`` (empirical Fisher), or None. Concrete
            labels outside it raise; traced ones make the result NaN.
        key: a PRNG key (sampled labels) when ``labels`` is None.

    Returns:
        A pytree shaped like ``params`` (float32 or wider).
    """
    if (labels is None) == (key is None):
        raise ValueError("diagonal_fisher needs exactly one of `labels` (empirical Fisher) "
                         "and `key` (labels drawn from the model).")
    if labels is None:
        logits = lax.stop_gradient(float_array(apply_fn(params, inputs), "apply_fn output",
                                               min_ndim=2))
        labels = jax.random.categorical(key, logits)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must hold integer class indices, got dtype {labels.dtype}.")
    logits_shape = jax.eval_shape(apply_fn, params, inputs).shape
    if labels.shape != logits_shape[:-1]:
        raise ValueError(f"`labels` must have shape {logits_shape[:-1]} (the logits' without "
                         f"their class axis), got {labels.shape}.")
    labels, mask = class_labels(labels, logits_shape[-1])

    def log_likelihood(p, x, y):
        logits = float_array(apply_fn(p, x[None]), "apply_fn output", min_ndim=2)[0]
        return jax.nn.log_softmax(logits)[y]

    grads = jax.vmap(jax.grad(log_likelihood), in_axes=(None, 0, 0))(params, inputs, labels)
    # the label rule: a traced label outside [0, K) makes the estimate NaN, never finite
    valid = jnp.where(jnp.all(mask.in_range), 1.0, jnp.nan)
    return jax.tree.map(
        lambda g: valid * jnp.mean(jnp.square(g.astype(jnp.float32)), axis=0), grads)
