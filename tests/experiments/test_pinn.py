import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pinn
from jaxreg.protocol import runner


def test_source_is_minus_the_second_derivative_of_the_solution():
    x = jnp.linspace(0.0, 1.0, 17)
    u_xx = jax.vmap(jax.grad(jax.grad(pinn.solution)))(x)
    np.testing.assert_allclose(-u_xx, pinn.source(x), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(pinn.solution(jnp.asarray([0.0, 1.0])), 0.0, atol=1e-5)


def test_quick_run_reports_every_method(tmp_path):
    payload = runner.main("pinn", ["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == set(pinn.methods())
    for r in payload["results"].values():
        assert len(r["final"]) == 2 and all(np.isfinite(r["final"]))
        assert len(r["curve_mean"]) == 3  # the quick epochs
    assert len(payload["claims"]) == 6 and (tmp_path / "relative_l2.png").exists()
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["seeds"] == [0, 1] and saved["train"]["epochs"] == 3
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert "Variant `default`" in (tmp_path / "results.md").read_text()


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("pinn", ["--quick", "--out", str(tmp_path), "--no-progress",
                                   "--set", "methods=sum,config", "--set", "model.hidden=8,8",
                                   "--set", "data.collocation=256"])
    assert list(payload["results"]) == ["sum", "config"]
    assert [c["claim"] for c in payload["claims"]] == ["config reaches a lower error than sum"]
    text = (tmp_path / "results.md").read_text()
    assert "tanh MLP 1-8-8-1" in text and "256 collocation points" in text
    assert "3 epochs of 2 steps" in text
    with pytest.raises(ValueError, match="unknown pinn variant 'big'.*default"):
        pinn.get_config("big")


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("pinn", ["--out", str(tmp_path), "--no-progress"])
    assert all(r["final"][0] < 1.0 for r in payload["results"].values())
