"""Penalties on a model's outputs: logit size, confidence, entropy, loss floor, distillation.

Each takes logits (or a loss) and returns the penalty already multiplied by ``strength``, per
example (``[B]``; average it with the loss) except ``flooding``, which transforms the batch
loss. Logits of any floating dtype are computed in float32 or wider; all are finite for
logits of magnitude 1e4.

- ``logit_z_loss``: ``lambda * (log Z)^2`` with ``log Z = logsumexp(logits)``, which keeps the
  softmax normaliser near 1 (PaLM, Chowdhery et al., arXiv 2204.02311, Sec. 5, lambda 1e-4;
  the output-logit divergence of Wortsman et al., "Small-scale proxies for large-scale
  Transformer training instabilities", arXiv 2309.14322, Sec. 3.2).
- ``confidence_penalty``: ``-beta * H(p)``, added to the loss it penalises low-entropy
  (confident) predictions (Pereyra et al., "Regularizing Neural Networks by Penalizing
  Confident Output Distributions", arXiv 1701.06548, Eq. 2).
- ``entropy_minimization``: ``+lambda * H(p)`` on unlabelled inputs (Grandvalet & Bengio,
  "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004, Eq. 5).
- ``flooding``: ``|J - b| + b`` for the mini-batch loss ``J`` and flood level ``b``: gradient
  descent above ``b``, ascent below (Ishida et al., "Do We Need Zero Training Loss After
  Achieving Zero Training Error?", arXiv 2002.08709, Eq. 2).
- ``knowledge_distillation``: ``lambda * T^2 * KL(softmax(t / T) || softmax(s / T))``, the
  teacher held constant (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
  Network", arXiv 1503.02531, Sec. 2: the ``T^2`` keeps gradient magnitudes comparable
  across temperatures); ``feature_distillation``: ``lambda / 2 * ||f_s - f_t||^2`` per
  example (FitNets' hint loss, Romero et al., arXiv 1412.6550, Eq. 2, the regressor left to
  the model).

Hyperparameters given as concrete numbers are checked against their domains at call time,
naming them: ``strength >= 0``, flooding's ``level >= 0``, the distillation ``temperature > 0``
(``ValueError("`level` must be >= 0, got -0.1.")``); traced values (swept by ``jax.vmap``)
are not checked.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxreg._validate import check_strength, float_array, nonnegative, positive, same_shape


def _entropy(logits) -> jax.Array:
    """Shannon entropy of softmax(logits) along the last axis, in nats (finite at any scale)."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def logit_z_loss(logits, *, strength: Any = 1e-4) -> jax.Array:
    """``strength * logsumexp(logits)^2`` per example.

    Args:
        logits: ``[..., K]``.
        strength: lambda (PaLM: 1e-4).

    Returns:
        ``[...]``.
    """
    check_strength(strength)
    logits = float_array(logits, "logits", min_ndim=1)
    return strength * jnp.square(jax.nn.logsumexp(logits, axis=-1))


def confidence_penalty(logits, *, strength: Any = 0.1) -> jax.Array:
    """``-strength * H(softmax(logits))`` per example (Pereyra et al., Eq. 2): add it to the
    loss to penalise confident predictions."""
    check_strength(strength)
    logits = float_array(logits, "logits", min_ndim=1)
    return -strength * _entropy(logits)


def entropy_minimization(logits, *, strength: Any = 1.0) -> jax.Array:
    """``strength * H(softmax(logits))`` per example (Grandvalet & Bengio): add it to the loss on
    unlabelled inputs to push decision boundaries away from the data."""
    check_strength(strength)
    logits = float_array(logits, "logits", min_ndim=1)
    return strength * _entropy(logits)


def flooding(loss, *, level: Any) -> jax.Array:
    """``|J - level| + level`` with ``J`` the mean of ``loss`` (Ishida et al., Eq. 2).

    Args:
        loss: the mini-batch loss, a scalar or per-example ``[B]`` (averaged first: the flood
            acts on the batch objective, not on each example).
        level: the flood level ``b >= 0``.

    Returns:
        The flooded scalar, equal to ``J`` whenever ``J >= level``.
    """
    nonnegative(level, "level")
    loss = float_array(loss, "loss")
    mean = jnp.mean(loss)
    return jnp.abs(mean - level) + level


def knowledge_distillation(student, teacher, *, strength: Any = 1.0,
                           temperature: Any = 4.0) -> jax.Array:
    """``strength * T^2 * KL(softmax(teacher / T) || softmax(student / T))`` per example.

    Args:
        student: the student's logits ``[..., K]``.
        teacher: the teacher's logits, same shape; no gradient flows into them.
        strength: lambda, the weight of the soft-target term.
        temperature: ``T > 0``.

    Returns:
        ``[...]``.
    """
    check_strength(strength)
    positive(temperature, "temperature")
    student = float_array(student, "student", min_ndim=1)
    teacher = lax.stop_gradient(float_array(teacher, "teacher", min_ndim=1))
    same_shape(student, teacher, "student", "teacher")
    log_q = jax.nn.log_softmax(student / temperature, axis=-1)
    log_p = jax.nn.log_softmax(teacher / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    return strength * jnp.square(temperature) * kl


def feature_distillation(student, teacher, *, strength: Any = 1.0) -> jax.Array:
    """``strength / 2 * ||student - teacher||^2`` per example over the feature axes, the
    teacher's features held constant (FitNets, Eq. 2).

    Args:
        student: student features ``[B, ...]`` (after any regressor to the teacher's width).
        teacher: teacher features, same shape.
        strength: lambda.

    Returns:
        ``[B]``.
    """
    check_strength(strength)
    student = float_array(student, "student", min_ndim=1)
    teacher = lax.stop_gradient(float_array(teacher, "teacher", min_ndim=1))
    same_shape(student, teacher, "student", "teacher")
    squared = jnp.square(student - teacher).reshape(student.shape[0], -1)
    return 0.5 * strength * jnp.sum(squared, axis=-1)
