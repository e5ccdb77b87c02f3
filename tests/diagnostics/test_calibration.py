"""Calibration metrics against their definitions, written directly in NumPy (float64)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.diagnostics import calibration


def _softmax(logits):
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def _ece_reference(probs, labels, num_bins):
    """Guo et al.'s ECE written directly from its definition, in float64."""
    confidence, prediction = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(num_bins):
        members = (confidence > m / num_bins) & (confidence <= (m + 1) / num_bins)
        if members.any():
            accuracy = np.mean(prediction[members] == labels[members])
            total += members.mean() * abs(accuracy - confidence[members].mean())
    return total


def test_ece_of_a_hand_computed_case():
    # confidences 0.9 (right), 0.9 (wrong), 0.5 (right) with 2 bins:
    # bin (0.5, 1]: 2/3 * |1/2 - 0.9| ; bin (0, 0.5]: 1/3 * |1 - 0.5|
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.5, 0.5]])
    logits = np.log(probs)
    labels = np.array([0, 1, 0])
    expected = 2 / 3 * 0.4 + 1 / 3 * 0.5
    ece = calibration.expected_calibration_error(logits, labels, 2)
    np.testing.assert_allclose(ece, expected, rtol=1e-5)


def test_ece_matches_the_definition_on_random_logits():
    rng = np.random.default_rng(0)
    logits = 3 * rng.normal(size=(500, 10))
    labels = rng.integers(0, 10, 500)
    probs = _softmax(logits)
    jitted = jax.jit(calibration.expected_calibration_error, static_argnums=2)
    np.testing.assert_allclose(jitted(logits, labels, 15), _ece_reference(probs, labels, 15),
                               atol=1e-5)


def test_ece_is_zero_for_perfectly_confident_correct_predictions():
    logits = np.array([[1e4, 0.0], [0.0, 1e4]])
    ece = calibration.expected_calibration_error(logits, np.array([0, 1]))
    np.testing.assert_allclose(ece, 0.0, atol=1e-6)


def test_ece_bins_are_checked():
    with pytest.raises(ValueError, match="`num_bins`"):
        calibration.expected_calibration_error(np.zeros((2, 3)), np.array([0, 1]), 0)


def _aurc_reference(confidence, errors):
    """Geifman et al.'s AURC averaged over every ordering of tied confidences, by brute
    force: the mean over k of the error rate of the k most confident examples."""
    confidence, errors = np.asarray(confidence, np.float64), np.asarray(errors, np.float64)
    levels = sorted(set(confidence), reverse=True)
    groups = [np.flatnonzero(confidence == c) for c in levels]
    areas = []
    for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
        ranked = errors[np.concatenate(orders)]
        areas.append(np.mean(np.cumsum(ranked) / np.arange(1, len(ranked) + 1)))
    return np.mean(areas)


def _logits_for(correct_first, labels, num_classes=3):
    """Logits whose argmax is the label where ``correct_first`` is True, else the next class."""
    predicted = np.where(correct_first, labels, (labels + 1) % num_classes)
    return 5.0 * np.eye(num_classes)[predicted]


def test_aurc_of_a_hand_computed_case():
    # confidences 0.9, 0.8, 0.7, 0.6 with correct, correct, wrong, wrong:
    # risks at coverage 1/4..4/4: 0, 0, 1/3, 2/4
    labels = np.array([0, 1, 2, 0])
    logits = _logits_for(np.array([True, True, False, False]), labels)
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    np.testing.assert_allclose(calibration.aurc(logits, labels, confidence=confidence),
                               (0 + 0 + 1 / 3 + 1 / 2) / 4, rtol=1e-6)
    # That ranking is ideal, so its excess is 0; reversed, it is the worst one.
    np.testing.assert_allclose(
        calibration.aurc(logits, labels, confidence=confidence, excess=True), 0.0, atol=1e-7)
    worst = (1 + 1 + 2 / 3 + 2 / 4) / 4
    np.testing.assert_allclose(calibration.aurc(logits, labels, confidence=-confidence),
                               worst, rtol=1e-6)


def test_aurc_averages_ties_over_their_orderings_and_ignores_batch_order():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 9)
    correct = rng.random(9) < 0.6
    logits = _logits_for(correct, labels)
    confidence = np.array([0.9, 0.5, 0.9, 0.2, 0.5, 0.9, 0.5, 0.7, 0.2])
    expected = _aurc_reference(confidence, ~correct)
    aurc = jax.jit(lambda lg, lb, c: calibration.aurc(lg, lb, confidence=c))
    np.testing.assert_allclose(aurc(logits, labels, confidence), expected, rtol=1e-6)
    perm = rng.permutation(9)
    np.testing.assert_allclose(aurc(logits[perm], labels[perm], confidence[perm]), expected,
                               rtol=1e-6)


def test_aurc_ranks_by_the_softmax_confidence_by_default():
    rng = np.random.default_rng(2)
    logits = 2 * rng.normal(size=(40, 5))
    labels = rng.integers(0, 5, 40)
    probs = _softmax(logits)
    errors = probs.argmax(1) != labels
    np.testing.assert_allclose(calibration.aurc(logits, labels),
                               _aurc_reference(probs.max(1), errors), rtol=1e-5)
    k, num_correct = np.arange(1, 41), np.sum(~errors)
    ideal = np.mean(np.maximum(k - num_correct, 0) / k)  # every correct example first
    np.testing.assert_allclose(calibration.aurc(logits, labels, excess=True),
                               _aurc_reference(probs.max(1), errors) - ideal, rtol=1e-4)
    # Leading axes are flattened; vmap over a batch of models works.
    np.testing.assert_allclose(calibration.aurc(logits.reshape(4, 10, 5), labels.reshape(4, 10)),
                               calibration.aurc(logits, labels), rtol=1e-6)
    stacked = jax.vmap(calibration.aurc)(jnp.stack([logits, -logits]), jnp.stack([labels] * 2))
    np.testing.assert_allclose(stacked[1], calibration.aurc(-logits, labels), rtol=1e-6)


def test_aurc_checks_its_confidence():
    with pytest.raises(ValueError, match="`confidence`"):
        calibration.aurc(np.zeros((3, 2)), np.array([0, 1, 0]), confidence=np.zeros(2))
    with pytest.raises(TypeError, match="`confidence`"):
        calibration.aurc(np.zeros((3, 2)), np.array([0, 1, 0]), confidence=np.array([1, 2, 3]))


@pytest.mark.parametrize("measure", [calibration.expected_calibration_error, calibration.aurc])
@pytest.mark.parametrize("bad", [3, -1])
def test_labels_outside_the_classes_follow_the_loss_rule(measure, bad):
    logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 1.0, 0.0]])
    labels = np.asarray([0, bad], np.int32)
    with pytest.raises(ValueError, match="`labels` must hold class indices in \\[0, 3\\)"):
        measure(logits, labels)
    assert np.isnan(jax.jit(measure)(logits, labels))  # traced: NaN, never a finite value
    assert np.isfinite(jax.jit(measure)(logits, np.asarray([0, 1], np.int32)))
