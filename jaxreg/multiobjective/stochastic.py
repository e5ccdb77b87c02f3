"""Weightings for stochastic multi-objective optimisation: MoDo, SDMGrad and CR-MOGM.

Each keeps weights across steps, so that the weights are not decided by one mini-batch's
gradients alone (the bias these papers analyse).

- MoDo and SDMGrad update their weights on the simplex by (projected) gradient steps on the
  min-norm objective. Their papers feed them ``J_1 J_2^T``, the product of the Jacobians of
  two independent mini-batches, so that the stochastic gradient of ``||J^T lambda||^2`` is
  unbiased; the update is then ``J_3^T w`` for a third batch (or the average of both).
  As optax aggregators (through ``from_weighting``) they see the Gramian ``J J^T`` of the
  step's one batch, which keeps the weighting but loses that guarantee; for double sampling
  call the weighting's ``update(J_1 J_2^T, state)`` yourself (``modo_weighting`` and
  ``sdmgrad_weighting`` accept any m x m matrix, not only a symmetric one).
- CR-MOGM smooths any weighting's output by an exponential moving average.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import _validate
from jaxreg.multiobjective.base import (
    Weighting,
    check_objectives,
    from_weighting,
    stateless,
    weighting_of,
)
from jaxreg.multiobjective.min_norm import mgda_weights, project_to_simplex


def _need(num_objectives, name):
    if not num_objectives:
        raise ValueError(f"{name} keeps its weights between steps: give `num_objectives`")
    return num_objectives


def modo_weighting(num_objectives: int, *, gamma=0.1, rho=0.1) -> Weighting:
    """MoDo's weighting: ``lambda <- Proj_simplex(lambda - gamma (A lambda + rho lambda))``
    from ``lambda = 1/m``, on the matrix ``A`` it is given (``J_1 J_2^T`` in the paper, the
    Gramian through ``from_weighting``); the weights are the new ``lambda``."""
    m = _need(num_objectives, "modo")
    _validate.positive(gamma, "gamma")
    _validate.nonnegative(rho, "rho")

    def init(num_objectives, dtype):
        return jnp.full(m, 1.0 / m, dtype)

    def update(gram, lam, values=None):
        check_objectives("modo", m, gram.shape[0])
        lam = lam.astype(gram.dtype)
        lam = project_to_simplex(lam - gamma * (gram @ lam + rho * lam))
        return lam, lam

    return Weighting(init, update)


def modo(*, num_objectives: int, gamma=0.1, rho=0.1) -> optax.GradientTransformation:
    """MoDo: Multi-objective gradient with Double sampling; one projected gradient step per
    call on the weights ``lambda`` of ``1/2 ||J^T lambda||^2 + rho/2 ||lambda||^2`` over the
    simplex, and the update ``J^T lambda`` (module docstring on the double sampling).

    Paper: Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance" (NeurIPS 2023; JMLR 2024),
    arXiv:2305.20057, Eq. 2.9a of the JMLR version (the weights' step; Eq. 2.9b is the
    parameters'). Matches torchjd
    ``MoDoWeighting`` (gamma 0.1, rho 0.1), given the same matrix.
    """
    return from_weighting(modo_weighting(num_objectives, gamma=gamma, rho=rho),
                          num_objectives)


class SDMGradState(NamedTuple):
    """SDMGrad's weights ``w`` on the simplex (the warm start of the next call)."""
    w: jax.Array


def sdmgrad_weighting(num_objectives: int, *, lr=10.0, momentum=0.5, n_iter: int = 20,
                      lambda_=0.3, pref=None) -> Weighting:
    """SDMGrad's weighting (see :func:`sdmgrad`), on any m x m matrix ``A``."""
    m = _need(num_objectives, "sdmgrad")
    _validate.positive(lr, "lr")
    _validate.hyperparameter(momentum, "momentum", low=0, high=1, high_open=True)
    _validate.nonnegative(lambda_, "lambda_")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"`n_iter` must be a positive int, got {n_iter!r}")
    if pref is not None and _validate.is_concrete(pref) and np.shape(pref) != (m,):
        raise ValueError(f"`pref` must have one value per objective ({m}), got shape "
                         f"{np.shape(pref)}")

    def init(num_objectives, dtype):
        return SDMGradState(jnp.full(m, 1.0 / m, dtype))

    def update(gram, state, values=None):
        check_objectives("sdmgrad", m, gram.shape[0])
        dtype = gram.dtype
        target = (jnp.full(m, 1.0 / m, dtype) if pref is None
                  else jnp.asarray(pref, dtype).reshape(m))
        scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)))
        a = gram / (scale ** 2 + 1e-8)

        def step(i, carry):
            w, velocity = carry
            grad = a @ (w + lambda_ * target)
            velocity = jnp.where(i == 0, grad, momentum * velocity + grad)
            return project_to_simplex(w - lr * velocity), velocity

        w, _ = jax.lax.fori_loop(0, n_iter, step, (state.w.astype(dtype), jnp.zeros(m, dtype)))
        return (w + lambda_ * target) / (1.0 + lambda_), SDMGradState(w)

    return Weighting(init, update)


def sdmgrad(*, num_objectives: int, lr=10.0, momentum=0.5, n_iter: int = 20, lambda_=0.3,
            pref=None) -> optax.GradientTransformation:
    """SDMGrad: Stochastic Direction-oriented Multi-objective Gradient descent.

    The weights ``w`` of ``min_{w in simplex} 1/2 ||J^T (w + lambda w~)||^2`` (the direction
    pulled towards the preferred one ``J^T w~``, ``w~ = pref``, uniform by default) take
    ``n_iter`` projected steps of SGD with momentum (``lr``, ``momentum``) per call, on the
    matrix divided by the squared mean of the gradient norms (``mean_i sqrt(A_ii)``, plus
    1e-8), warm-started from the last call's ``w``; the update is ``J^T (w + lambda w~) /
    (1 + lambda)``.

    Paper: Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
    Stochastic Algorithms" (NeurIPS 2023), arXiv:2305.18409, the SDMGrad algorithm with the
    normalisation of its Section 6.1. Matches torchjd ``SDMGradWeighting`` (lambda 0.3, the official
    experiments' value), given the same matrix (module docstring on the double sampling).
    """
    return from_weighting(sdmgrad_weighting(num_objectives, lr=lr, momentum=momentum,
                                            n_iter=n_iter, lambda_=lambda_, pref=pref),
                          num_objectives)


class CRMOGMState(NamedTuple):
    """The smoothed weights ``lambda_{k-1}`` (NaN before the first call without
    ``initial_weights``) and the wrapped weighting's state."""
    smoothed: jax.Array
    inner: Any


def _as_weighting(weighting) -> Weighting:
    if weighting is None:
        return stateless(mgda_weights)
    if isinstance(weighting, Weighting):
        return weighting
    found = weighting_of(weighting)
    if found is not None:
        return found
    if callable(weighting) and not hasattr(weighting, "update"):
        return stateless(weighting)
    raise TypeError("`weighting` must be a Weighting, an aggregator built from one (e.g. "
                    "jaxreg.multiobjective.upgrad()) or a function gram -> weights, got "
                    f"{type(weighting).__name__}")


def cr_mogm_weighting(num_objectives: int, weighting=None, *, alpha=0.9,
                      initial_weights=None) -> Weighting:
    """CR-MOGM's weighting around ``weighting`` (see :func:`cr_mogm`)."""
    m = _need(num_objectives, "cr_mogm")
    inner = _as_weighting(weighting)
    _validate.hyperparameter(alpha, "alpha", low=0, high=1)
    if initial_weights is not None and np.shape(initial_weights) != (m,):
        raise ValueError(f"`initial_weights` must have one value per objective ({m}), got "
                         f"shape {np.shape(initial_weights)}")

    def init(num_objectives, dtype):
        start = (jnp.full(m, jnp.nan, dtype) if initial_weights is None
                 else jnp.asarray(initial_weights, dtype))
        return CRMOGMState(start, inner.init(m, dtype))

    def update(gram, state, values=None):
        raw, inner_state = inner.update(gram, state.inner, values)
        inner_state = jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)),
                                   inner_state, state.inner)
        check_objectives("cr_mogm", m, raw.shape[0])
        previous = state.smoothed.astype(raw.dtype)
        previous = jnp.where(jnp.isnan(previous), raw, previous)  # lambda_0 = the first weights
        smoothed = alpha * previous + (1.0 - alpha) * raw
        return smoothed, CRMOGMState(smoothed, inner_state)

    return Weighting(init, update, uses_gramian=inner.uses_gramian)


def cr_mogm(weighting=None, *, num_objectives: int, alpha=0.9, initial_weights=None
            ) -> optax.GradientTransformation:
    """CR-MOGM: the weights of ``weighting`` smoothed across steps,
    ``lambda_k = alpha lambda_{k-1} + (1 - alpha) lambda^_k``.

    ``weighting``: a :class:`~jaxreg.multiobjective.base.Weighting` (e.g.
    ``dual_cone.upgrad_weighting()``), an aggregator built from one (``upgrad()``,
    ``mgda()``, ``pcgrad()``, ...) or a function ``gram -> weights``; default MGDA's, the
    method the paper mainly corrects. ``lambda_0 = initial_weights``, or the first call's
    weights (so the first output is the wrapped weighting's). ``alpha = 0``: no smoothing;
    ``alpha = 1``: frozen weights. The paper's Corollary 1 schedules ``alpha_k`` towards 1 as
    the learning rate decays; ``alpha`` may be a traced value (e.g. from ``hparams``).

    Paper: Zhou et al., "On the Convergence of Stochastic Multi-Objective Gradient
    Manipulation and Beyond" (NeurIPS 2022; no arXiv version), its exponentially averaged
    composite weights. Matches torchjd ``CRMOGMWeighting``.
    """
    return from_weighting(cr_mogm_weighting(num_objectives, weighting, alpha=alpha,
                                            initial_weights=initial_weights), num_objectives)
