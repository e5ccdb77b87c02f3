"""Sharpness-aware train steps: SAM, ASAM and adversarial model perturbation (AMP).

Each method moves the weights to a nearby adversarial point ``w + delta`` and updates ``w``
with the gradient taken there. Here that is a train-step form: a ``Perturbation`` computes
``delta`` from the gradient at ``w``, and ``jaxreg.train.make_step(objective, optimizer,
perturbation=sam())`` takes the gradient of the whole objective (every term, weighted) at
``w`` and at ``w + delta`` in one step, on the same batch and with the same PRNG key, then
hands the second gradient to *any* optax optimizer, which updates ``w``::

    step = train.make_step(objective, optax.sgd(0.1, momentum=0.9), perturbation=sam())

A perturbation's hyperparameters (``rho``; ``rho, eta``; ``epsilon, inner_lr, inner_iter``)
are data: a value of the same name in the train state's ``hparams`` (given to
``init_state`` or swept by ``jaxreg.train.grid``) overrides the constructor's, as
``optax.inject_hyperparams`` does for an optimizer's, so ``grid(..., perturbation=sam(),
hparams={"rho": [0.0, 0.05, 0.1]})`` trains the three as one vmapped program.

**SAM** (Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021, arXiv:2010.01412, Eq. 2 and Algorithm 1):
``delta = rho g / ||g||`` with ``g`` the gradient at ``w`` and ``||.||`` the global L2 norm
over all parameters (p = 2). Matches google-research/sam ``sam_jax/training_utils/
flax_training.py`` (``dual_vector``, ``get_sam_gradient``: one gradient of the full training
loss, L2 penalty included, same PRNG key for both passes) and davda54/sam ``sam.py``
(``rho / (||g|| + 1e-12)``, whose 1e-12 we use so that ``g = 0`` gives ``delta = 0``). Default
``rho = 0.05`` (both references). The m-sharpness of google-research/sam (a separate
``delta`` per device when perturbations are not synchronised) is not reproduced: the step
perturbs with the gradient of its whole batch.

**ASAM** (Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
Learning of Deep Neural Networks", ICML 2021, arXiv:2102.11600, Algorithm 1):
``delta = rho T_w^2 g / ||T_w g||`` with the element-wise operator ``T_w = |w| + eta``.
Matches SamsungLabs/ASAM ``asam.py`` (``rho = 0.5``, ``eta = 0.01``; its ``1e-16`` in the
norm is our ``1e-12``): there ``T_w`` multiplies only the parameters whose name contains
``weight`` and every other parameter (biases) gets ``T = 1``. The default ``mask`` here
selects the kernels (leaves with ``ndim >= 2``), which is the same set for models without
normalisation layers; PyTorch's BatchNorm/LayerNorm ``weight`` is also normalised there, so
pass a mask that includes the Flax ``scale`` leaves to reproduce it on such models.
davda54/sam ``adaptive=True`` is ``asam(eta=0.0, mask=lambda p: jax.tree.map(lambda _: True,
p))`` (``T_w = |w|`` on every parameter, biases included).

**AMP** (Zheng et al., "Regularizing Neural Networks via Adversarial Model Perturbation",
CVPR 2021, arXiv:2010.04925, Algorithm 1): ``inner_iter`` steps of gradient ascent from
``delta = 0``, ``delta <- Proj_{||delta|| <= epsilon}(delta + inner_lr * grad L(w + delta))``;
the update uses the gradient at ``w + delta``. Matches hiyouga/AMP-Regularizer ``amp.py``
(``epsilon = 0.5``, ``inner_lr = 1``, ``inner_iter = 1``; the projection rescales by
``min(1, epsilon / (||delta|| + 1e-12))``). The official code projects the perturbation of
each parameter tensor onto its own ball, and the paper's published numbers (and the default
``epsilon``) come from it; that is our default ``per_tensor=True``. ``per_tensor=False``
projects onto the single ball over all parameters in which the AMP loss
``max_{||delta|| <= epsilon} L(w + delta)`` is defined. ``inner_iter = 1`` costs two
gradients per step (as SAM), each further inner step one more.

The objective is pure (jaxreg train states carry no BatchNorm statistics), so both passes
see the same function of the weights; the models used with it are BatchNorm-free. For a
model with batch statistics, google-research/sam keeps those of the first (unperturbed)
pass.

**optax.contrib.sam** is the same SAM written as an optimizer wrapper. In its default
(transparent) mode every *other* call to ``update`` is the adversarial step: the train loop
applies ``+rho g / ||g||`` to the parameters, takes the next gradient there, and the
following call undoes the perturbation and applies the outer optimizer's update. Two
optax steps are one SAM step, and in an ordinary loop the two gradients come from two
different batches (the paper and both official codes use one batch); the parameters the
loop sees on odd steps are the perturbed ones (what metrics, BatchNorm statistics and
schedules see). ``opaque_mode=True`` does the ascent inside ``update`` given a ``grad_fn``.
Here both gradients come from one step on one batch, so metrics, checkpoints, schedules
and grids count SAM steps, and the radius is a traced hyperparameter.
``tests/optim/test_sharpness.py`` checks that the three produce the same update sequence on
a deterministic quadratic (every second transparent step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreg._validate import leaf_mask

_TINY = 1e-12  # added to norms in the denominators, as davda54/sam and AMP-Regularizer


class Perturbation(NamedTuple):
    """Where the train step takes the gradient that updates the weights: at ``w + delta``.

    Attributes:
        offset: ``offset(grad_fn, params, grads, **hparams) -> delta`` (a pytree like
            ``params``), from the gradient ``grads`` at ``params``; ``grad_fn(p)`` is the
            objective's gradient at ``p`` on the same batch (for iterated ascents).
        hparams: the numeric hyperparameters and their values.
    """
    offset: Callable[..., Any]
    hparams: Mapping[str, Any]

    def __call__(self, grad_fn, params, grads, hparams: Mapping[str, Any] | None = None):
        """``delta``, with the values in ``hparams`` that share a hyperparameter's name
        overriding the constructor's (the train state's hparams, swept by a grid)."""
        hparams = hparams or {}
        values = {name: hparams.get(name, value) for name, value in self.hparams.items()}
        return self.offset(grad_fn, params, grads, **values)


def _check_static(name: str, value, *, low: float = 0.0):
    """Domain check for Python numbers (traced values cannot be checked at trace time)."""
    if isinstance(value, (int, float)) and not value >= low:
        raise ValueError(f"`{name}` must be >= {low}, got {value}")


def _float32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x).astype(jnp.promote_types(x.dtype, jnp.float32)),
                        tree)


def _norm(tree) -> jax.Array:
    """Global L2 norm with a finite gradient at zero."""
    squares = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))
    positive = squares > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def _scale(tree, factor):
    return jax.tree.map(lambda x: factor * x, tree)


def sam(*, rho: Any = 0.05) -> Perturbation:
    """SAM's perturbation ``delta = rho g / ||g||`` (Foret et al. 2021, Eq. 2; see the module).

    Args:
        rho: the radius of the neighbourhood (L2, over all parameters); 0 is plain training.

    Returns:
        A ``Perturbation`` for ``make_step(..., perturbation=)`` with hyperparameter ``rho``.
    """
    _check_static("rho", rho)

    def offset(grad_fn, params, grads, *, rho):
        del grad_fn, params
        grads = _float32(grads)
        return _scale(grads, rho / (_norm(grads) + _TINY))

    return Perturbation(offset, {"rho": rho})


def asam(*, rho: Any = 0.5, eta: Any = 0.01, mask: Any = None) -> Perturbation:
    """ASAM's perturbation ``delta = rho T_w^2 g / ||T_w g||``, ``T_w = |w| + eta`` element-wise
    on the masked leaves and 1 elsewhere (Kwon et al. 2021, Algorithm 1; see the module).

    Args:
        rho: the radius of the adaptive neighbourhood (paper/official default 0.5).
        eta: added to ``|w|`` so that zero weights can move (default 0.01).
        mask: which leaves ``T_w`` scales: None (kernels, ``ndim >= 2``; biases get
            ``T = 1`` as in the official code), a pytree of booleans like the parameters, or
            a function of the parameters returning one.

    Returns:
        A ``Perturbation`` with hyperparameters ``rho`` and ``eta``.
    """
    _check_static("rho", rho)
    _check_static("eta", eta)

    def offset(grad_fn, params, grads, *, rho, eta):
        del grad_fn
        chosen = leaf_mask(mask, params)
        grads = _float32(grads)
        t_w = jax.tree.map(lambda w, on: jnp.abs(w.astype(jnp.promote_types(w.dtype, jnp.float32)))
                           + eta if on else 1.0, params, chosen)
        scaled = jax.tree.map(jnp.multiply, t_w, grads)  # T_w g
        factor = rho / (_norm(scaled) + _TINY)
        return jax.tree.map(lambda t, tg: factor * t * tg, t_w, scaled)

    return Perturbation(offset, {"rho": rho, "eta": eta})


def adversarial_model_perturbation(*, epsilon: Any = 0.5, inner_lr: Any = 1.0,
                                   inner_iter: Any = 1, per_tensor: bool = True
                                   ) -> Perturbation:
    """AMP's perturbation: ``inner_iter`` projected gradient-ascent steps on ``delta``
    (Zheng et al. 2021, Algorithm 1; see the module).

    ``delta_0 = 0``; ``delta_{n+1} = clip(delta_n + inner_lr * grad L(w + delta_n))`` with
    ``clip(d) = d * min(1, epsilon / (||d|| + 1e-12))``. The first ascent uses the gradient
    at ``w`` the step already has; the step then takes the gradient at ``w + delta_N``.

    Args:
        epsilon: the radius of the L2 ball (default 0.5, the official code's).
        inner_lr: the ascent step size zeta (default 1).
        inner_iter: the number of ascent steps N, an integer (0 is plain training); may be
            traced (the loop then runs as a while loop).
        per_tensor: project each parameter tensor onto its own ball (the official code) or
            all parameters onto one ball (False).

    Returns:
        A ``Perturbation`` with hyperparameters ``epsilon``, ``inner_lr``, ``inner_iter``.
    """
    _check_static("epsilon", epsilon)
    _check_static("inner_lr", inner_lr)
    _check_static("inner_iter", inner_iter)
    if isinstance(inner_iter, float) or not jnp.issubdtype(jnp.asarray(inner_iter).dtype,
                                                           jnp.integer):
        raise TypeError(f"`inner_iter` must be an integer, got {inner_iter!r}")

    def offset(grad_fn, params, grads, *, epsilon, inner_lr, inner_iter):
        # A Python int unrolls into a scan; a traced count (a grid's) runs a while loop.
        iterations = inner_iter if isinstance(inner_iter, int) else jnp.asarray(inner_iter)
        if not jnp.issubdtype(jnp.asarray(iterations).dtype, jnp.integer):
            raise TypeError(f"`inner_iter` must be an integer, got {inner_iter!r}")

        def clip(delta):
            if per_tensor:
                return jax.tree.map(
                    lambda d: d * jnp.minimum(1.0, epsilon / (_norm(d) + _TINY)), delta)
            return _scale(delta, jnp.minimum(1.0, epsilon / (_norm(delta) + _TINY)))

        def ascend(delta, g):
            return clip(jax.tree.map(lambda d, gi: d + inner_lr * gi, delta, g))

        def inner(_, carry):
            delta, g = carry
            delta = ascend(delta, g)
            moved = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, delta)
            return delta, _float32(grad_fn(moved))

        grads = _float32(grads)
        zero = jax.tree.map(jnp.zeros_like, grads)
        delta, g = jax.lax.fori_loop(0, iterations - 1, inner, (zero, grads))
        last = ascend(delta, g)
        return jax.tree.map(lambda d: jnp.where(iterations > 0, d, 0.0), last)

    return Perturbation(offset, {"epsilon": epsilon, "inner_lr": inner_lr,
                                 "inner_iter": inner_iter})
