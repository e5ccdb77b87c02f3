"""Byzantine-robust aggregators: Krum (and Multi-Krum) and the coordinate-wise trimmed mean.

Both come from distributed learning, where some of the m rows of the Jacobian (the workers'
gradients) may be adversarial; as multi-objective aggregators they ignore the objectives
whose gradients are outliers.

Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017, arXiv:1703.02757, Section 4) scores each gradient by the sum of its
distances to its ``m - f - 2`` nearest other gradients and selects the lowest-scored one;
Multi-Krum averages the ``n_selected`` lowest-scored ones. The paper sums squared distances;
torchjd, and so jaxreg, sums the distances themselves (the choice can differ).
Distances come from the Gramian, ``||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij``, so Krum is a
:class:`~jaxreg.multiobjective.base.Weighting`.

The trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018, arXiv:1803.01498, Definition 2) sorts each coordinate over
the m gradients, drops the ``b`` largest and ``b`` smallest and averages the rest. It works
coordinate by coordinate, so it needs the Jacobian itself (its logged weights are NaN).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg._validate import static_int
from jaxreg.multiobjective.base import (
    accumulation_dtype,
    from_weighting,
    initial_weights,
    stateless,
)
from jaxreg.multiobjective.base import num_objectives as count_objectives


def krum_weights(gram: jax.Array, *, n_byzantine: int = 0, n_selected: int = 1) -> jax.Array:
    """(Multi-)Krum weights from the Gramian: ``1 / n_selected`` on the ``n_selected``
    gradients with the smallest scores, 0 elsewhere.

    The score of gradient i is the sum of its Euclidean distances to its ``m - f - 2``
    nearest other gradients (``f = n_byzantine``), as torchjd ``KrumWeighting`` computes it
    (the paper's score, Section 4, sums the squared distances). Needs ``m >= f + 3`` and
    ``m >= n_selected``; ties go to the lower index.
    """
    m = gram.shape[0]
    n_byzantine = static_int(n_byzantine, "n_byzantine", low=0)
    n_selected = static_int(n_selected, "n_selected", low=1)
    if m < n_byzantine + 3:
        raise ValueError(f"krum with n_byzantine={n_byzantine} needs at least "
                         f"{n_byzantine + 3} objectives (n_byzantine + 3), got {m}")
    if m < n_selected:
        raise ValueError(f"krum with n_selected={n_selected} needs at least {n_selected} "
                         f"objectives, got {m}")
    diag = jnp.diag(gram)
    distances = jnp.sqrt(jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0))
    n_closest = m - n_byzantine - 2
    # the smallest distance of each row is (up to rounding) its distance to itself
    nearest = jnp.sort(distances, axis=1)[:, 1:n_closest + 1]
    scores = jnp.sum(nearest, axis=1)
    _, chosen = jax.lax.top_k(-scores, n_selected)
    return jnp.sum(jax.nn.one_hot(chosen, m, dtype=gram.dtype), axis=0) / n_selected


def krum(*, n_byzantine: int = 0, n_selected: int = 1, num_objectives: int | None = None
         ) -> optax.GradientTransformation:
    """Krum (``n_selected = 1``) or Multi-Krum: the update is the gradient (the mean of the
    ``n_selected`` gradients) closest to its ``m - n_byzantine - 2`` nearest neighbours.

    Paper: Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent" (NeurIPS 2017), arXiv:1703.02757, the Krum rule of its Section 4 (and its
    Multi-Krum variant). Matches
    torchjd ``Krum`` (scores from unsquared distances). torchjd requires ``n_byzantine``;
    here it defaults to 0 (Krum then scores each gradient by its ``m - 2`` nearest
    neighbours). Needs ``m >= n_byzantine + 3`` objectives (an error at trace time
    otherwise). Both are Python ints (they fix array sizes).
    """
    static_int(n_byzantine, "n_byzantine", low=0)
    static_int(n_selected, "n_selected", low=1)
    if num_objectives is not None and num_objectives < n_byzantine + 3:
        raise ValueError(f"krum with n_byzantine={n_byzantine} needs at least "
                         f"{n_byzantine + 3} objectives (n_byzantine + 3), got "
                         f"num_objectives={num_objectives}")
    return from_weighting(
        stateless(lambda g: krum_weights(g, n_byzantine=n_byzantine, n_selected=n_selected)),
        num_objectives)


class TrimmedMeanState(NamedTuple):
    """The logged weights: NaN, the update is not a combination of whole gradients."""
    weights: jax.Array


def trimmed_mean_direction(jacobian, trim_number: int):
    """The coordinate-wise trimmed mean of the rows of the Jacobian pytree: per coordinate,
    the mean of the values left after dropping the ``trim_number`` largest and smallest."""
    m = count_objectives(jacobian)
    trim_number = static_int(trim_number, "trim_number", low=0)
    if m < 2 * trim_number + 1:
        raise ValueError(f"trimmed_mean with trim_number={trim_number} needs at least "
                         f"{2 * trim_number + 1} objectives (2 * trim_number + 1), got {m}")

    def leaf(x):
        wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        kept = jnp.sort(wide, axis=0)[trim_number:m - trim_number]
        return jnp.mean(kept, axis=0).astype(x.dtype)

    return jax.tree.map(leaf, jacobian)


def trimmed_mean(*, trim_number: int = 1, num_objectives: int | None = None
                 ) -> optax.GradientTransformation:
    """Coordinate-wise trimmed mean: each coordinate of the update is the mean of the m
    gradients' values there after dropping the ``trim_number`` largest and smallest.

    Paper: Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates" (ICML 2018), arXiv:1803.01498, Definition 2 (the trimmed mean with
    ``beta = trim_number / m``). Matches torchjd ``TrimmedMean``. torchjd requires
    ``trim_number``; here it defaults to 1 (``trim_number = 0`` is the mean). Needs
    ``m >= 2 trim_number + 1`` objectives. Not a weighting of whole gradients: it needs the
    Jacobian (``make_step(engine="jacobian")``, the default for it) and logs NaN weights.
    """
    static_int(trim_number, "trim_number", low=0)
    if num_objectives is not None and num_objectives < 2 * trim_number + 1:
        raise ValueError(f"trimmed_mean with trim_number={trim_number} needs at least "
                         f"{2 * trim_number + 1} objectives (2 * trim_number + 1), got "
                         f"num_objectives={num_objectives}")

    def init(params):
        return TrimmedMeanState(initial_weights(num_objectives, accumulation_dtype(params)))

    def update(updates, state, params=None):
        del params
        return trimmed_mean_direction(updates, trim_number), state

    return optax.GradientTransformation(init, update)
