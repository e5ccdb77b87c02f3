import numpy as np
import pytest

from jaxreg.experiments import multitask


def test_quick_run_reports_every_task(tmp_path):
    payload = multitask.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == {"mean", "upgrad", "mgda_ub"}
    for r in payload["results"].values():
        assert set(r["last"]) == set(multitask.TASKS) and len(r["delta_m"]) == 2
        assert all(0 <= a <= 1 for t in ("digit", "parity", "gt4") for a in r["last"][t])
    np.testing.assert_allclose(payload["results"]["mean"]["delta_m"], 0.0)
    assert "## The papers' claim" in (tmp_path / "results.md").read_text()


def test_delta_m_signs():
    base = {"digit": [0.8], "parity": [0.9], "gt4": [0.9], "value": [0.2]}
    better = {"digit": [0.88], "parity": [0.9], "gt4": [0.9], "value": [0.1]}  # +10 %, +50 %
    np.testing.assert_allclose(multitask.delta_m(better, base), [15.0])


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = multitask.main(["--out", str(tmp_path), "--no-progress"])
    assert len(payload["results"]) == len(multitask.aggregators())
