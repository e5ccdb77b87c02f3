import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.experiments import pinn


def test_source_is_minus_the_second_derivative_of_the_solution():
    x = jnp.linspace(0.0, 1.0, 17)
    u_xx = jax.vmap(jax.grad(jax.grad(pinn.solution)))(x)
    np.testing.assert_allclose(-u_xx, pinn.source(x), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(pinn.solution(jnp.asarray([0.0, 1.0])), 0.0, atol=1e-5)


def test_quick_run_reports_every_method(tmp_path):
    payload = pinn.main(["--quick", "--out", str(tmp_path), "--no-progress"])
    assert set(payload["results"]) == set(pinn.methods())
    for r in payload["results"].values():
        assert len(r["final"]) == 2 and all(np.isfinite(r["final"]))
    assert len(payload["claims"]) == 6 and (tmp_path / "relative_l2.png").exists()


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = pinn.main(["--out", str(tmp_path), "--no-progress"])
    assert all(r["final"][0] < 1.0 for r in payload["results"].values())
