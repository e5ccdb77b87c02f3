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


def test_quick_run_reports_every_method_and_weight(tmp_path):
    payload = auxiliary.main(["--quick", "--aux", "weight-decay", "--aux-weights", "0.01", "1",
                              "--out", str(tmp_path), "--no-progress"])
    results = payload["tasks"]["weight-decay"]
    assert set(results) == set(auxiliary.methods())
    for name, r in results.items():
        assert np.shape(r["last"]) == ((1 if name == "main only" else 2), 2)  # weights, seeds
        assert all(0 <= a <= 1 for row in r["last"] for a in row)
    # A weight of 1 on half the squared norm shrinks the weights more than 0.01 does.
    assert np.mean(results["sum"]["aux_loss"][1]) < np.mean(results["sum"]["aux_loss"][0])
    assert len(payload["claims"]) == 2
    assert (tmp_path / "results.md").read_text().count("| bloop |") == 2


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = auxiliary.main(["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["tasks"]["recon"]["sum"]["last"][0]) > 0.5
