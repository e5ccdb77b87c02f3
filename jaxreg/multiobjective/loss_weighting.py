"""Loss-weighting baselines: GradNorm and uncertainty weighting.

Both learn one weight per objective while the model trains, from the objectives' values
rather than from the geometry of their gradients alone.

GradNorm (Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
Multitask Networks", ICML 2018, arXiv:1711.02257) is an aggregator: it needs each objective's
gradient and value, which ``jaxreg.train.make_step`` hands it (the extra argument
``values``). With ``G_i = ||w_i g_i||`` (on the chosen parameters ``W``), the relative
inverse training rate ``r_i = L~_i / mean(L~)`` with ``L~_i = L_i(t) / L_i(0)`` and the
target ``G_bar r_i^alpha`` held constant (Eq. 2), the weights take a step of ``weight
optimizer`` on ``L_grad = sum_i |G_i - G_bar r_i^alpha|`` (Eq. 3) and are renormalised to sum
to m. The update of the step is ``sum_i w_i g_i`` with the weights before their step.

Uncertainty weighting (Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
Weigh Losses for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115) is a change of
objective: each term ``L_i`` becomes ``c_i exp(-s_i) L_i + s_i / 2`` with a learned log
variance ``s_i = log sigma_i^2`` trained with the model; ``c_i = 1/2`` for a Gaussian
likelihood (regression, Eq. 7) and ``1`` for a softmax one (classification, Eq. 10).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxreg.multiobjective.base import accumulation_dtype, check_objectives, combine, gramian
from jaxreg.multiobjective.base import num_objectives as count_objectives


class GradNormState(NamedTuple):
    """``weights``: those applied at the last step (logged); ``next_weights``: those of the
    next step; ``initial``: the objectives' values at the first step (NaN before it);
    ``opt_state``: the weight optimizer's state."""
    weights: jax.Array
    next_weights: jax.Array
    initial: jax.Array
    opt_state: Any


def gradnorm_weight_gradient(weights, norms, values, initial, *, alpha):
    """``d L_grad / d w`` (Eq. 3, the target held constant) and the target ``G_bar r^alpha``.

    ``norms``: ``||g_i||`` on the chosen parameters; ``values`` and ``initial``: ``L_i(t)``
    and ``L_i(0)``.
    """
    scaled = weights * norms
    ratio = values / initial
    target = jnp.mean(scaled) * (ratio / jnp.mean(ratio)) ** alpha
    return jnp.sign(scaled - target) * norms, target


def gradnorm(*, num_objectives: int, alpha: float = 1.5,
             weight_optimizer: optax.GradientTransformation | None = None,
             layer: Callable[[Any], Any] | None = None
             ) -> optax.GradientTransformationExtraArgs:
    """GradNorm: weights that equalise the objectives' training rates (see the module).

    Args:
        num_objectives: m (the weights live in the state).
        alpha: the strength of the restoring force (1.5 in the paper's NYUv2 experiments).
        weight_optimizer: the optax transformation that steps the weights on ``L_grad``;
            default ``optax.adam(0.025)``. The paper trains them with the network's optimizer
            (so does LibMTL, which also parameterises them by a softmax); here they are
            renormalised to sum to m after each step, as in the paper.
        layer: selects the parameters ``W`` whose gradient norms are balanced from the
            per-objective gradient pytree (the paper uses the last shared layer); default:
            all parameters. With ``make_step(..., representation=...)`` the gradients are
            those with respect to the shared representation instead.

    The update needs ``values`` (the objectives' values, ``[m]``) as an extra argument;
    ``jaxreg.train.make_step`` passes them.
    """
    m = num_objectives
    optimizer = weight_optimizer if weight_optimizer is not None else optax.adam(0.025)

    def init(params):
        dtype = accumulation_dtype(params)  # float64 parameters keep float64 weights
        ones = jnp.ones(m, dtype)
        return GradNormState(ones, ones, jnp.full(m, jnp.nan, dtype), optimizer.init(ones))

    def update(updates, state, params=None, *, values=None, **extra_args):
        del params, extra_args
        if values is None:
            raise ValueError("gradnorm needs the objectives' values: train with "
                             "jaxreg.train.make_step, or pass `values` to update")
        check_objectives("gradnorm", m, count_objectives(updates))
        dtype = state.next_weights.dtype
        values = jnp.asarray(values).astype(dtype)
        check_objectives("gradnorm (values)", m, values.shape[0])
        initial = jnp.where(jnp.isnan(state.initial), values, state.initial)
        chosen = updates if layer is None else layer(updates)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gramian(chosen)), 0.0)).astype(dtype)
        weights = state.next_weights
        grad, _ = gradnorm_weight_gradient(weights, norms, values, initial, alpha=alpha)
        step, opt_state = optimizer.update(grad, state.opt_state, weights)
        stepped = jnp.maximum(optax.apply_updates(weights, step), 0.0)
        total = jnp.sum(stepped)
        renormalised = jnp.where(total > 0, m * stepped / jnp.where(total > 0, total, 1.0),
                                 jnp.ones_like(stepped))
        return (combine(weights, updates),
                GradNormState(weights, renormalised, initial, opt_state))

    return optax.GradientTransformationExtraArgs(init, update)


def uncertainty_parameters(params, names: Sequence[str], *, init: float = 0.0) -> dict:
    """``{"model": params, "log_variance": {name: init}}``: the parameters that
    ``uncertainty_weighting`` trains (``s_i = log sigma_i^2``; LibMTL starts at -0.5), in
    ``accumulation_dtype(params)`` (float32, or float64 for float64 parameters)."""
    dtype = accumulation_dtype(params)
    return {"model": params,
            "log_variance": {name: jnp.asarray(init, dtype) for name in names}}


def uncertainty_weighting(objective: Callable, *,
                          classification: Sequence[str] = ()) -> Callable:
    """Wraps an objective so that each term ``L_i`` becomes ``c_i exp(-s_i) L_i + s_i / 2``.

    The wrapped objective takes the parameters of ``uncertainty_parameters`` and calls
    ``objective`` with ``params["model"]``; ``s_i = params["log_variance"][name]``. Terms
    named in ``classification`` use ``c_i = 1`` (Eq. 10), the others ``1/2`` (Eq. 7, the
    convention of LibMTL's ``UW`` for every task).
    """
    classification = frozenset(classification)

    def wrapped(params, batch, hparams, key, *rows, **kwargs):
        out = objective(params["model"], batch, hparams, key, *rows, **kwargs)
        terms, new_rows = (out, None) if not rows else out
        log_variance = params["log_variance"]
        missing = set(terms) - set(log_variance)
        if missing or set(classification) - set(terms):
            raise KeyError(f"uncertainty_weighting: terms {sorted(terms)}, log variances for "
                           f"{sorted(log_variance)}, classification terms "
                           f"{sorted(classification)}: every term needs a log variance and "
                           "every classification name must be a term")
        weighted = weigh_by_uncertainty(terms, log_variance, classification)
        return weighted if not rows else (weighted, new_rows)

    return wrapped


def weigh_by_uncertainty(terms: Mapping[str, jax.Array], log_variance: Mapping[str, jax.Array],
                         classification=frozenset()) -> dict:
    """``{name: c exp(-s) L + s / 2}`` for each term (see ``uncertainty_weighting``)."""
    out = {}
    for name, value in terms.items():
        s = jnp.asarray(log_variance[name], value.dtype)
        factor = 1.0 if name in classification else 0.5
        out[name] = factor * jnp.exp(-s) * value + 0.5 * s
    return out
