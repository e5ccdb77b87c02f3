"""Proximal operators of the L1 and group-lasso penalties, as optax transformations.

Proximal gradient descent (ISTA; Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding
Algorithm for Linear Inverse Problems", SIAM J. Imaging Sci. 2009, Eq. 1.4) takes the
gradient step on the smooth loss, then applies the penalty's proximal operator with the same
step size ``eta_t``:

    theta_{t+1} = prox_{eta_t lambda R}(theta_t - eta_t grad L(theta_t)).

For ``R = ||.||_1`` the operator is soft thresholding, ``sign(z) max(|z| - eta_t lambda, 0)``;
for the group lasso ``R = sum_g ||theta_g||_2`` (Yuan & Lin, "Model selection and estimation
in regression with grouped variables", JRSS-B 2006) it is group soft thresholding,
``z_g max(0, 1 - eta_t lambda / ||z_g||_2)``. Unlike adding ``lambda * sign(theta)`` to the
gradient, these set weights (or whole groups) exactly to zero.

Chain them after the transformation that makes the gradient step, passing the same step
size: ``optax.chain(optax.sgd(lr), prox_l1(lam, learning_rate=lr))``. With a preconditioned
optimizer (Adam) the step is not ``eta_t grad``, and the same chain is the usual heuristic,
not an exact proximal method.

Groups: the group lasso's groups are the slices of a kernel along ``axis`` (default ``-1``:
one group per output unit in Flax's layout, ``[in, out]`` for dense and
``[kh, kw, in, out]`` for convolution kernels; each group holds every weight feeding that
unit). The penalty is unweighted, ``sum_g ||theta_g||`` (no ``sqrt(|g|)`` factor), the
convention of ``jaxreg.regularizers.weights.group_lasso``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import leaf_mask


def _proximal(shrink: Callable, strength, learning_rate, mask
              ) -> optax.GradientTransformation:
    step_size = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("a proximal transformation needs `params` in update")
        # In float32 or wider: float64 for float64 parameters (jax_enable_x64).
        wide = jnp.promote_types(
            jnp.result_type(*[p.dtype for p in jax.tree.leaves(params)
                              if jnp.issubdtype(p.dtype, jnp.floating)] or [jnp.float32]),
            jnp.float32)
        threshold = jnp.asarray(step_size(state.count)).astype(wide) * jnp.asarray(
            strength).astype(wide)
        chosen = leaf_mask(mask, params)

        def one(u, p, on):
            if not on:
                return u
            if not jnp.issubdtype(p.dtype, jnp.floating):
                raise TypeError(f"params must be floating arrays, got dtype {p.dtype}")
            leaf = jnp.promote_types(jnp.promote_types(p.dtype, u.dtype), jnp.float32)
            z = p.astype(leaf) + u.astype(leaf)
            return (shrink(z, threshold.astype(leaf)) - p.astype(leaf)).astype(u.dtype)

        new = jax.tree.map(one, updates, params, chosen)
        return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def soft_threshold(z, threshold):
    """``sign(z) * max(|z| - threshold, 0)``: the proximal operator of ``threshold * ||.||_1``."""
    return jnp.sign(z) * jnp.maximum(jnp.abs(z) - threshold, 0.0)


def group_soft_threshold(z, threshold, *, axis: int = -1):
    """``z_g * max(0, 1 - threshold / ||z_g||)`` for the slices ``z_g`` along ``axis``: the
    proximal operator of ``threshold * sum_g ||z_g||_2`` (0 for a group of norm 0)."""
    axis = axis % z.ndim
    others = tuple(i for i in range(z.ndim) if i != axis)
    squared = jnp.sum(z**2, axis=others, keepdims=True)
    safe = jnp.sqrt(jnp.where(squared > 0, squared, 1.0))
    factor = jnp.where(squared > 0, jnp.maximum(0.0, 1.0 - threshold / safe), 0.0)
    return z * factor


def prox_l1(strength, learning_rate, *, mask: Any = None) -> optax.GradientTransformation:
    """Soft thresholding by ``eta_t * strength`` after the gradient step (see the module).

    Args:
        strength: lambda, the L1 coefficient (a float or a traced array).
        learning_rate: the step size ``eta_t`` of the preceding gradient step: a float or a
            schedule ``count -> eta_t`` (the same one given to the optimizer).
        mask: a pytree of booleans matching the parameters, or a function of the parameters
            returning one; default: leaves with at least two dimensions (kernels only).

    Returns:
        An ``optax.GradientTransformation`` that needs ``params`` in ``update``.
    """
    return _proximal(soft_threshold, strength, learning_rate, mask)


def prox_group_lasso(strength, learning_rate, *, axis: int = -1, mask: Any = None
                     ) -> optax.GradientTransformation:
    """Group soft thresholding by ``eta_t * strength`` after the gradient step, one group per
    slice along ``axis`` (default: output units of Flax kernels); arguments as ``prox_l1``.
    Leaves with one dimension (selected by ``mask``) form a single group."""
    def shrink(z, threshold):
        if z.ndim < 2:
            return group_soft_threshold(z.reshape(1, -1), threshold, axis=0).reshape(z.shape)
        return group_soft_threshold(z, threshold, axis=axis)

    return _proximal(shrink, strength, learning_rate, mask)
