"""Learning-rate sensitivity (Wortsman et al. 2024, Eq. 1) against hand-computed sweeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics import sensitivity


def test_hand_computed_sweep_with_a_diverged_run():
    # l_0 = 2.3; rates reach 1.0, 0.5, 3.0 (worse than l_0: clipped to 2.3), nan (diverged:
    # counts as 2.3); l* = 0.5, so the sensitivity is mean(1.0, 0.5, 2.3, 2.3) - 0.5.
    losses = jnp.asarray([1.0, 0.5, 3.0, jnp.nan])
    got = jax.jit(sensitivity.learning_rate_sensitivity)(losses, 2.3)
    np.testing.assert_allclose(got, (1.0 + 0.5 + 2.3 + 2.3) / 4 - 0.5, rtol=1e-6)


def test_flat_sweep_is_zero_and_other_axes_are_kept():
    seeds_by_rates = np.array([[0.7, 0.7, 0.7], [0.2, 0.4, 0.9]])
    got = sensitivity.learning_rate_sensitivity(seeds_by_rates, jnp.asarray([1.0, 1.0]))
    np.testing.assert_allclose(got, [0.0, 0.5 - 0.2], atol=1e-6)
    rates_first = sensitivity.learning_rate_sensitivity(seeds_by_rates.T, 1.0, axis=0)
    np.testing.assert_allclose(rates_first, got, atol=1e-6)


def test_losses_must_be_floating():
    with pytest.raises(TypeError, match="`final_losses`"):
        sensitivity.learning_rate_sensitivity(np.array([1, 2]), 1.0)
