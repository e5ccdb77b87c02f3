"""Hypergradients of a validation loss through the training optimum, by implicit
differentiation with a Neumann-series inverse Hessian (Lorraine, Vicol & Duvenaud, "Optimizing
Millions of Hyperparameters by Implicit Differentiation", AISTATS 2020, arXiv:1911.02590,
Eq. 4 and Algorithms 2-3).

At a training optimum ``w*(lambda)`` (``dL_T/dw = 0``), the implicit function theorem gives

    dL_V/dlambda = dL_V/dlambda|_direct - (d^2 L_T / dlambda dw^T) H^{-1} dL_V/dw,

with ``H = d^2 L_T / dw dw^T``. ``H^{-1} v`` is approximated by the first ``num_terms + 1``
terms of ``alpha sum_j (I - alpha H)^j v``, which converges when ``0 < alpha < 2 /
lambda_max(H)`` and ``H`` is positive definite. This is the authors'
``neumann_hyperstep_preconditioner`` with ``elementary_lr = alpha`` (it returns the sum times
``alpha``), and the same as differentiating through ``num_terms`` unrolled SGD steps of size
``alpha`` started at ``w*``, as the paper observes.
Everything is Hessian-vector and mixed-partial products, never a Hessian; the result is jittable
and differentiable in ``alpha``.

The authors' training script stores ``-(direct + indirect)`` as the hyperparameter gradient,
which is the formula above only when the direct term is 0 (as in their experiments); here the
direct term keeps its sign.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Loss = Callable[[Any, Any], jax.Array]


def neumann_inverse_hvp(train_loss: Loss, params, hparams, vector, *, num_terms: int,
                        learning_rate: Any):
    """``alpha sum_{j=0}^{num_terms} (I - alpha H)^j vector``, the Neumann approximation of
    ``H^{-1} vector`` for the Hessian ``H`` of ``train_loss`` in ``params`` (Algorithm 3).

    Args:
        train_loss: ``train_loss(params, hparams) -> scalar``.
        params: the (approximate) training optimum.
        hparams: the hyperparameters, held fixed.
        vector: a pytree like ``params``.
        num_terms: ``i``, the Hessian-vector products to spend (static, at least 0).
        learning_rate: ``alpha`` (a float or a traced scalar).

    Returns:
        A pytree like ``params``.
    """
    if num_terms < 0:
        raise ValueError(f"`num_terms` must be at least 0, got {num_terms}.")
    gradient = jax.grad(train_loss)

    def hvp(u):
        return jax.jvp(lambda p: gradient(p, hparams), (params,), (u,))[1]

    def body(_, carry):
        counter, total = carry
        counter = jax.tree.map(lambda c, h: c - learning_rate * h, counter, hvp(counter))
        return counter, jax.tree.map(lambda t, c: t + c, total, counter)

    _, total = jax.lax.fori_loop(0, num_terms, body, (vector, vector))
    return jax.tree.map(lambda t: learning_rate * t, total)


def implicit_hypergradient(train_loss: Loss, val_loss: Loss, params, hparams, *,
                           num_terms: int = 5, learning_rate: Any = 0.1):
    """``dL_V/dlambda`` at the training optimum ``params`` (Lorraine et al. 2020, Eq. 4, with
    the Neumann approximation of Algorithm 3).

    Args:
        train_loss: ``train_loss(params, hparams) -> scalar``, e.g. the training loss plus a
            regularizer whose strengths (one per weight, if you like) are ``hparams``.
        val_loss: ``val_loss(params, hparams) -> scalar``; ``hparams`` may not enter it (then
            the direct term is 0).
        params: the training optimum ``w*`` (in practice: after some inner steps).
        hparams: a pytree of floating hyperparameters.
        num_terms: Neumann terms ``i`` (static); 0 takes ``H^{-1} ~ alpha I``.
        learning_rate: the Neumann step ``alpha`` (the inner optimizer's learning rate in the
            paper; needs ``alpha < 2 / lambda_max(H)``).

    Returns:
        The hypergradient, a pytree like ``hparams``.
    """
    v, direct = jax.grad(val_loss, argnums=(0, 1))(params, hparams)
    preconditioned = neumann_inverse_hvp(train_loss, params, hparams, v, num_terms=num_terms,
                                         learning_rate=learning_rate)
    _, mixed_vjp = jax.vjp(lambda h: jax.grad(train_loss)(params, h), hparams)
    (indirect,) = mixed_vjp(preconditioned)
    return jax.tree.map(lambda d, i: d - i, direct, indirect)
