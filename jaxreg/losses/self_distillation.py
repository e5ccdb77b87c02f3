"""Self-knowledge distillation: progressive self-knowledge distillation (PS-KD).

The model is its own teacher: the soft target of each training example mixes its label with
the model's own prediction for it from the previous epoch. The train step keeps those
predictions in a ``[N, K]`` buffer (see :func:`initial_predictions`), gathers the batch's
rows, and scatters back the rows the loss returns.

Integer labels follow the rule of every jaxreg loss (see ``jaxreg.losses.classification``):
``logits [..., B, K]`` with at least one example; a label outside ``[0, K)`` (no wrap-around
of negative labels) gives a NaN loss for its example; ``ignore_index`` (keyword-only, static
int, default None) gives the examples with that label a loss of exactly 0 and a zero gradient;
concrete labels out of range raise a ``ValueError`` naming ``labels`` before any computation,
traced ones are checked with ``checkify`` under ``jaxreg.checks.debug_checks()``.
Hyperparameters given as concrete numbers are checked against their domains (``alpha`` in
``[0, 1]``); traced ones are not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import (
    batched_logits_and_labels,
    class_labels,
    float_array,
    hyperparameter,
    nonnegative,
    same_shape,
)


def progressive_self_distillation(logits, labels, prev_probs, *, alpha=0.8, ignore_index=None):
    """PS-KD loss: cross-entropy against the label mixed with last epoch's prediction.

    ``target = (1 - alpha) * one_hot(y) + alpha * prev_probs`` (a constant: no gradient flows
    into it); ``loss = -sum_k target_k log_softmax(logits)_k``; returns
    ``(loss [...], new_probs [..., K])`` with ``new_probs = stop_gradient(softmax(logits))``,
    the predictions to store for the next epoch.

    ``alpha`` is the current epoch's ``alpha_t`` (see :func:`pskd_alpha`); the default 0.8 is
    the paper's final ``alpha_T``. With ``prev_probs`` the one-hot labels (the reference's
    buffer at epoch 0, :func:`initial_predictions`) the loss is the cross-entropy.

    Paper: Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets"
    (2021), arXiv:2006.12000.

    Matches lgcnsai/PS-KD-Pytorch ``loss/pskd_loss.py`` ``Custom_CrossEntropy_PSKD`` with the
    soft targets of ``main.py``, per example (the reference averages over the batch).
    ``alpha`` in ``[0, 1]``. The label rule applies to the loss; ``new_probs`` does not
    depend on the label and is returned for every example.
    """
    hyperparameter(alpha, "alpha", low=0, high=1)
    logits, labels, mask = batched_logits_and_labels(logits, labels, ignore_index=ignore_index)
    prev_probs = float_array(prev_probs, "prev_probs")
    same_shape(logits, prev_probs, "logits", "prev_probs")
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    target = jax.lax.stop_gradient((1.0 - alpha) * one_hot + alpha * prev_probs)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return (mask.apply(-jnp.sum(target * log_p, axis=-1)),
            jax.lax.stop_gradient(jnp.exp(log_p)))


def pskd_alpha(epoch, *, alpha_final=0.8, num_epochs):
    """PS-KD's schedule for the weight of the self-teacher: ``alpha_final * (epoch + 1) / E``.

    ``epoch`` counts from 0, so the last epoch (``E - 1``) uses ``alpha_final``. Traced values
    are fine. In the reference the stored predictions are the one-hot labels during epoch 0
    (:func:`initial_predictions`), so the target of the first epoch is the label whatever
    ``alpha_t``.

    Paper: Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets"
    (2021), arXiv:2006.12000; ``alpha_T = 0.8``, ``E = 300`` on CIFAR-100
    (lgcnsai/PS-KD-Pytorch ``main.py``: ``alpha_t = alpha_T * ((epoch + 1) / end_epoch)``).
    Concrete values are checked: ``alpha_final`` in ``[0, 1]``, ``epoch >= 0``,
    ``num_epochs > 0``.
    """
    hyperparameter(alpha_final, "alpha_final", low=0, high=1)
    nonnegative(epoch, "epoch")
    hyperparameter(num_epochs, "num_epochs", low=0, low_open=True)
    return alpha_final * (epoch + 1) / num_epochs


def initial_predictions(labels, num_classes: int):
    """The PS-KD prediction buffer before training: the one-hot labels, ``[N, num_classes]``.

    lgcnsai/PS-KD-Pytorch ``main.py`` writes the one-hot label into the buffer during epoch 0,
    before the soft target is formed, so the first epoch trains on plain cross-entropy.
    Labels follow the rule of the losses: concrete labels outside ``[0, num_classes)`` raise
    a ``ValueError`` naming ``labels``; traced ones give a row of NaN (not a zero row).
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must hold integer class indices, got dtype {labels.dtype}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int, got {num_classes!r}.")
    safe, mask = class_labels(labels, num_classes)
    rows = jax.nn.one_hot(safe, num_classes, dtype=jnp.float32)
    return jnp.where(mask.in_range[..., None], rows, jnp.nan)
