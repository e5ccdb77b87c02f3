"""Tests for synthetic label noise and its report."""

import json

import numpy as np
import pytest

from jaxreg.data import (
    DIGITS_ASYMMETRIC_MAP,
    asymmetric_noise,
    noise_report,
    symmetric_noise,
)

K = 10
# Unbalanced classes (sizes 100..145), so per-class counts are not all the same.
LABELS = np.repeat(np.arange(K), 100 + 5 * np.arange(K)).astype(np.int32)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 0.8, 1.0])
def test_flip_moves_exactly_int_rate_n_of_each_class_to_another_class(rate):
    noisy = symmetric_noise(LABELS, rate, K, seed=0, convention="flip")
    assert noisy.dtype == LABELS.dtype and noisy.shape == LABELS.shape
    for c in range(K):
        members = LABELS == c
        # Each chosen example changes (flip never keeps the label), so the number of
        # changed labels is exactly the reference's int(rate * n_c).
        assert np.sum(noisy[members] != c) == int(rate * members.sum())


def test_flip_targets_are_uniform_over_the_other_classes():
    labels = np.zeros(90_000, dtype=np.int64)
    noisy = symmetric_noise(labels, 1.0, K, seed=1, convention="flip")
    counts = np.bincount(noisy, minlength=K)
    assert counts[0] == 0
    # Each of the 9 targets is Binomial(90000, 1/9): mean 10000, sd about 94; 5 sd = 470.
    np.testing.assert_allclose(counts[1:], 10_000, atol=470)


def test_uniform_selects_ceil_rate_n_and_relabels_over_all_classes():
    rate, n = 0.4, LABELS.size
    wrong = []
    for seed in range(200):
        noisy = symmetric_noise(LABELS, rate, K, seed=seed, convention="uniform")
        changed = np.sum(noisy != LABELS)
        assert changed <= np.ceil(rate * n)  # Only the selected examples can change.
        wrong.append(changed / n)
    # Per seed, changed ~ Binomial(ceil(0.4 n) = 490, (K-1)/K = 0.9): fraction sd =
    # sqrt(490 * 0.9 * 0.1) / 1225 = 0.0054; the mean of 200 seeds has sd 0.00038, so 0.002
    # is about 5 sd around rate (K-1)/K = 0.36, and far from the "flip" value 0.4.
    assert abs(np.mean(wrong) - rate * (K - 1) / K) < 0.002


def test_symmetric_is_deterministic_in_seed():
    for convention in ("flip", "uniform"):
        a = symmetric_noise(LABELS, 0.3, K, seed=5, convention=convention)
        np.testing.assert_array_equal(a, symmetric_noise(LABELS, 0.3, K, seed=5,
                                                         convention=convention))
        assert not np.array_equal(a, symmetric_noise(LABELS, 0.3, K, seed=6,
                                                     convention=convention))


def test_symmetric_does_not_modify_its_input():
    labels = LABELS.copy()
    symmetric_noise(labels, 0.5, K, seed=0)
    np.testing.assert_array_equal(labels, LABELS)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5])
def test_asymmetric_count_moves_only_mapped_classes_to_their_targets(rate):
    noisy = asymmetric_noise(LABELS, rate, DIGITS_ASYMMETRIC_MAP, seed=0)
    for c in range(K):
        members = LABELS == c
        moved = noisy[members][noisy[members] != c]
        if c in DIGITS_ASYMMETRIC_MAP:
            assert np.all(moved == DIGITS_ASYMMETRIC_MAP[c])
            assert moved.size == int(rate * members.sum())
        else:
            assert moved.size == 0


def test_asymmetric_bernoulli_moves_about_rate_of_each_source():
    labels = np.repeat(np.arange(K), 20_000)
    noisy = asymmetric_noise(labels, 0.3, DIGITS_ASYMMETRIC_MAP, seed=0,
                             convention="bernoulli")
    for c in range(K):
        moved = noisy[labels == c] != c
        if c in DIGITS_ASYMMETRIC_MAP:
            assert np.all(noisy[labels == c][moved] == DIGITS_ASYMMETRIC_MAP[c])
            # Binomial(20000, 0.3) / 20000 has sd 0.0032; 0.016 is 5 sd.
            assert abs(moved.mean() - 0.3) < 0.016
        else:
            assert not moved.any()


def test_digits_map_is_apls_mnist_map():
    assert DIGITS_ASYMMETRIC_MAP == {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


def test_report_matches_a_hand_computed_case():
    clean = np.array([0, 0, 0, 0, 1, 1, 2])
    noisy = np.array([0, 0, 1, 2, 1, 0, 2])
    report = noise_report(clean, noisy, 4)
    assert report["noise_rate"] == pytest.approx(3 / 7)
    assert report["per_class_rate"][:3] == pytest.approx([0.5, 0.5, 0.0])
    assert report["per_class_rate"][3] is None
    assert report["class_counts"] == [4, 2, 1, 0]
    np.testing.assert_allclose(report["transition_matrix"], [
        [0.5, 0.25, 0.25, 0.0],
        [0.5, 0.5, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ])
    json.dumps(report)  # Plain Python types only.


@pytest.mark.parametrize("convention", ["flip", "uniform"])
def test_report_rows_sum_to_one_and_rate_matches(convention):
    noisy = symmetric_noise(LABELS, 0.4, K, seed=3, convention=convention)
    report = noise_report(LABELS, noisy, K)
    matrix = np.array(report["transition_matrix"])
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    assert report["noise_rate"] == pytest.approx(np.mean(noisy != LABELS))
    sizes = np.bincount(LABELS, minlength=K)
    # The overall rate is the class-size-weighted mean of the per-class rates.
    assert report["noise_rate"] == pytest.approx(
        np.dot(report["per_class_rate"], sizes) / sizes.sum())
    np.testing.assert_allclose(1 - np.diag(matrix), report["per_class_rate"])


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_rate_out_of_range_is_named(rate):
    with pytest.raises(ValueError, match="`rate`"):
        symmetric_noise(LABELS, rate, K, seed=0)
    with pytest.raises(ValueError, match="`rate`"):
        asymmetric_noise(LABELS, rate, DIGITS_ASYMMETRIC_MAP, seed=0)


def test_unknown_convention_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'flip', 'uniform'"):
        symmetric_noise(LABELS, 0.2, K, seed=0, convention="pairflip")
    with pytest.raises(ValueError, match="'count', 'bernoulli'"):
        asymmetric_noise(LABELS, 0.2, DIGITS_ASYMMETRIC_MAP, seed=0, convention="flip")


def test_bad_labels_are_named():
    with pytest.raises(TypeError, match="`labels`.*integer"):
        symmetric_noise(LABELS.astype(np.float32), 0.2, K, seed=0)
    with pytest.raises(ValueError, match="`labels`"):
        symmetric_noise(np.array([0, 1, 10]), 0.2, K, seed=0)
    with pytest.raises(ValueError, match="`noisy`"):
        noise_report(LABELS, LABELS[:-1], K)
    with pytest.raises(ValueError, match="`class_map`"):
        asymmetric_noise(LABELS, 0.2, {3: 3}, seed=0)
