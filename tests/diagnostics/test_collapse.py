"""Tests for jaxreg.diagnostics.collapse (Softmax Collapse, Prieto et al. 2025).

In float32, ``1 + x`` rounds to exactly 1 when ``x`` is at most half an ulp of 1,
``2^-24 = 5.96e-8``, i.e. for a logit gap ``z_max - z_j > 24 ln 2 = 16.64`` (float64:
``53 ln 2 = 36.7``; float16: ``11 ln 2 = 7.6``; bfloat16: ``8 ln 2 = 5.5``). The hand-made rows
below have one runner-up logit on either side of these thresholds, so the verdicts are fixed
by the formats, not by the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics.collapse import softmax_collapse, softmax_collapse_fraction

# gaps:               17.5 (f32 collapses)  16.0 (f32 does not)  40 (f64 collapses too)
#                     8.0 (f16, bf16)        6.0 (bf16 only)      3.0 (none)
ROWS = np.array([[0.0, -17.5, -200.0],
                 [2.0, -14.0, 1.0 - 200.0],
                 [-40.0, 0.0, -100.0],
                 [0.0, -8.0, -100.0],
                 [-6.0, 0.0, -100.0],
                 [1.0, -2.0, 0.5]])
F32 = [True, False, True, False, False, False]
F64 = [False, False, True, False, False, False]
F16 = [True, True, True, True, False, False]
BF16 = [True, True, True, True, True, False]


def numpy_collapse(z, dtype):
    """Independent oracle: the reference's ``sum(exp(z - max)) == 1`` in NumPy ``dtype``."""
    z = np.asarray(z, dtype)
    return np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, dtype=dtype) == dtype(1)


def test_hand_made_rows_collapse_in_float32_but_not_float64():
    np.testing.assert_array_equal(numpy_collapse(ROWS, np.float32), F32)  # the oracle agrees
    np.testing.assert_array_equal(numpy_collapse(ROWS, np.float64), F64)
    np.testing.assert_array_equal(softmax_collapse(jnp.asarray(ROWS, jnp.float32)), F32)
    assert float(softmax_collapse_fraction(jnp.asarray(ROWS, jnp.float32))) == pytest.approx(
        2 / 6)
    with jax.enable_x64(True):
        rows64 = jnp.asarray(ROWS, jnp.float64)
        np.testing.assert_array_equal(softmax_collapse(rows64, dtype=jnp.float64), F64)
        # float64 logits measured in float32 (the reference casts to the softmax precision)
        np.testing.assert_array_equal(softmax_collapse(rows64), F32)
        assert float(softmax_collapse_fraction(rows64, dtype=jnp.float64)) == pytest.approx(
            1 / 6)


def test_half_precisions_collapse_at_smaller_gaps():
    np.testing.assert_array_equal(numpy_collapse(ROWS, np.float16), F16)
    np.testing.assert_array_equal(softmax_collapse(ROWS, dtype=jnp.float16), F16)
    np.testing.assert_array_equal(softmax_collapse(ROWS, dtype=jnp.bfloat16), BF16)


def test_with_labels_counts_the_examples_whose_loss_is_exactly_zero():
    labels = np.array([0, 0, 0, 1, 1, 2])  # row 0 collapsed at its label; row 2 not
    expected = np.array(F32) & (labels == ROWS.argmax(-1))
    np.testing.assert_array_equal(expected, [True, False, False, False, False, False])
    z = np.asarray(ROWS, np.float32)
    m = z.max(-1)
    s = np.sum(np.exp(z - m[:, None]), -1, dtype=np.float32)
    # float32 cross-entropy as the reference computes it (torch.log_softmax: (z - m) - log s)
    loss = -((z[np.arange(6), labels] - m) - np.log(s))
    np.testing.assert_array_equal(loss == 0, expected)
    # the log-sum-exp form m + log(s) - z_y also rounds to 0 on row 1 (sum 1 + 2^-23,
    # log 2^-23 absorbed by m = 2): why the count is defined on the sum, not on a loss value
    assert (m + np.log(s) - z[np.arange(6), labels])[1] == 0
    np.testing.assert_array_equal(softmax_collapse(ROWS, labels), expected)
    assert float(softmax_collapse_fraction(ROWS, labels)) == pytest.approx(1 / 6)


def test_random_logits_match_the_oracle_and_large_scales_all_collapse():
    z = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    for scale in (1.0, 3.0, 10.0):
        np.testing.assert_array_equal(softmax_collapse(scale * z),
                                      numpy_collapse(scale * z, np.float32))
    assert float(softmax_collapse_fraction(z)) == 0.0
    assert float(softmax_collapse_fraction(1e3 * z)) == 1.0


def test_jit_vmap_and_leading_axes():
    z = jnp.asarray(ROWS, jnp.float32)
    labels = jnp.asarray([0, 0, 1, 1, 1, 2])
    assert float(jax.jit(softmax_collapse_fraction)(z, labels)) == pytest.approx(2 / 6)
    batched = jnp.stack([z, z + 1.0, 50.0 * z])  # shifting by 1 keeps the gaps exact
    per_batch = jax.vmap(softmax_collapse_fraction)(batched)
    np.testing.assert_allclose(per_batch, [2 / 6, 2 / 6, 1.0])  # x50: every gap > 16.6
    assert float(softmax_collapse_fraction(batched)) == pytest.approx(10 / 18)  # all axes
    assert softmax_collapse(batched).shape == (3, 6)


def test_extreme_and_low_precision_inputs():
    extreme = jnp.asarray([[1e4, -1e4, 0.0], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]])
    np.testing.assert_array_equal(softmax_collapse(extreme), [True, False, False])
    assert float(softmax_collapse_fraction(jnp.finfo(jnp.float32).max * jnp.eye(3))) == 1.0
    # bfloat16 logits measured in float32: the gap 6 row does not collapse there
    np.testing.assert_array_equal(softmax_collapse(jnp.asarray(ROWS, jnp.bfloat16)), F32)


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match="logits"):
        softmax_collapse_fraction(jnp.ones((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="logits"):
        softmax_collapse_fraction(jnp.float32(1.0))
    with pytest.raises(ValueError, match="labels"):
        softmax_collapse_fraction(jnp.ones((2, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="labels"):
        softmax_collapse_fraction(jnp.ones((2, 3)), jnp.zeros(2))
    with pytest.raises(TypeError, match="dtype"):
        softmax_collapse_fraction(jnp.ones((2, 3)), dtype=jnp.int32)
    with pytest.raises(ValueError, match="dtype"):
        softmax_collapse_fraction(jnp.ones((2, 3)), dtype=jnp.float64)  # x64 disabled


@pytest.mark.parametrize("bad", [3, -1, 1000])
def test_labels_follow_the_losses_rule(bad):
    """Concrete labels outside [0, K) raise naming them; a traced one is never counted as
    collapsed (label -1 does not wrap to the last class) and the fraction is NaN."""
    z = jnp.asarray([[0.0, 0.0, 200.0], [0.0, 0.0, 200.0]])  # both collapsed at class 2
    labels = jnp.asarray([2, bad])
    with pytest.raises(ValueError, match=r"`labels` must hold class indices in \[0, 3\)"):
        softmax_collapse(z, labels)
    np.testing.assert_array_equal(jax.jit(softmax_collapse)(z, labels), [True, False])
    assert np.isnan(jax.jit(softmax_collapse_fraction)(z, labels))
    assert float(jax.jit(softmax_collapse_fraction)(z, jnp.asarray([2, 2]))) == 1.0
