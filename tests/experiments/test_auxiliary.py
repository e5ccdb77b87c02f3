import numpy as np
import pytest

from jaxreg.data import load_digits
from jaxreg.experiments import auxiliary


def test_labelled_mask_is_stratified_and_seeded():
    labels = load_digits("train")["label"]
    mask = auxiliary.labelled_mask(labels, 0.1, seed=0)
    for c in range(10):
        assert abs(mask[labels == c].sum() - round(0.1 * (labels == c).sum())) == 0
    assert np.array_equal(mask, auxiliary.labelled_mask(labels, 0.1, seed=0))
    assert not np.array_equal(mask, auxiliary.labelled_mask(labels, 0.1, seed=1))


def test_quick_run_reports_every_method(tmp_path):
    payload = auxiliary.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == set(auxiliary.methods())
    assert all(0 <= a <= 1 for r in payload["results"].values() for a in r["last"])
    assert len(payload["claims"]) == 2


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = auxiliary.main(["--out", str(tmp_path), "--no-progress"])
    assert payload["results"]["sum"]["last"][0] > 0.5
