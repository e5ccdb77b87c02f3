"""Decoupled weight decay, toward zero or toward anchor weights, and the perpendicular
gradient: transformations that act on the update using the current weights.

``decoupled_weight_decay`` is the decay of Loshchilov & Hutter ("Decoupled Weight Decay
Regularization", ICLR 2019, arXiv:1711.05101, Algorithms 1-2, line 12):
``theta <- theta - eta_t (alpha * step + lambda theta)``, where ``eta_t`` is the schedule
multiplier and ``alpha`` the base learning rate. The decay is multiplied by the schedule
only. ``optax.adamw(learning_rate, weight_decay=lambda)`` instead subtracts
``learning_rate * lambda * theta`` (PyTorch's convention): its effective decay is the
paper's ``lambda`` times ``alpha``, so the best ``lambda`` moves with the learning rate,
which is the coupling the paper set out to remove. Chain it after a transformation that
already includes the learning rate: ``optax.chain(optax.adam(lambda t: alpha * eta(t)),
decoupled_weight_decay(lambda_, schedule=eta))``.

``decay_to_anchor`` decays toward fixed weights instead of zero,
``- eta_t lambda (theta - theta_0)`` (the AdamR variant of DARE, Yu et al. "Language Models
are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch", 2024,
arXiv:2311.03099: it keeps the fine-tuned deltas small so that they can be dropped).

``orthogonal_gradient`` is the perpendicular gradient of Prieto et al. ("Grokking at the
Edge of Numerical Stability", 2025, arXiv:2501.04697, Eq. 9): each weight tensor's gradient
loses its component along the weights, ``g - (<w, g> / <w, w>) w``, and is rescaled to the
original gradient's norm (as the official ``OrthoGrad`` wrapper does), so the optimizer
cannot reduce the loss by scaling the weights up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import leaf_mask


def _decay_toward(weight_decay, schedule, mask, anchor_of) -> optax.GradientTransformation:
    schedule = schedule if schedule is not None else (lambda count: 1.0)

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("weight decay needs `params` in update")
        chosen = leaf_mask(mask, params)
        factor = schedule(state.count) * weight_decay
        anchors = anchor_of(params)

        def one(u, p, a, on):
            return u - factor * (p - a) if on else u

        new = jax.tree.map(one, updates, params, anchors, chosen)
        return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def decoupled_weight_decay(weight_decay, *, schedule: Callable | None = None,
                           mask: Any = None) -> optax.GradientTransformation:
    """Adds ``-schedule(t) * weight_decay * theta`` to the update (see the module).

    Args:
        weight_decay: lambda (a float or a traced array).
        schedule: ``eta_t`` as a function of the step count (default 1: a constant rate).
        mask: a pytree of booleans or a function of the parameters returning one; default:
            leaves with at least two dimensions (kernels, not biases or normalisation scales).
    """
    return _decay_toward(weight_decay, schedule, mask, lambda params: jax.tree.map(
        jnp.zeros_like, params))


def decay_to_anchor(weight_decay, anchor, *, schedule: Callable | None = None,
                    mask: Any = None) -> optax.GradientTransformation:
    """Adds ``-schedule(t) * weight_decay * (theta - anchor)``: decay toward ``anchor`` (the
    pre-trained weights, for fine-tuning), with the same arguments as
    ``decoupled_weight_decay``."""
    return _decay_toward(weight_decay, schedule, mask, lambda params: anchor)


def orthogonal_gradient(*, eps: float = 1e-30, mask: Any = None
                        ) -> optax.GradientTransformation:
    """The perpendicular gradient (see the module), tensor by tensor; chain it first.

    ``mask`` (as in ``decoupled_weight_decay``; default: every leaf, as the official code)
    selects the tensors it applies to. Needs ``params``.
    """
    def update(updates, state, params=None):
        if params is None:
            raise ValueError("orthogonal_gradient needs `params` in update")
        chosen = mask(params) if callable(mask) else (
            mask if mask is not None else jax.tree.map(lambda _: True, params))

        def one(g, w, on):
            if not on:
                return g
            wide = jnp.promote_types(jnp.promote_types(g.dtype, w.dtype), jnp.float32)
            g32, w32 = g.astype(wide), w.astype(wide)  # float64 stays float64 (x64)
            radial = jnp.vdot(w32, g32) / (jnp.vdot(w32, w32) + eps)
            perpendicular = g32 - radial * w32
            scale = jnp.linalg.norm(g32) / (jnp.linalg.norm(perpendicular) + eps)
            return (perpendicular * scale).astype(g.dtype)

        return jax.tree.map(one, updates, params, chosen), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
