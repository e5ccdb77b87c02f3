"""MultiAdam: one set of Adam moments per loss group, combined into one step.

With per-group gradients ``g_k`` (the leading axis of the Jacobian the transformation
receives; a group's gradient is that of the sum of its losses) and group weights ``w_k``
(``1/m`` by default), at step ``t``:

    m_k <- b1 m_k + (1 - b1) g_k;   v_k <- b2 v_k + (1 - b2) g_k^2
    update = -lr / (1 - b1^t) * sum_k w_k m_k / (sqrt(v_k) / sqrt(1 - b2^t) + eps)

so each group is normalised by its own second moment, which balances losses of very
different scales (PINN residual and boundary terms).

Paper: Yao, Su, Hao, Liu, Zhu, "MultiAdam: Parameter-wise Scale-invariant Optimizer for
Multiscale Training of Physics-informed Neural Networks" (ICML 2023), arXiv:2306.02816.
Matches ``i207M/PINNacle`` ``src/optimizer/multiadam.py`` (``MultiAdam``, functional ``sadam``):
defaults ``betas=(0.99, 0.99)``, ``eps=1e-8``, ``lr=1e-3``, group weights ``1/m``.

Built from optax: ``optax.scale_by_adam`` vmapped over the objective axis, the weighted sum,
then ``optax.scale_by_learning_rate``. Optax's Adam step ``m_hat / (sqrt(v_hat) + eps)`` puts
``eps`` where the reference does (after the bias-corrected square root, none inside it), so it
is the reference's update term for term; only the float rounding order of the bias corrections
differs (``sqrt(v / bc2)`` for ``sqrt(v) / sqrt(bc2)``, ``1 / bc1`` applied per group).
A learning-rate schedule is called with the number of steps taken (0 at the first step, the
optax convention; the reference's ``ParamScheduler`` counts from 1). Not ported: the
reference's ``weight_decay``, ``amsgrad``, ``maximize``, ``agg_momentum`` and loss-driven
schedules of betas and group weights.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import (
    accumulation_dtype,
    check_objectives,
    combine,
    initial_weights,
)
from jaxreg.multiobjective.base import num_objectives as count_objectives


class MultiAdamState(NamedTuple):
    """``weights``: NaN (the update is not a combination of the current gradients);
    ``adam``: ``optax.ScaleByAdamState`` with a leading objective axis on every field;
    ``schedule``: the learning rate's state."""
    weights: jax.Array
    adam: optax.ScaleByAdamState
    schedule: optax.OptState


def per_objective(inner: optax.GradientTransformation,
                  num_objectives: int) -> optax.GradientTransformation:
    """``inner`` applied to each objective's gradient, with its own state (``jax.vmap``).

    The updates are Jacobians (leaves ``[num_objectives, *shape]``); the state is ``inner``'s
    with a leading objective axis on every leaf.
    """
    def init(params):
        return jax.vmap(lambda _: inner.init(params))(jnp.arange(num_objectives))

    def update(updates, state, params=None):
        return jax.vmap(inner.update, in_axes=(0, 0, None))(updates, state, params)

    return optax.GradientTransformation(init, update)


def _group_weights(group_weights, m):
    if group_weights is None:
        return jnp.full((m,), 1.0 / m, jnp.float32)
    weights = jnp.asarray(group_weights, jnp.float32)
    if weights.shape != (m,):
        raise ValueError(f"`group_weights` must have shape ({m},) (one per objective), got "
                         f"{weights.shape}")
    return weights


def multi_adam(learning_rate: optax.ScalarOrSchedule = 1e-3, *, b1=0.99, b2=0.99, eps=1e-8,
               group_weights=None, num_objectives: int | None = None
               ) -> optax.GradientTransformation:
    """MultiAdam as an optax transformation taking the Jacobian (see the module docstring).

    It is the whole optimizer: give it to ``make_step(..., aggregator=...)`` followed by
    ``optax.identity()``.

    Args:
        learning_rate: a number, a traced array or an optax schedule.
        b1: decay of the first moments.
        b2: decay of the second moments.
        eps: added to the bias-corrected root of the second moments.
        group_weights: one weight per objective (default ``1 / num_objectives`` each).
        num_objectives: the number of loss groups m (required: the moments are kept per group).

    Returns:
        An ``optax.GradientTransformation`` taking the Jacobian (leaves ``[m, *shape]``) and
        returning the parameter update.
    """
    if not num_objectives:
        raise ValueError("multi_adam keeps Adam moments per loss group: give "
                         f"`num_objectives` (a positive int), got {num_objectives!r}")
    m = num_objectives
    weights = _group_weights(group_weights, m)
    adam = per_objective(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), m)
    scale = optax.scale_by_learning_rate(learning_rate)

    def init(params):
        return MultiAdamState(initial_weights(m, accumulation_dtype(params)), adam.init(params),
                              scale.init(params))

    def update(updates, state, params=None):
        check_objectives("multi_adam", m, count_objectives(updates))
        per_group, adam_state = adam.update(updates, state.adam, params)
        step, schedule_state = scale.update(combine(weights, per_group), state.schedule, params)
        return step, MultiAdamState(state.weights, adam_state, schedule_state)

    return optax.GradientTransformation(init, update)
