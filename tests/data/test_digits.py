"""Tests for the scikit-learn digits tfds builder and loader."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sklearn.datasets

from jaxreg.data import SklearnDigits, data_source, load_digits, load_digits_splits

TOTAL = 1797


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("digits")
    return data_dir, {split: load_digits(split, data_dir=data_dir) for split in ("train", "test")}


def _sklearn_labels_by_image():
    digits = sklearn.datasets.load_digits()
    table = {}
    for image, label in zip(digits.images, digits.target):
        table.setdefault((image / 16.0).astype(np.float32).tobytes(), set()).add(int(label))
    return table


def test_shapes_dtypes_and_ranges(built):
    _, splits = built
    for data in splits.values():
        n = len(data["label"])
        assert data["image"].shape == (n, 8, 8, 1) and data["image"].dtype == np.float32
        assert data["label"].dtype == np.int32 and data["index"].dtype == np.int32
        assert data["image"].min() >= 0.0 and data["image"].max() <= 1.0
        assert data["image"].max() == 1.0  # Scaled by 16, not left as 0..16 or by 255.
        np.testing.assert_array_equal(data["index"], np.arange(n))
        assert set(np.unique(data["label"])) == set(range(10))


def test_sizes_add_up_and_images_are_sklearns(built):
    _, splits = built
    assert len(splits["train"]["label"]) + len(splits["test"]["label"]) == TOTAL
    assert len(splits["test"]["label"]) == 360  # test_size=0.2, rounded up by sklearn.
    loaded = np.concatenate([splits["train"]["image"], splits["test"]["image"]])
    expected = (sklearn.datasets.load_digits().images / 16.0).astype(np.float32)[..., None]
    # Same multiset of images: the split is a partition, nothing lost or duplicated.
    key = lambda images: sorted(image.tobytes() for image in images)
    assert key(loaded) == key(expected)


def test_labels_match_sklearn_for_the_same_images(built):
    _, splits = built
    table = _sklearn_labels_by_image()
    for data in splits.values():
        for image, label in zip(data["image"], data["label"]):
            assert int(label) in table[image[..., 0].tobytes()]


def test_split_is_stratified(built):
    _, splits = built
    full = np.bincount(sklearn.datasets.load_digits().target, minlength=10) / TOTAL
    for data in splits.values():
        counts = np.bincount(data["label"], minlength=10)
        # Stratification keeps each class within one example of its proportional share.
        np.testing.assert_allclose(counts, full * len(data["label"]), atol=1.0)


def test_split_is_deterministic_across_builds(built, tmp_path):
    _, splits = built
    for split, data in splits.items():
        again = load_digits(split, data_dir=tmp_path)
        for key in data:
            np.testing.assert_array_equal(again[key], data[key])


def test_data_source_is_random_access(built):
    data_dir, splits = built
    source = data_source("train", data_dir=data_dir)
    assert len(source) == len(splits["train"]["label"])
    picked = source.__getitems__([5, 0, 17])
    for position, example in zip([5, 0, 17], picked):
        assert example["index"] == position
        assert example["label"] == splits["train"]["label"][position]
        np.testing.assert_array_equal(example["image"], splits["train"]["image"][position])


def test_builder_metadata(built):
    data_dir, _ = built
    builder = SklearnDigits(data_dir=os.fspath(data_dir), file_format="array_record")
    assert builder.name == "sklearn_digits"
    assert str(builder.info.version) == "1.0.0"
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.features["label"].num_classes == 10


def test_bad_split_is_named(tmp_path):
    with pytest.raises(ValueError, match="`split`"):
        load_digits("validation", data_dir=tmp_path)


def test_builds_and_reads_without_tensorflow(tmp_path):
    # A fresh interpreter, so that no other test's imports count. tfds only uses TensorFlow
    # when it is importable or already imported; the project keeps it uninstalled, and the
    # builder and reader must work that way and must not import it.
    script = textwrap.dedent(f"""
        import importlib.util
        import sys

        assert importlib.util.find_spec("tensorflow") is None, "TensorFlow is installed"
        from jaxreg.data import load_digits
        data = load_digits("test", data_dir={os.fspath(tmp_path)!r})
        assert data["image"].shape == (360, 8, 8, 1), data["image"].shape
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_resplit_is_stratified_disjoint_and_covers_every_digit():
    train, test = load_digits_splits(train_size=1000, seed=3)
    assert len(train["label"]) == 1000 and len(test["label"]) == 797
    assert np.array_equal(train["index"], np.arange(1000))  # per-example state indexes rows
    pooled = [load_digits(s) for s in ("train", "test")]
    every = np.concatenate([p["image"] for p in pooled]).reshape(1797, -1)
    ours = np.concatenate([train["image"], test["image"]]).reshape(1797, -1)
    # the two splits are a partition of the 1797 images (as rows, order aside)
    assert sorted(map(bytes, every)) == sorted(map(bytes, ours))
    counts = np.bincount(train["label"], minlength=10) / 1000
    overall = np.bincount(np.concatenate([p["label"] for p in pooled]), minlength=10) / 1797
    np.testing.assert_allclose(counts, overall, atol=2e-3)  # stratified by class
    again, _ = load_digits_splits(train_size=1000, seed=3)
    other, _ = load_digits_splits(train_size=1000, seed=4)
    assert np.array_equal(again["image"], train["image"])
    assert not np.array_equal(other["image"], train["image"])
    default, _ = load_digits_splits()
    assert len(default["label"]) == 1437


@pytest.mark.parametrize("size", [5, 1790, 10.5])
def test_bad_train_size_is_named(size):
    with pytest.raises(ValueError, match="`train_size` must be an integer in"):
        load_digits("train", train_size=size)
