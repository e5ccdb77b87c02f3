"""MultiDigits: two digits of one split overlaid on a canvas, labelled left and right."""

import numpy as np
import pytest

from jaxreg.data import load_digits, load_multidigits, overlay_pairs
from jaxreg.data.multidigits import DIGIT_SIZE


@pytest.fixture(scope="module")
def digits():
    return {split: load_digits(split) for split in ("train", "test")}


def _rebuild(pairs, source, canvas, combine="max"):
    """Each pair's image, rebuilt from its two source digits and offsets."""
    out = []
    for li, ri, (ly, lx), (ry, rx) in zip(pairs["left_index"], pairs["right_index"],
                                          pairs["left_offset"], pairs["right_offset"]):
        a, b = np.zeros((canvas, canvas), np.float32), np.zeros((canvas, canvas), np.float32)
        a[ly:ly + DIGIT_SIZE, lx:lx + DIGIT_SIZE] = source["image"][li, ..., 0]
        y, x = canvas - DIGIT_SIZE - ry, canvas - DIGIT_SIZE - rx
        b[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = source["image"][ri, ..., 0]
        out.append(np.maximum(a, b) if combine == "max" else np.minimum(a + b, 1))
    return np.stack(out)[..., None]


def test_shapes_dtypes_and_ranges():
    pairs = load_multidigits("train", num_pairs=50, canvas=14, max_shift=2)
    assert pairs["image"].shape == (50, 14, 14, 1) and pairs["image"].dtype == np.float32
    for key in ("left", "right", "left_index", "right_index", "index"):
        assert pairs[key].shape == (50,) and pairs[key].dtype == np.int32
    assert pairs["left_offset"].shape == pairs["right_offset"].shape == (50, 2)
    assert 0 <= pairs["left_offset"].min() and pairs["right_offset"].max() <= 2
    assert 0 <= pairs["image"].min() and pairs["image"].max() <= 1
    np.testing.assert_array_equal(pairs["index"], np.arange(50))
    assert set(pairs["left"]) <= set(range(10)) and set(pairs["right"]) <= set(range(10))


def test_default_size_is_the_splits(digits):
    for split in ("train", "test"):
        assert len(load_multidigits(split)["left"]) == len(digits[split]["label"])


def test_deterministic_from_the_seed():
    a, b = load_multidigits("test", num_pairs=30, seed=3), load_multidigits("test", num_pairs=30,
                                                                              seed=3)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = load_multidigits("test", num_pairs=30, seed=4)
    assert not np.array_equal(a["left_index"], c["left_index"])


@pytest.mark.parametrize("combine", ["max", "sum"])
def test_images_and_labels_are_the_source_digits(digits, combine):
    for split in ("train", "test"):
        pairs = load_multidigits(split, num_pairs=40, seed=1, combine=combine)
        source = digits[split]
        np.testing.assert_array_equal(pairs["left"], source["label"][pairs["left_index"]])
        np.testing.assert_array_equal(pairs["right"], source["label"][pairs["right_index"]])
        assert np.all(pairs["left_index"] != pairs["right_index"])
        np.testing.assert_array_equal(pairs["image"], _rebuild(pairs, source, 12, combine))


def test_train_and_test_pairs_use_disjoint_sources(digits):
    """Train pairs are built from the train split's digits, test pairs from the test split's:
    no test pair holds an image that a train pair holds."""
    train = load_multidigits("train", num_pairs=3000, seed=0)
    test = load_multidigits("test", num_pairs=1000, seed=0)
    assert train["left_index"].max() < len(digits["train"]["label"])
    assert test["right_index"].max() < len(digits["test"]["label"])
    # (nearly) every test digit is used, and no test image is among the train sources
    used_test = np.union1d(test["left_index"], test["right_index"])
    used_train = np.union1d(train["left_index"], train["right_index"])
    test_images = {digits["test"]["image"][i].tobytes() for i in used_test}
    train_images = {digits["train"]["image"][i].tobytes() for i in used_train}
    assert len(used_test) > 0.95 * len(digits["test"]["label"])
    assert not test_images & train_images


def test_overlay_of_given_digits_places_them_in_the_corners():
    images = np.zeros((2, 8, 8), np.float32)
    images[0, 0, 0] = 1.0   # the top-left pixel of digit 0
    images[1, 7, 7] = 0.5   # the bottom-right pixel of digit 1
    pairs = overlay_pairs(images, np.array([3, 4]), 20, canvas=10, max_shift=0, seed=0)
    for p in range(20):
        left = int(pairs["left_index"][p])
        image = pairs["image"][p, ..., 0]
        assert image[0, 0] == (1.0 if left == 0 else 0.0)      # left digit's corner
        assert image[9, 9] == (0.5 if left == 0 else 0.0)      # right digit's corner
        assert (pairs["left"][p], pairs["right"][p]) == ((3, 4) if left == 0 else (4, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="validation"), r"`split` must be one of \('train', 'test'\)"),
    (dict(num_pairs=0), "`num_pairs` must be a positive integer, got 0"),
    (dict(num_pairs=2.5), "`num_pairs` must be a positive integer"),
    (dict(max_shift=-1), "`max_shift` must be a non-negative integer, got -1"),
    (dict(canvas=9, max_shift=2), r"`canvas` must be an integer of at least 8 \+ max_shift = 10"),
    (dict(combine="mean"), r"`combine` must be one of \('max', 'sum'\), got 'mean'"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_multidigits(**kwargs)


def test_bad_source_arrays_are_named():
    with pytest.raises(ValueError, match=r"`images` must have shape \[N, 8, 8\]"):
        overlay_pairs(np.zeros((3, 28, 28)), np.zeros(3), 2)
    with pytest.raises(ValueError, match=r"`labels` must have shape \[3\]"):
        overlay_pairs(np.zeros((3, 8, 8)), np.zeros(4), 2)
    with pytest.raises(ValueError, match="at least 2 digits"):
        overlay_pairs(np.zeros((1, 8, 8)), np.zeros(1), 2)
