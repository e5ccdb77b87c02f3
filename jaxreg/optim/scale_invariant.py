"""AdamP and SGDP: Adam and SGD that stop growing the norm of scale-invariant weights.

Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights" (ICLR 2021), arXiv:2006.08217, Algorithms 1-2. For every weight with more than one
dimension, the step ``p`` (Adam's ``m / (sqrt(v) + eps)``, or SGD's momentum buffer) is
compared with the weight ``w``: if every output channel's gradient is nearly orthogonal to
that channel's weights (``max |cos(g, w)| < delta / sqrt(d)``, ``d`` the channel's size), the
weight is taken to be scale-invariant and the radial part of the step is removed
channel-wise, ``p <- p - w_hat <w_hat, p>``; failing that, the same test and projection are
tried on the whole tensor. Projected weights get ``wd_ratio`` times the (decoupled) weight
decay.

Matches the official ``adamp`` package (clovaai/AdamP 0.3.0) step for step, with one
difference of layout: PyTorch weights keep output channels first, Flax kernels last, so the
channel axis is ``channel_axis`` (default -1, Flax's ``Dense`` and ``Conv`` kernels; with
``optax.inject_hyperparams`` list it in ``static_args``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def _channels(x, axis):
    """``x`` as ``[channels, rest]`` with the channel axis first."""
    moved = jnp.moveaxis(x, axis, 0)
    return moved.reshape(moved.shape[0], -1)


def _cosine(x, y, eps):
    """|cos| row by row, as ``torch.nn.functional.cosine_similarity(x, y, dim=1, eps)``."""
    norms = jnp.maximum(jnp.linalg.norm(x, axis=1), eps) * jnp.maximum(
        jnp.linalg.norm(y, axis=1), eps)
    return jnp.abs(jnp.sum(x * y, axis=1) / norms)


def _project_rows(weight, step, eps):
    """``step - w_hat <w_hat, step>`` row by row, ``w_hat = w / (||w|| + eps)``."""
    unit = weight / (jnp.linalg.norm(weight, axis=1, keepdims=True) + eps)
    return step - unit * jnp.sum(unit * step, axis=1, keepdims=True)


def project_scale_invariant(param, grad, step, *, delta, wd_ratio, eps, channel_axis=-1):
    """The projected step and the weight-decay ratio for one weight (see the module).

    Weights with fewer than two dimensions are returned unchanged with ratio 1.
    """
    if param.ndim < 2:
        return step, jnp.ones((), param.dtype)
    views = [(lambda x: _channels(x, channel_axis), lambda x: _unchannels(x, param.shape,
                                                                         channel_axis)),
             (lambda x: x.reshape(1, -1), lambda x: x.reshape(param.shape))]
    result, ratio = step, jnp.ones((), param.dtype)
    for view, unview in reversed(views):  # the channel view, tried first, wins
        w, g = view(param), view(grad)
        invariant = jnp.max(_cosine(g, w, eps)) < delta / math.sqrt(w.shape[1])
        projected = unview(_project_rows(w, view(step), eps))
        result = jnp.where(invariant, projected, result)
        ratio = jnp.where(invariant, jnp.asarray(wd_ratio, param.dtype), ratio)
    return result, ratio


def _unchannels(x, shape, axis):
    moved = list(shape)
    channels = moved.pop(axis % len(shape))
    return jnp.moveaxis(x.reshape(channels, *moved), 0, axis % len(shape))


def _decayed(steps, params, grads, *, weight_decay, delta, wd_ratio, eps, channel_axis,
             decay_scale=1.0):
    """``(projected steps, projected steps + weight_decay * ratio * decay_scale * w)``."""
    def one(step, param, grad):
        projected, ratio = project_scale_invariant(
            param, grad, step, delta=delta, wd_ratio=wd_ratio, eps=eps,
            channel_axis=channel_axis)
        return projected, projected + weight_decay * ratio * decay_scale * param

    pairs = jax.tree.map(one, steps, params, grads)
    is_pair = lambda x: isinstance(x, tuple)
    return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
            jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


class ScaleByAdamPState(NamedTuple):
    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adamp(b1=0.9, b2=0.999, eps=1e-8, *, weight_decay=0.0, delta=0.1, wd_ratio=0.1,
                   nesterov=False, channel_axis=-1) -> optax.GradientTransformation:
    """AdamP's direction before the learning rate: the (projected) Adam step plus the
    decoupled weight decay ``weight_decay * ratio * w``. Needs ``params``."""
    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAdamPState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adamp needs `params` in update (it projects against the weights)")
        count = state.count + 1
        mu = optax.tree.update_moment(grads, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)

        def step(m, v, g):
            # Bias corrections in float32 or wider: float64 for float64 moments (x64).
            t = count.astype(jnp.promote_types(m.dtype, jnp.float32))
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            numerator = b1 * m + (1 - b1) * g if nesterov else m
            # in the gradient's dtype, as optax's Adam (bfloat16 stays bfloat16)
            return (numerator / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps) / bc1).astype(g.dtype)

        steps = jax.tree.map(step, mu, nu, grads)
        _, updates = _decayed(steps, params, grads, weight_decay=weight_decay, delta=delta,
                              wd_ratio=wd_ratio, eps=eps, channel_axis=channel_axis)
        return updates, ScaleByAdamPState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def adamp(learning_rate, b1=0.9, b2=0.999, eps=1e-8, *, weight_decay=0.0, delta=0.1,
          wd_ratio=0.1, nesterov=False, channel_axis=-1) -> optax.GradientTransformation:
    """AdamP (``adamp.AdamP``); ``learning_rate`` may be a schedule and scales the decay too."""
    return optax.chain(
        scale_by_adamp(b1, b2, eps, weight_decay=weight_decay, delta=delta, wd_ratio=wd_ratio,
                       nesterov=nesterov, channel_axis=channel_axis),
        optax.scale_by_learning_rate(learning_rate))


class ScaleBySGDPState(NamedTuple):
    momentum: optax.Updates


def scale_by_sgdp(momentum=0.0, dampening=0.0, *, weight_decay=0.0, nesterov=False, eps=1e-8,
                  delta=0.1, wd_ratio=0.1, channel_axis=-1) -> optax.GradientTransformation:
    """SGDP's direction before the learning rate: the (projected) momentum step plus
    ``weight_decay * ratio / (1 - momentum) * w``, as the official code (which also keeps the
    projection in the momentum buffer when ``nesterov`` is off). Needs ``params``."""
    def init(params):
        return ScaleBySGDPState(jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("sgdp needs `params` in update (it projects against the weights)")
        buffers = jax.tree.map(lambda b, g: momentum * b + (1 - dampening) * g,
                               state.momentum, grads)
        steps = (jax.tree.map(lambda g, b: g + momentum * b, grads, buffers) if nesterov
                 else buffers)
        projected, updates = _decayed(steps, params, grads, weight_decay=weight_decay,
                                      delta=delta, wd_ratio=wd_ratio, eps=eps,
                                      channel_axis=channel_axis,
                                      decay_scale=1.0 / (1.0 - momentum))
        # The official code projects the step in place, and without Nesterov the step *is*
        # the momentum buffer: the buffer keeps the projection (the paper's Algorithm 2
        # projects only the step). Followed here, to match the package step for step.
        return updates, ScaleBySGDPState(buffers if nesterov else projected)

    return optax.GradientTransformation(init, update)


def sgdp(learning_rate, momentum=0.0, dampening=0.0, *, weight_decay=0.0, nesterov=False,
         eps=1e-8, delta=0.1, wd_ratio=0.1, channel_axis=-1) -> optax.GradientTransformation:
    """SGDP (``adamp.SGDP``); ``learning_rate`` may be a schedule and scales the decay too."""
    return optax.chain(
        scale_by_sgdp(momentum, dampening, weight_decay=weight_decay, nesterov=nesterov,
                      eps=eps, delta=delta, wd_ratio=wd_ratio, channel_axis=channel_axis),
        optax.scale_by_learning_rate(learning_rate))
