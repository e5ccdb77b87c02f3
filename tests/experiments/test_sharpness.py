import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import sharpness
from jaxreg import models
from jaxreg.protocol import runner


def test_hessian_metrics_per_member_match_the_dense_hessian():
    model = models.mlp((4,), 3, hidden=(3,))
    rng = np.random.default_rng(0)
    train_set = {"image": rng.normal(size=(20, 4)).astype(np.float32),
                 "label": rng.integers(0, 3, size=20)}
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    stacked = jax.tree.map(lambda v: v.reshape(2, 1, *v.shape[1:]), jax.vmap(model.init)(keys))
    top, trace, loss = sharpness.hessian_metrics(model, stacked, train_set,
                                                 jax.random.PRNGKey(1), num_iterations=100,
                                                 num_samples=1000)
    assert top.shape == trace.shape == loss.shape == (2, 1)
    for k in range(2):
        member = jax.tree.map(lambda v, k=k: v[k, 0], stacked)
        flat, unravel = ravel_pytree(member)
        dense = jax.jit(jax.hessian(lambda f, unravel=unravel: sharpness.cross_entropy(
            model, unravel(f), jnp.asarray(train_set["image"]),
            jnp.asarray(train_set["label"]))))(flat)
        eigenvalues = np.linalg.eigvalsh(np.asarray(dense, np.float64))
        np.testing.assert_allclose(top[k, 0], eigenvalues[np.argmax(np.abs(eigenvalues))],
                                   rtol=1e-3)
        # Hutchinson: 1000 probes, standard error about 3 % here; 0.15 is 5 standard errors.
        np.testing.assert_allclose(trace[k, 0], eigenvalues.sum(), rtol=0.15)


def test_claims_follow_the_paired_rules():
    sgd = {"rhos": [0.0], "top_eigenvalue": [[2.0, 2.2, 1.8]], "hessian_trace": [[10.0] * 3],
           "test_accuracy": [[0.90, 0.91, 0.92]]}
    flatter = {"rhos": [0.05], "top_eigenvalue": [[1.0, 1.2, 0.9]],
               "hessian_trace": [[5.0, 6.0, 5.5]], "test_accuracy": [[0.90, 0.91, 0.92]]}
    sharper = {**flatter, "hessian_trace": [[11.0, 12.0, 10.5]],
               "test_accuracy": [[0.80, 0.82, 0.81]]}
    verdicts = sharpness.claims({"SGD": sgd, "SAM": flatter, "ASAM": sharper})
    assert [c.agrees for c in verdicts] == [True, True, False, False]


def test_quick_run_reports_every_method(tmp_path):
    payload = runner.main("sharpness", ["--quick", "--out", str(tmp_path), "--no-progress",
                                        "--set", "asam.rhos=0.5"])
    methods = payload["methods"]
    assert set(methods) == {"SGD", "SAM", "ASAM"}
    assert methods["SAM"]["rhos"] == [0.05, 0.1] and methods["ASAM"]["rhos"] == [0.5]
    for name, r in methods.items():
        for key in ("test_accuracy", "train_loss", "top_eigenvalue", "hessian_trace"):
            assert np.shape(r[key]) == (len(r["rhos"]), 2), (name, key)  # radii, seeds
            assert np.all(np.isfinite(r[key])), (name, key)
        assert all(0 <= a <= 1 for row in r["test_accuracy"] for a in row)
        assert np.all(np.asarray(r["top_eigenvalue"]) > 0)
        spectrum = r["spectrum"]
        assert np.shape(spectrum["nodes"]) == np.shape(spectrum["weights"]) == (5,)
        np.testing.assert_allclose(np.sum(spectrum["weights"]), 1.0, rtol=1e-4)
        assert max(spectrum["nodes"]) > 0  # a trained network's Hessian has a positive bulk
    assert len(payload["claims"]) == 4
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["epochs"] == 2 and saved["train"]["seeds"] == [0, 1]
    assert saved["hessian"]["power_iterations"] == saved["hessian"]["lanczos_steps"] == 5
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    text = (tmp_path / "results.md").read_text()
    assert text.count("| SAM |") == 2 and "Variant `default`" in text
    assert (tmp_path / "sharpness.png").stat().st_size > 0


def test_set_reaches_the_run_and_bad_variants_are_named(tmp_path):
    payload = runner.main("sharpness", [
        "--quick", "--out", str(tmp_path), "--no-progress", "--set", "model.hidden=16",
        "--set", "sam.rhos=0.2", "--set", "asam.rhos=0.7", "--set", "asam.eta=0.02",
        "--set", "optimizer.learning_rate=0.1"])
    assert payload["methods"]["SAM"]["rhos"] == [0.2]
    assert payload["methods"]["ASAM"]["rhos"] == [0.7]
    assert payload["claims"][0]["claim"].startswith("SAM (rho = 0.2)")
    text = (tmp_path / "results.md").read_text()
    assert "MLP 64-16-10, SGD (momentum 0.9, learning rate 0.1" in text
    assert "ASAM eta = 0.02" in text
    with pytest.raises(ValueError, match="unknown sharpness variant 'big'.*default"):
        sharpness.get_config("big")


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("sharpness", ["--out", str(tmp_path), "--no-progress"])
    assert np.mean(payload["methods"]["SGD"]["test_accuracy"]) > 0.9
