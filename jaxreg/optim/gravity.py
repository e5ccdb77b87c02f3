"""The Gravity optimizer: a gradient step bounded per tensor, averaged with a moving average.

Bahrami & Zadeh, "Gravity Optimizer: a Kinematic Approach on Optimization in Deep
Learning", 2021, arXiv:2101.09192 (Algorithm 1; Eqs. 20-30). For each weight tensor ``W``
with gradient ``G``::

    m       = 1 / max|G|                                 (Max-Step Grad, Eq. 20)
    zeta    = G / (1 + (G / m)^2)                        (element-wise, Eq. 21)
    beta_t  = (beta t + 1) / (t + 2)                     (Eq. 26)
    V_t     = beta_t V_{t-1} + (1 - beta_t) zeta         (Eq. 22)
    W      <- W - l V_t                                  (Eq. 23)

with ``V_0 ~ N(0, sigma^2)``, ``sigma = alpha / l`` (Eq. 27, 30) and the paper's recommended
``l = 0.1``, ``alpha = 0.01``, ``beta = 0.9`` (Sec. 2, also the official defaults).
``(G / m)^2`` is computed as ``(G max|G|)^2``, so a zero gradient gives a zero step.

Matches the official Keras implementation (dariush-bahrami/gravity.optimizer,
``gravity/optimizers.py`` and ``implementations/gravity_optimizer_keras.py``), in which ``t``
is the number of steps already taken, so the first step has ``beta_t = 1/2`` as the paper's
Eq. 28 and Table 2 state. The paper's Algorithm 1 increments ``t`` before computing
``beta_t``, as the later PyTorch implementation of the same repository does: pass
``first_step=1`` for that variant (checked against it step for step).

The initial velocity is kept as its standard-normal draw ``z`` and the moving average of the
``zeta`` terms separately, ``V_t = (prod_s beta_s) (alpha / l) z + u_t``, which is the same
recursion; this lets ``alpha`` and ``l`` be set after ``init`` (``optax.inject_hyperparams``,
``jaxreg.train.grid``) and still shape the initial velocity. With a schedule as the learning
rate, ``sigma`` uses its value at step 0 (as the Keras code's ``learning_rate``); an
injected learning rate is the current one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import accumulation_dtype


class GravityState(NamedTuple):
    """``count``: steps taken; ``noise``: the initial velocity's standard-normal draw ``z``;
    ``average``: the moving average of the ``zeta`` terms ``u_t``; ``decay``: the product of
    the ``beta_t`` so far, the weight left on the initial velocity."""
    count: jax.Array
    noise: Any
    average: Any
    decay: jax.Array


def _check(name: str, value, low: float, high: float | None = None):
    if isinstance(value, (int, float)) and not (value >= low and (high is None or value < high)):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"`{name}` must be {bound}, got {value}")


def gravity(learning_rate: Any = 0.1, *, alpha: Any = 0.01, beta: Any = 0.9,
            key: jax.Array | int | None = None, first_step: int = 0
            ) -> optax.GradientTransformation:
    """The Gravity optimizer (Bahrami & Zadeh 2021, Algorithm 1; see the module).

    Args:
        learning_rate: ``l``, a number or a schedule of the step count (default 0.1).
        alpha: the initial velocity's scale, ``sigma = alpha / l`` (default 0.01).
        beta: the moving-average rate, in [0, 1) (default 0.9).
        key: PRNG key (or integer seed) for the initial velocity; None is seed 0. With
            ``optax.inject_hyperparams``, list ``"key"`` in ``static_args`` if you pass it.
        first_step: ``t`` at the first update: 0 as the official Keras code and Eq. 28
            (``beta_t = 1/2`` first), 1 as Algorithm 1 and the PyTorch implementation.

    Returns:
        An ``optax.GradientTransformation`` whose updates include the learning rate.
    """
    _check("learning_rate", learning_rate, 0.0)
    _check("alpha", alpha, 0.0)
    _check("beta", beta, 0.0, 1.0)
    if isinstance(first_step, (int, float)) and first_step not in (0, 1):
        raise ValueError(f"`first_step` must be 0 or 1, got {first_step!r}")

    def _wide(dtype):
        return jnp.promote_types(dtype, jnp.float32)

    def rate(count):
        return learning_rate(count) if callable(learning_rate) else learning_rate

    def init(params):
        seed = key if key is not None else 0
        seed = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
        # Drawn in float32 (the same velocity in any precision), kept in float32 or wider
        # (float64 for float64 parameters under jax_enable_x64).
        noise = jax.tree.map(
            lambda z, p: z.astype(_wide(p.dtype)),
            optax.tree.random_like(seed, params, jax.random.normal, dtype=jnp.float32), params)
        return GravityState(count=jnp.zeros([], jnp.int32), noise=noise,
                            average=jax.tree.map(lambda p: jnp.zeros(p.shape, _wide(p.dtype)),
                                                 params),
                            decay=jnp.ones([], accumulation_dtype(params)))

    def update(updates, state, params=None):
        del params
        t = (state.count + first_step).astype(state.decay.dtype)
        beta_t = (beta * t + 1.0) / (t + 2.0)

        def bounded(g):
            g = g.astype(_wide(g.dtype))
            return g / (1.0 + jnp.square(g * jnp.max(jnp.abs(g))))

        average = jax.tree.map(lambda u, g: beta_t * u + (1.0 - beta_t) * bounded(g),
                               state.average, updates)
        decay = beta_t * state.decay
        step_rate, first_rate = rate(state.count), rate(0)
        # l_t V_t = l_t u_t + (l_t / l_0) alpha decay z, with sigma = alpha / l_0 (0 if l_0 = 0).
        nonzero = first_rate != 0
        ratio = jnp.where(nonzero, step_rate / jnp.where(nonzero, first_rate, 1.0), 0.0)
        new = jax.tree.map(
            lambda g, u, z: (-(step_rate * u + ratio * alpha * decay * z)).astype(g.dtype),
            updates, average, state.noise)
        return new, GravityState(count=optax.safe_increment(state.count), noise=state.noise,
                                 average=average, decay=decay)

    return optax.GradientTransformation(init, update)
