"""Learning-rate sensitivity of a training recipe, from a sweep of final losses.

Wortsman, Liu, Xiao, Everett, Alemi, Adlam, Co-Reyes, Gur, Kumar, Novak, Pennington,
Sohl-Dickstein, Xu, Lee, Gilmer & Kornblith, "Small-scale proxies for large-scale Transformer
training instabilities", ICLR 2024, arXiv:2309.14322, Sec. 2.2 (Eq. 1):

    LR sensitivity = E_eta [ min(l(A(eta)), l_0) - l* ],

the expectation over the learning rates of the sweep (log-spaced in the paper, 3e-4 to 3e-1),
with ``l_0`` the loss at initialization and ``l* = min_eta l(A(eta))``. A run that diverges
(a non-finite final loss) counts as ``l_0``, as the ``min`` with ``l_0`` intends. Run the
sweep as one ``jaxreg.train.grid`` over ``learning_rate``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxreg._validate import float_array


def learning_rate_sensitivity(final_losses, initial_loss, *, axis: int = -1) -> jax.Array:
    """Eq. 1 of Wortsman et al. (2024) over the learning-rate ``axis`` of ``final_losses``.

    Args:
        final_losses: final losses of a learning-rate sweep, the rates along ``axis`` (other
            axes, e.g. seeds or recipes, are kept).
        initial_loss: ``l_0``, broadcastable against ``final_losses`` without ``axis``.
        axis: the learning-rate axis.

    Returns:
        The sensitivity, at least 0; 0 when every rate reaches the same loss.
    """
    losses = float_array(final_losses, "final_losses", min_ndim=1)
    initial = jnp.expand_dims(float_array(initial_loss, "initial_loss"), axis)
    clipped = jnp.minimum(jnp.where(jnp.isfinite(losses), losses, initial), initial)
    return jnp.mean(clipped, axis=axis) - jnp.min(clipped, axis=axis)
