"""Self-knowledge distillation: progressive self-knowledge distillation (PS-KD).

The model is its own teacher: the soft target of each training example mixes its label with
the model's own prediction for it from the previous epoch. The train step keeps those
predictions in a ``[N, K]`` buffer (see :func:`initial_predictions`), gathers the batch's
rows, and scatters back the rows the loss returns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array, logits_and_labels, same_shape


def progressive_self_distillation(logits, labels, prev_probs, *, alpha=0.8):
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
    """
    logits, labels = logits_and_labels(logits, labels)
    prev_probs = float_array(prev_probs, "prev_probs")
    same_shape(logits, prev_probs, "logits", "prev_probs")
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    target = jax.lax.stop_gradient((1.0 - alpha) * one_hot + alpha * prev_probs)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(target * log_p, axis=-1), jax.lax.stop_gradient(jnp.exp(log_p))


def pskd_alpha(epoch, *, alpha_final=0.8, num_epochs):
    """PS-KD's schedule for the weight of the self-teacher: ``alpha_final * (epoch + 1) / E``.

    ``epoch`` counts from 0, so the last epoch (``E - 1``) uses ``alpha_final``. Traced values
    are fine. In the reference the stored predictions are the one-hot labels during epoch 0
    (:func:`initial_predictions`), so the target of the first epoch is the label whatever
    ``alpha_t``.

    Paper: Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets"
    (2021), arXiv:2006.12000; ``alpha_T = 0.8``, ``E = 300`` on CIFAR-100
    (lgcnsai/PS-KD-Pytorch ``main.py``: ``alpha_t = alpha_T * ((epoch + 1) / end_epoch)``).
    """
    return alpha_final * (epoch + 1) / num_epochs


def initial_predictions(labels, num_classes: int):
    """The PS-KD prediction buffer before training: the one-hot labels, ``[N, num_classes]``.

    lgcnsai/PS-KD-Pytorch ``main.py`` writes the one-hot label into the buffer during epoch 0,
    before the soft target is formed, so the first epoch trains on plain cross-entropy.
    """
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`labels` must hold integer class indices, got dtype {labels.dtype}.")
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
