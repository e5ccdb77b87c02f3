"""Scalarizations: the objectives combined by their values alone, ``s(f_1, ..., f_m)``.

The gradient of ``s(f(theta))`` is ``J^T w`` with ``w = ds/df`` evaluated at the current
values (with the stop-gradients each method prescribes), so each scalarization here is a
:class:`~jaxreg.multiobjective.base.Weighting` with ``uses_gramian=False``: ``w`` from the
values (``update(None, state, values)``) and, for the stateful ones, from what they kept of
earlier steps. ``jaxreg.train.make_step`` then takes one backward pass of ``w^T f`` (no
Jacobian, no Gramian); the aggregator built by ``from_weighting`` gives ``J^T w`` from a
Jacobian, the same update. The logged weights are ``w``.

Every method here matches the gradient of torchjd 0.18's scalarizer (``torchjd.scalarization``)
with respect to the values; the values must be given (``values=``, which ``make_step``
passes), and a weighting called without them raises.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg import _validate
from jaxreg.multiobjective.base import Weighting, check_objectives, from_weighting

_FAMO_EPS = 1e-8  # torchjd FAMO's epsilon inside the logarithm
_PBI_EPS = 1e-12  # torchjd PBI's constant under the square root


def _values(values, name: str, m: int | None, dtype=None) -> jax.Array:
    """The values as a float vector in ``dtype`` (default: at least float32), checked."""
    if values is None:
        raise ValueError(f"{name} weighs the objectives by their values: pass `values` (the "
                         "objectives' values [m]; jaxreg.train.make_step passes them)")
    values = jnp.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name}: `values` must be a vector [m], got shape {values.shape}")
    if m is not None:
        check_objectives(f"{name} (`values`)", m, values.shape[0])
    if dtype is None:
        dtype = jnp.promote_types(values.dtype, jnp.float32)
    return values.astype(dtype)


def _vector(value, name: str, m: int, dtype) -> jax.Array:
    """An optional per-objective vector hyperparameter, checked against m."""
    value = jnp.asarray(value, dtype)
    if value.shape != (m,):
        raise ValueError(f"`{name}` must have one value per objective ({m}), got shape "
                         f"{value.shape}")
    return value


def _need(num_objectives, name: str) -> int:
    if not num_objectives:
        raise ValueError(f"{name} keeps per-objective state: give `num_objectives`")
    return num_objectives


# -- FAMO ---------------------------------------------------------------------------------------

class FAMOState(NamedTuple):
    """FAMO's task logits ``xi``, their optimizer's state, and the values of the previous step
    (NaN before the first)."""
    logits: jax.Array
    opt_state: optax.OptState
    previous: jax.Array


def famo_weighting(num_objectives: int, *, min_losses=None, lr=0.025, weight_decay=1e-3
                   ) -> Weighting:
    """FAMO's weighting (see :func:`famo`)."""
    m = _need(num_objectives, "famo")
    _validate.nonnegative(lr, "lr")
    _validate.nonnegative(weight_decay, "weight_decay")
    if min_losses is not None and _validate.is_concrete(min_losses):
        _vector(min_losses, "min_losses", m, jnp.float32)
    # torch.optim.Adam(lr, weight_decay): L2 added to the gradient, then Adam (0.9, 0.999, 1e-8)
    optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(lr))

    def init(num_objectives, dtype):
        logits = jnp.zeros(m, dtype)
        return FAMOState(logits, optimizer.init(logits), jnp.full(m, jnp.nan, dtype))

    def update(gram, state, values=None):
        dtype = state.logits.dtype
        values = _values(values, "famo", m, dtype)
        bound = jnp.zeros(m, dtype) if min_losses is None else _vector(min_losses, "min_losses",
                                                                        m, dtype)
        shifted = values - bound + _FAMO_EPS
        # torchjd's FAMO.update(values): the logits take one Adam step on the change of the
        # log-losses since the previous call, delta = log(before) - log(after), pulled back
        # through the softmax (the vector-Jacobian product of softmax with delta).
        first = jnp.isnan(state.previous[0])
        before = jnp.where(first, shifted, state.previous - bound + _FAMO_EPS)
        delta = jnp.log(before) - jnp.log(shifted)
        z = jax.nn.softmax(state.logits)
        grad = z * (delta - jnp.dot(z, delta))
        step, opt_state = optimizer.update(grad, state.opt_state, state.logits)
        stepped = FAMOState(optax.apply_updates(state.logits, step), opt_state, values)
        state = jax.tree.map(lambda new, old: jnp.where(first, old, new), stepped,
                             state._replace(previous=values))
        # the weights of c sum_i z_i log(f_i - b_i + eps), c = 1 / sum_i z_i / (f_i - b_i + eps)
        # held constant: d/df_i = c z_i / (f_i - b_i + eps)
        z = jax.nn.softmax(state.logits)
        ratio = z / shifted
        return ratio / jnp.sum(ratio), state

    return Weighting(init, update, uses_gramian=False)


def famo(*, num_objectives: int, min_losses=None, lr=0.025, weight_decay=1e-3
         ) -> optax.GradientTransformation:
    """FAMO: Fast Adaptive Multitask Optimization, balancing the objectives' rates of
    decrease from their values alone.

    The update is the gradient of ``c sum_i z_i log(f_i - b_i + eps)`` with ``z =
    softmax(xi)``, ``c = (sum_i z_i / (f_i - b_i + eps))^-1`` held constant (``eps = 1e-8``,
    ``b = min_losses``, zeros by default): weights ``w_i = c z_i / (f_i - b_i + eps)``, which
    sum to one. The logits ``xi`` take one Adam step (``lr``, L2 ``weight_decay`` as
    ``torch.optim.Adam``'s, betas 0.9/0.999, eps 1e-8) along the softmax's pullback of
    ``delta_i = log(f_i^before - b_i + eps) - log(f_i^after - b_i + eps)``.

    Paper: Liu et al., "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS 2023),
    arXiv:2306.03792, Algorithm 2 (the update and the regularised step of the logits).
    Matches torchjd ``FAMO``.

    Mapping onto torchjd's two calls: torchjd calls ``famo(values)`` for the update, then,
    after the model step, ``famo.update(new_values)`` with the losses recomputed on the same
    batch. A train step sees one set of values, so here step t first applies torchjd's
    ``update`` with ``(before, after) = (values of step t-1, values of step t)`` (nothing at
    the first step), then gives the weights of step t from the new logits: the sequence
    ``famo(v_0); famo.update(v_1); famo(v_1); famo.update(v_2); famo(v_2); ...``. It differs
    from torchjd's recommended use in that ``after`` is measured on the next batch rather
    than recomputed on the same one (which saves a forward pass). The values must stay above
    ``min_losses``.
    """
    return from_weighting(famo_weighting(num_objectives, min_losses=min_losses, lr=lr,
                                         weight_decay=weight_decay), num_objectives)


# -- DWA ----------------------------------------------------------------------------------------

class DWAState(NamedTuple):
    """DWA's running sum of the values in the current epoch and its batch count, the two
    previous epochs' average values and how many epochs have ended (capped at 2)."""
    total: jax.Array
    batches: jax.Array
    older: jax.Array
    newer: jax.Array
    epochs: jax.Array


def dwa_weighting(num_objectives: int, *, temperature=2.0, steps_per_epoch: int = 1
                  ) -> Weighting:
    """DWA's weighting (see :func:`dwa`)."""
    m = _need(num_objectives, "dwa")
    _validate.positive(temperature, "temperature")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"`steps_per_epoch` must be a positive int, got {steps_per_epoch!r}")

    def init(num_objectives, dtype):
        zeros = jnp.zeros(m, dtype)
        return DWAState(zeros, jnp.zeros((), jnp.int32), zeros, zeros,
                        jnp.zeros((), jnp.int32))

    def update(gram, state, values=None):
        values = _values(values, "dwa", m, state.total.dtype)
        rates = state.newer / jnp.where(state.epochs >= 2, state.older, 1.0)
        weights = jnp.where(state.epochs >= 2, m * jax.nn.softmax(rates / temperature),
                            jnp.ones_like(values))
        total, batches = state.total + values, state.batches + 1
        end = batches >= steps_per_epoch  # torchjd's DWA.step() at the end of an epoch
        average = total / batches.astype(total.dtype)
        new = DWAState(jnp.where(end, 0.0, total), jnp.where(end, 0, batches),
                       jnp.where(end, state.newer, state.older),
                       jnp.where(end, average, state.newer),
                       jnp.where(end, jnp.minimum(state.epochs + 1, 2), state.epochs))
        return weights, new

    return Weighting(init, update, uses_gramian=False)


def dwa(*, num_objectives: int, temperature=2.0, steps_per_epoch: int = 1
        ) -> optax.GradientTransformation:
    """Dynamic Weight Average: weights ``lambda_k = m softmax_k(r / T)`` from the rates
    ``r_k = L_k(t-1) / L_k(t-2)`` of the objectives' average values over the two previous
    epochs (ones until two epochs have ended).

    Paper: Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (CVPR
    2019), arXiv:1803.10704, its Dynamic Weight Average formula. Matches torchjd ``DWA``:
    an epoch is ``steps_per_epoch`` consecutive steps, after which torchjd's
    ``DWA.step()`` is applied (the epoch's average values become ``L(t-1)``). The default
    ``steps_per_epoch = 1`` calls ``step()`` after every batch (the per-iteration form);
    give the number of batches per epoch for the paper's epoch averages. The weights of a
    step depend on earlier epochs only.
    """
    return from_weighting(dwa_weighting(num_objectives, temperature=temperature,
                                        steps_per_epoch=steps_per_epoch), num_objectives)


# -- Stateless scalarizations -------------------------------------------------------------------

def _stateless(weights_fn) -> Weighting:
    return Weighting(lambda num_objectives, dtype: (),
                     lambda gram, state, values=None: (weights_fn(values), state),
                     uses_gramian=False)


def stch_weights(values, *, mu=1.0, pref=None, reference=None) -> jax.Array:
    """``d/df mu log sum_i exp(lambda_i (f_i - z_i) / mu) = lambda * softmax(lambda (f - z) /
    mu)``: STCH's weights at ``values``."""
    values = _values(values, "stch", None)
    m = values.shape[0]
    lam = (jnp.full(m, 1.0 / m, values.dtype) if pref is None
           else _vector(pref, "pref", m, values.dtype))
    shifted = values if reference is None else values - _vector(reference, "reference", m,
                                                                values.dtype)
    return lam * jax.nn.softmax(lam * shifted / mu)


def stch(*, mu=1.0, pref=None, reference=None, num_objectives: int | None = None
         ) -> optax.GradientTransformation:
    """Smooth Tchebycheff scalarization ``mu log sum_i exp(lambda_i (f_i - z*_i) / mu)``: a
    smooth maximum of the weighted objectives, tending to the Tchebycheff scalarization
    ``max_i lambda_i (f_i - z*_i)`` as ``mu -> 0`` (its weights then go to ``lambda_k`` on the
    largest term).

    ``pref`` is the preference ``lambda`` (torchjd's ``weights``; uniform ``1/m`` by
    default), ``reference`` the ideal point ``z*`` (none by default). The weights are
    ``lambda * softmax(lambda (f - z*) / mu)``.

    Paper: Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective Optimization"
    (ICML 2024), arXiv:2402.19078, the smooth Tchebycheff scalarization of Section 3.
    Matches torchjd ``STCH``. torchjd requires ``mu``;
    here it defaults to 1 (the paper evaluates 0.01, 0.1, 0.5 and 1).
    """
    _validate.positive(mu, "mu")
    for name, value in (("pref", pref), ("reference", reference)):
        if value is not None and num_objectives and _validate.is_concrete(value):
            _vector(value, name, num_objectives, jnp.float32)
    return from_weighting(
        _stateless(lambda v: stch_weights(v, mu=mu, pref=pref, reference=reference)),
        num_objectives)


def geometric_mean_weights(values) -> jax.Array:
    """``d/df (prod_i f_i)^(1/m) = GM / (m f_i)``: the geometric mean's weights (NaN for a
    negative value, as the geometric mean itself)."""
    values = _values(values, "geometric_mean", None)
    geometric = jnp.exp(jnp.mean(jnp.log(values)))
    return geometric / (values.shape[0] * values)


def geometric_mean(*, num_objectives: int | None = None) -> optax.GradientTransformation:
    """The geometric mean of the objectives' values, ``(prod_i f_i)^(1/m)``: weights
    ``GM / (m f_i)``, inversely proportional to each value (the Geometric Loss Strategy).

    Paper: Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and Geometric
    Loss Strategy for Multi-Task Learning" (CVPR Workshops 2019), arXiv:1904.08492, the
    geometric loss strategy. Matches torchjd ``GeometricMean``. torchjd raises on a
    negative value; values are traced here, so a negative one gives NaN weights instead
    (and a zero one NaN too, as the gradient of torchjd's ``exp(mean(log f))``).
    """
    return from_weighting(_stateless(geometric_mean_weights), num_objectives)


def pbi_weights(values, *, theta=5.0, pref=None, reference=None) -> jax.Array:
    """PBI's weights: ``d/df (d_1 + theta d_2) = w_hat + theta (f - d_1 w_hat) / d_2`` with
    ``f`` shifted by the reference point, ``d_1 = f^T w_hat`` and ``d_2 = sqrt(||f - d_1
    w_hat||^2 + 1e-12)``."""
    values = _values(values, "pbi", None)
    m = values.shape[0]
    direction = (jnp.ones(m, values.dtype) if pref is None
                 else _vector(pref, "pref", m, values.dtype))
    direction = direction / jnp.linalg.norm(direction)
    shifted = values if reference is None else values - _vector(reference, "reference", m,
                                                                values.dtype)
    along = shifted @ direction
    perpendicular = shifted - along * direction
    distance = jnp.sqrt(perpendicular @ perpendicular + _PBI_EPS)
    return direction + theta * perpendicular / distance


def pbi(*, theta=5.0, pref=None, reference=None, num_objectives: int | None = None
        ) -> optax.GradientTransformation:
    """Penalty-based Boundary Intersection: ``d_1 + theta d_2``, the distance of the
    (shifted) values along the preference direction ``w_hat = pref / ||pref||`` plus
    ``theta`` times their distance to that line.

    ``pref`` is torchjd's ``weights`` (required there; the uniform direction by default
    here), ``reference`` the ideal point ``z*`` (the origin by default). ``d_2`` is
    ``sqrt(||.||^2 + 1e-12)``, as torchjd, so the weights stay finite on the line.

    Paper: Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition" (IEEE TEC 2007), doi:10.1109/TEVC.2007.892759, Section II (the
    boundary intersection approach; no arXiv version). Matches torchjd ``PBI``; ``theta =
    5`` is the paper's value.
    """
    _validate.nonnegative(theta, "theta")
    for name, value in (("pref", pref), ("reference", reference)):
        if value is not None and num_objectives and _validate.is_concrete(value):
            _vector(value, name, num_objectives, jnp.float32)
    return from_weighting(
        _stateless(lambda v: pbi_weights(v, theta=theta, pref=pref, reference=reference)),
        num_objectives)
