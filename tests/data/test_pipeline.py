"""Tests for the deterministic, resumable input pipeline."""

import numpy as np
import pytest

from jaxreg.data import batches, data_source, epoch_indices, load_digits, num_batches


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("digits")
    return load_digits("train", data_dir=data_dir), data_source("train", data_dir=data_dir)


def test_epoch_covers_each_example_at_most_once():
    order = epoch_indices(0, 0, num_examples=103, batch_size=10)
    assert order.shape == (10, 10) and order.dtype == np.int32
    flat = order.ravel()
    assert len(np.unique(flat)) == flat.size  # No repeats within an epoch.
    assert flat.min() >= 0 and flat.max() < 103
    assert num_batches(103, 10) == 10


def test_epoch_is_a_full_permutation_when_batches_divide():
    order = epoch_indices(3, 1, num_examples=60, batch_size=12)
    np.testing.assert_array_equal(np.sort(order.ravel()), np.arange(60))
    assert not np.array_equal(order.ravel(), np.arange(60))  # Actually shuffled.


def test_epoch_is_deterministic_and_varies_with_seed_and_epoch():
    base = epoch_indices(7, 2, 500, 50)
    np.testing.assert_array_equal(epoch_indices(7, 2, 500, 50), base)
    assert not np.array_equal(epoch_indices(7, 3, 500, 50), base)
    assert not np.array_equal(epoch_indices(8, 2, 500, 50), base)
    # (seed, epoch) is a sequence, not a sum: (7, 3) and (8, 2) differ too.
    assert not np.array_equal(epoch_indices(7, 3, 500, 50), epoch_indices(8, 2, 500, 50))


def test_unshuffled_epoch_is_in_order():
    np.testing.assert_array_equal(
        epoch_indices(0, 5, 10, 3, shuffle=False), np.arange(9).reshape(3, 3))


@pytest.mark.parametrize("batch_size", [0, -1, 11])
def test_bad_batch_size_is_named(batch_size):
    with pytest.raises(ValueError, match="`batch_size`"):
        epoch_indices(0, 0, 10, batch_size)


def test_negative_seed_is_named():
    with pytest.raises(ValueError, match="`seed`"):
        epoch_indices(-1, 0, 10, 2)


def test_dict_batches_gather_the_right_rows():
    data = {"x": np.arange(20) * 10, "y": np.arange(20)[:, None] * np.ones((1, 3))}
    out = list(batches(data, 4, seed=1, epoch=0))
    order = epoch_indices(1, 0, 20, 4)
    assert len(out) == 5
    for batch, idx in zip(out, order):
        np.testing.assert_array_equal(batch["index"], idx)
        np.testing.assert_array_equal(batch["x"], idx * 10)
        assert batch["y"].shape == (4, 3)
        np.testing.assert_array_equal(batch["y"][:, 0], idx)


@pytest.mark.parametrize("start", [0, 1, 7, 44])
def test_resumed_epoch_is_the_tail_of_the_full_epoch(digits, start):
    for data in digits:  # In-memory dict, then the tfds source.
        full = list(batches(data, 32, seed=4, epoch=2))
        resumed = list(batches(data, 32, seed=4, epoch=2, start=start))
        assert len(full) == 44 and len(resumed) == 44 - start
        for a, b in zip(full[start:], resumed):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_dict_and_source_give_the_same_batches(digits):
    arrays, source = digits
    for a, b in zip(batches(arrays, 64, seed=0, epoch=1), batches(source, 64, seed=0, epoch=1)):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
        assert b["image"].shape == (64, 8, 8, 1)


def test_mismatched_lengths_name_the_key():
    with pytest.raises(ValueError, match="'y'"):
        batches({"x": np.zeros(10), "y": np.zeros(9)}, 2, seed=0, epoch=0)


def test_bad_start_and_data_are_named_when_called():
    data = {"x": np.zeros(10)}
    with pytest.raises(ValueError, match="`start`"):
        batches(data, 2, seed=0, epoch=0, start=6)
    with pytest.raises(TypeError, match="`data`"):
        batches([1, 2, 3], 1, seed=0, epoch=0)
