"""Weight compander: each weight is a bounded, odd function of a raw trainable weight.

Cakaj, Mehnert & Yang, "Weight Compander: A Simple Weight Reparameterization for
Regularization", IJCNN 2023, arXiv:2306.16993. The model stores raw weights ``v`` and its
forward pass uses the weights

    w = Psi(v) = a * arctan(v / b),    a, b > 0                                  (Eq. 1)

so ``|w| < a pi / 2`` (the magnitude of every weight is restricted from the first step on),
and the gradient reaching ``v`` is the gradient at ``w`` times

    dPsi/dv = a / (b (1 + v^2 / b^2))                                             (Eqs. 2-3)

which is largest at ``v = 0`` (``a / b``): weights near zero move more than large ones, which
spreads the weights away from zero. The paper reparameterizes every kernel (dense and
convolution), never biases or batch-normalization parameters: the default ``mask`` here
(:func:`jaxreg._validate.kernels_only`, leaves with ``ndim >= 2``) picks the same leaves.

* Fixed shape (Section III-A): ``a`` and ``b`` are hyperparameters shared by all weights.
  The paper grid-searches them in {0.5, ..., 1.0} per network (Table I, e.g. ResNet18 on
  CIFAR-10: a = 1.0, b = 0.6; ResNet50 on ImageNet: a = 0.6, b = 0.7) and gives no single
  default; ``a = b = 1`` (``Psi(v) = arctan(v)``, the paper's Figure 2) is the default here.
  Weight decay is applied to ``w = Psi(v)``, not to ``v`` (Section III-A2): penalize the
  companded tree.
* Learned shape (Section III-B): ``a`` and ``b`` are trainable. The "fine" version (one pair
  per layer) beat the "coarse" one (one pair for the network) and is the one reported,
  initialized at ``a = 0.5, b = 1.0`` (Section IV-E): :func:`init_shape_params`. Pass the
  per-leaf trees as ``a`` and ``b``; for the coarse version pass two trainable scalars.
  Here weight decay goes on ``v`` only, never on ``a`` and ``b``.
* Initialization (Eq. 4): ``v = Psi^{-1}(w) = b * tan(w / a)``, so that the companded network
  starts from the ordinary initialization (:func:`init_raw_params`); it needs
  ``|w| < a pi / 2`` (the paper assumes ``a, b >= 0.5``).
* After training, ``weight_compander(raw, ...)`` is an ordinary parameter tree: inference
  needs no reparameterization.

Usage (gradients reach the raw weights and the learned shapes)::

    import jax
    import optax
    from jaxreg.regularizers import reparameterization as rp

    params = init_fn(key)                          # the model's ordinary initialization, w
    shape = rp.init_shape_params(params)           # {"a": tree, "b": tree}, per layer
    trainable = {"raw": rp.init_raw_params(params, **shape), "shape": shape}

    def loss_fn(trainable, x, y):
        weights = rp.weight_compander(trainable["raw"], **trainable["shape"])
        logits = apply_fn(weights, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(trainable, x, y)     # d/dv, d/da and d/db

With fixed shapes: ``rp.weight_compander(raw, a=1.0, b=0.6)`` inside the loss, with
``raw = rp.init_raw_params(params, a=1.0, b=0.6)``.

Reference: no official code has been published (Papers with Code lists none); this follows the
paper (the authors' IJCNN 2023 version, ``rinorcakaj.github.io`` ``files/WC_IJCNN_2023.pdf``).
Departures: the paper's variant of adaptive optimizers (Section III-A3, after
Powerpropagation: Adam's step computed from ``dL/dw`` and then multiplied by ``dPsi/dv``) is
not provided; with plain ``optax.adam`` the per-weight rescaling by ``dPsi/dv`` is largely
normalized away, as the paper warns. ``compand`` equals Eq. 1 for any nonzero ``b`` (it is
evaluated as ``a * arctan2(sign(b) v, |b|)``, whose gradients stay finite for huge ``|v|``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array, leaf_mask

#: The learned version's initial shape (Section IV-E: "a = 0.5 and b = 1.0 yields the best
#: performance" for the per-layer version).
LEARNED_INIT = {"a": 0.5, "b": 1.0}


def _hyper(value, name: str):
    """A shape parameter as a floating array (integers are promoted)."""
    try:
        x = jnp.asarray(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a number or a floating array, got "
                        f"{type(value).__name__}.") from None
    if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        x = x.astype(jnp.float32)
    return float_array(x, name)


def compand(v, *, a=1.0, b=1.0) -> jax.Array:
    """The weight compander ``Psi(v) = a * arctan(v / b)`` (Eq. 1), elementwise.

    Args:
        v: raw weights, any shape; bfloat16/float16 are computed in float32.
        a: output scale, ``|Psi(v)| < a pi / 2`` (paper: a > 0). Broadcasts against ``v``.
        b: input scale; the slope at 0 is ``a / b`` (paper: b > 0). Broadcasts against ``v``.

    Returns:
        The effective weights, float32 or wider, of the broadcast shape.
    """
    v = float_array(v, "v")
    a = _hyper(a, "a")
    b = _hyper(b, "b")
    sign = jnp.where(b < 0, -1.0, 1.0).astype(b.dtype)
    return a * jnp.arctan2(sign * v, jnp.abs(b))


def compand_inverse(w, *, a=1.0, b=1.0) -> jax.Array:
    """The raw weights of given effective weights, ``v = b * tan(w / a)`` (Eq. 4).

    Args:
        w: effective weights; must lie in ``(-a pi / 2, a pi / 2)``.
        a: the compander's shape ``a`` (as in :func:`compand`).
        b: the compander's shape ``b`` (as in :func:`compand`).

    Returns:
        ``v`` with ``compand(v, a=a, b=b) == w``; NaN where ``|w| >= |a| pi / 2`` (no raw
        weight reaches it).
    """
    w = float_array(w, "w")
    ratio = w / _hyper(a, "a")
    return jnp.where(jnp.abs(ratio) < jnp.pi / 2, _hyper(b, "b") * jnp.tan(ratio), jnp.nan)


def _per_leaf(value, params, name: str):
    """``value`` broadcast to one entry per parameter leaf: a scalar (or array) is shared by
    every leaf; a pytree must have the structure of ``params``."""
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(value)):
        return jax.tree.map(lambda _: value, params)
    try:
        return jax.tree.map(lambda _, s: s, params, value)
    except ValueError as error:
        raise ValueError(f"`{name}` must be a scalar or have the tree structure of the "
                         f"parameters: {error}") from None


def _leafwise(fn, params, mask, a, b):
    """Applies ``fn(leaf, a=..., b=...)`` to the chosen leaves, keeping each leaf's dtype."""
    chosen = leaf_mask(mask, params)
    a_tree = _per_leaf(a, params, "a")
    b_tree = _per_leaf(b, params, "b")

    def one(p, on, a_leaf, b_leaf):
        if not on:
            return p
        x = float_array(p, "params")
        shapes = {}
        for name, s in (("a", a_leaf), ("b", b_leaf)):
            shapes[name] = _hyper(s, name)
            try:
                fits = jnp.broadcast_shapes(shapes[name].shape, x.shape) == x.shape
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"`{name}` must be a scalar or broadcast to its parameter's "
                                 f"shape {x.shape}, got shape {shapes[name].shape}.")
        return fn(x, **shapes).astype(jnp.asarray(p).dtype)

    return jax.tree.map(one, params, chosen, a_tree, b_tree)


def weight_compander(params, *, mask=None, a=1.0, b=1.0):
    """The parameters a model should use: ``a * arctan(v / b)`` (Eq. 1) on the chosen leaves.

    Call it inside the loss, ``apply_fn(weight_compander(raw), x)``, so that gradients flow
    to the raw weights (and to ``a`` and ``b`` when they are trained).

    Args:
        params: the raw parameter pytree (``v`` on the chosen leaves).
        mask: which leaves to reparameterize: None (kernels only, ``ndim >= 2``; never biases
            or normalization scales), a pytree of booleans like ``params``, or a callable
            ``mask(params) -> pytree of booleans``.
        a: the shape ``a``: a scalar shared by all chosen leaves (fixed, or the learned
            "coarse" version), or a pytree like ``params`` with a scalar (or an array that
            broadcasts to the leaf) per leaf (the learned "fine" version,
            :func:`init_shape_params`). Entries of unchosen leaves are ignored.
        b: the shape ``b``, given like ``a``.

    Returns:
        A pytree like ``params``: companded chosen leaves (computed in float32 or wider, cast
        back to the leaf's dtype), other leaves unchanged.
    """
    return _leafwise(compand, params, mask, a, b)


def init_raw_params(params, *, mask=None, a=1.0, b=1.0):
    """Raw weights whose companded values are ``params``: ``v = b tan(w / a)`` (Eq. 4).

    The paper initializes this way in every experiment, so that the reparameterized network
    starts from the ordinary initialization (e.g. Kaiming). Arguments as in
    :func:`weight_compander`; chosen leaves outside ``(-a pi / 2, a pi / 2)`` become NaN.

    Returns:
        A pytree like ``params`` with ``weight_compander(result, mask=mask, a=a, b=b)`` equal
        to ``params`` (up to rounding).
    """
    return _leafwise(compand_inverse, params, mask, a, b)


def init_shape_params(params, *, a=LEARNED_INIT["a"], b=LEARNED_INIT["b"]):
    """Trainable per-layer shapes for the learned ("fine") weight compander (Section III-B).

    Args:
        params: the parameter pytree.
        a: initial value of ``a`` (the paper's best: a = 0.5, Section IV-E).
        b: initial value of ``b`` (the paper's best: b = 1.0, Section IV-E).

    Returns:
        ``{"a": tree, "b": tree}``: float32 scalars, one per leaf of ``params`` (a layer's
        kernel is one leaf); pass them as ``weight_compander(raw, **shape)``. Entries of leaves
        the mask leaves out get no gradient. Do not apply weight decay to them.
    """
    a = _hyper(a, "a").astype(jnp.float32)
    b = _hyper(b, "b").astype(jnp.float32)
    return {"a": jax.tree.map(lambda _: a, params), "b": jax.tree.map(lambda _: b, params)}
