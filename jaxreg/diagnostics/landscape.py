"""The loss along lines and planes in parameter space.

* ``filter_normalized_direction`` and ``loss_landscape``: Li, Xu, Taylor, Studer & Goldstein,
  "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, arXiv:1712.09913, Sec. 4:
  a Gaussian direction whose every filter is rescaled to the norm of the matching filter of
  the weights, and the loss on the 1-D line or 2-D plane it (and a second one) spans.
* ``linear_mode_connectivity``: the loss on the segment between two solutions and its
  barrier (Frankle, Dziugaite, Roy & Carbin, ICML 2020, arXiv:1912.05671, Def. 1), for all
  the parameters or, with ``mask``, only some layers (the layer-wise connectivity of Adilova,
  Andriushchenko, Kamp, Fischer & Jaggi, ICLR 2024, arXiv:2307.06966).

The losses are evaluated with ``jax.lax.map`` over the points, so each call is one program.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxreg._validate import every_leaf, leaf_mask, tree_like

LossFn = Callable[[Any], jax.Array]


def filter_normalized_direction(key: jax.Array, params):
    """A random direction shaped like ``params`` with filter-wise normalization (Li et al.
    2018, Eq. 1): ``d_i <- d_i / ||d_i|| * ||theta_i||`` for every filter ``i``, the slices
    along a kernel's last (output) axis, which are a PyTorch weight's rows. Leaves with fewer
    than two dimensions (biases, normalization scales) get a zero direction, as the
    reference's default ``ignore='biasbn'``.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))

    def one(k, p):
        p = jnp.asarray(p)
        if p.ndim < 2:
            return jnp.zeros_like(p)
        d = jax.random.normal(k, p.shape, p.dtype)
        axes = tuple(range(p.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        p_norm = jnp.sqrt(jnp.sum(jnp.square(p), axis=axes, keepdims=True))
        return d / jnp.maximum(d_norm, jnp.finfo(p.dtype).tiny) * p_norm

    return jax.tree.unflatten(treedef, [one(k, p) for k, p in zip(keys, leaves)])


def _moved(params, steps, directions):
    return jax.tree.map(lambda p, *ds: p + sum(s * d for s, d in zip(steps, ds)), params,
                        *directions)


def loss_landscape(loss_fn: LossFn, params, key: jax.Array, *, span: float = 1.0,
                   num_points: int = 21, dims: int = 1) -> dict[str, jax.Array]:
    """``loss_fn`` on a 1-D line or 2-D plane through ``params`` along filter-normalized
    random directions (Li et al. 2018, Sec. 4), at ``num_points`` steps per axis in
    ``[-span, span]``.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params: the centre.
        key: PRNG key for the directions.
        span: the half-width of each axis, in units of the direction (1 in the paper).
        num_points: points per axis (static).
        dims: 1 for a line, 2 for a plane (static).

    Returns:
        ``{"steps": [num_points], "losses": [num_points] or [num_points, num_points],
        "directions": a tuple of ``dims`` pytrees}``; the losses of a plane are indexed
        ``[first step, second step]``.
    """
    if dims not in (1, 2):
        raise ValueError(f"`dims` must be 1 or 2, got {dims}.")
    if num_points < 2:
        raise ValueError(f"`num_points` must be at least 2, got {num_points}.")
    directions = tuple(filter_normalized_direction(k, params)
                       for k in jax.random.split(key, dims))
    steps = jnp.linspace(-span, span, num_points)
    if dims == 1:
        points = steps[:, None]
    else:
        points = jnp.stack(jnp.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
    losses = jax.lax.map(lambda s: loss_fn(_moved(params, s, directions)), points)
    return {"steps": steps, "losses": losses.reshape((num_points,) * dims),
            "directions": directions}


def linear_mode_connectivity(loss_fn: LossFn, params_a, params_b, *, num_points: int = 11,
                             mask: Any = None) -> dict[str, jax.Array]:
    """The loss on ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b`` and its barrier,
    ``max_alpha L(theta(alpha)) - ((1 - alpha) L(theta(0)) + alpha L(theta(1)))``
    (Frankle et al. 2020, Def. 1).

    With ``mask``, only the chosen leaves move (the others stay at ``theta_a``): the path of
    layer-wise connectivity (Adilova et al. 2024), whose barrier is taken, as above, against
    the straight line between the losses at the path's own ends.

    Args:
        loss_fn: ``loss_fn(params) -> scalar``.
        params_a: the first solution.
        params_b: the second, shaped like it.
        num_points: values of ``alpha`` evenly spaced in [0, 1], ends included (static).
        mask: which leaves to interpolate (default: all; a pytree of booleans or a function
            of the parameters returning one).

    Returns:
        ``{"alphas": [num_points], "losses": [num_points], "barrier": scalar}``.
    """
    if num_points < 2:
        raise ValueError(f"`num_points` must be at least 2, got {num_points}.")
    tree_like(params_b, params_a, "params_b")
    chosen = leaf_mask(mask, params_a, default=every_leaf)
    alphas = jnp.linspace(0.0, 1.0, num_points)

    def at(alpha):
        return loss_fn(jax.tree.map(
            lambda a, b, on: (1 - alpha) * a + alpha * b if on else a,
            params_a, params_b, chosen))

    losses = jax.lax.map(at, alphas)
    chord = (1 - alphas) * losses[0] + alphas * losses[-1]
    return {"alphas": alphas, "losses": losses, "barrier": jnp.max(losses - chord)}


def plot_landscape(result: dict, ax=None):
    """Draws a ``loss_landscape`` result on a matplotlib axes (a line, or filled contours of a
    plane as in Li et al.'s figures); returns the axes."""
    import matplotlib.pyplot as plt

    ax = plt.gca() if ax is None else ax
    steps, losses = result["steps"], result["losses"]
    if losses.ndim == 1:
        ax.plot(steps, losses)
        ax.set_xlabel("step along the filter-normalized direction")
        ax.set_ylabel("loss")
    else:
        filled = ax.contourf(steps, steps, losses.T, levels=30)
        ax.figure.colorbar(filled, ax=ax, label="loss")
        ax.set_xlabel("first direction")
        ax.set_ylabel("second direction")
    return ax
