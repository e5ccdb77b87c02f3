import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import weight_decay as wd
from jaxreg.protocol import runner

LRS = [1e-4, 1e-3, 1e-2]
DECAYS = [1e-3, 1e-2, 1e-1]


def _surface(best_columns, seeds=3):
    """Errors [lr, decay, seed] with the minimum of each row at ``best_columns``."""
    errors = np.full((len(LRS), len(DECAYS), seeds), 0.2)
    for i, j in enumerate(best_columns):
        errors[i, j] = 0.05 + 0.001 * np.arange(seeds)
    return errors


def test_coupling_slope_reads_the_best_decay_per_learning_rate():
    assert wd.coupling_slope(_surface([1, 1, 1]), LRS, DECAYS) == pytest.approx(0.0)
    # The best decay falls a decade per decade of learning rate: slope -1.
    assert wd.coupling_slope(_surface([2, 1, 0]), LRS, DECAYS) == pytest.approx(-1.0)
    assert wd.best_decays(_surface([2, 1, 0]), DECAYS) == [1e-1, 1e-2, 1e-3]
    errors = _surface([2, 1, 0])
    errors[1, 1] -= 0.01
    assert wd.best_cell(errors) == (1, 1)


def test_tolerated_decay_is_the_largest_within_the_margin():
    errors = np.array([[0.10, 0.102, 0.104, 0.3], [0.05, 0.05, 0.2, 0.3]])[..., None]
    assert wd.tolerated_decays(errors, [1, 2, 3, 4]) == [3, 2]


def test_claims_follow_the_rules():
    coupled, separable = _surface([2, 1, 0]), _surface([1, 1, 1])
    results = {"Adam + L2": {"test_error": coupled + 0.02},
               "AdamW (optax)": {"test_error": coupled},
               "decoupled (jaxreg)": {"test_error": separable}}
    for r in results.values():
        r.update(learning_rates=LRS, decays=DECAYS)
    assert [c.agrees for c in wd.claims(results)] == [True, True, True]
    results["Adam + L2"]["test_error"] = separable + 0.0
    results["decoupled (jaxreg)"]["test_error"] = coupled + 0.02
    assert [c.agrees for c in wd.claims(results)] == [False, True, False]


def test_decoupled_and_adamw_are_the_same_update_in_two_coordinates():
    """With decoupled decay lambda_d = alpha * lambda_w, the experiment's optimizer takes
    identical steps in AdamW's and in the decoupled coordinates (the reparameterization the
    module describes); with both decays 0 it is Adam, which leaves the L2 term to the loss."""
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    grads = jax.tree.map(lambda p: 0.1 * jnp.arange(p.size, dtype=p.dtype).reshape(p.shape),
                         params)
    alpha, lam = 1e-2, 0.5

    def run(adamw_decay, decoupled_decay):
        opt = wd.optimizer(total_steps=10)
        state = opt.init(params)
        state.hyperparams.update(learning_rate=jnp.asarray(alpha),
                                 adamw_decay=jnp.asarray(adamw_decay),
                                 decoupled_decay=jnp.asarray(decoupled_decay))
        p = params
        for _ in range(3):
            updates, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p

    adamw, decoupled, plain = run(lam, 0.0), run(0.0, alpha * lam), run(0.0, 0.0)
    for a, b in zip(jax.tree.leaves(adamw), jax.tree.leaves(decoupled)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    eta = optax.cosine_decay_schedule(1.0, 10)
    adam = optax.adam(lambda t: alpha * eta(t))
    state, p = adam.init(params), params
    for _ in range(3):
        updates, state = adam.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # Biases are not decayed: they move by the Adam step only, as without decay.
    np.testing.assert_allclose(adamw["dense"]["bias"], plain["dense"]["bias"], rtol=1e-6)
    assert not np.allclose(adamw["dense"]["kernel"], plain["dense"]["kernel"])


def test_l2_penalty_covers_kernels_only():
    params = {"dense": {"kernel": 2 * jnp.ones((3, 2)), "bias": jnp.ones((2,))}}
    np.testing.assert_allclose(wd.l2_penalty(params, 0.1), 0.5 * 0.1 * 6 * 4.0, rtol=1e-6)


def test_quick_run_reports_each_grid(tmp_path):
    payload = runner.main("weight-decay", ["--quick", "--out", str(tmp_path), "--no-progress"])
    grids = {"Adam + L2": [1e-5, 1e-1], "AdamW (optax)": [1e-3, 10.0]}
    for name, r in payload["methods"].items():
        assert np.shape(r["test_error"]) == (2, 2, 2), name  # lr, decay, seed
        assert np.all((np.asarray(r["test_error"]) >= 0) & (np.asarray(r["test_error"]) <= 1))
        assert np.all(np.isfinite(r["test_loss"])), name
        if name in grids:
            assert r["decays"] == grids[name]
    assert len(payload["claims"]) == 3
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"]["epochs"] == 1 and saved["train"]["seeds"] == [0, 1]
    assert saved["sweep"]["learning_rates"] == [1e-4, 1e-2]
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert "Variant `default`: 1437 training images" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "weight_decay.png").stat().st_size > 0


def test_small_variant_and_set_reach_the_run(tmp_path):
    small = wd.get_config("small")
    assert (small.data.train_per_class, small.train.epochs, small.train.batch_size,
            tuple(small.sweep.learning_rates)) == (20, 150, 32, (3e-4, 1e-3, 3e-3, 1e-2, 3e-2))
    assert wd.get_config().data.train_per_class == 0
    payload = runner.main("weight-decay", [
        "--config", "small", "--quick", "--out", str(tmp_path), "--no-progress",
        "--set", "model.hidden=16", "--set", "sweep.decays=0.01,1",
        "--set", "evaluation.bootstrap=50"])
    assert payload["train_size"] == 200
    assert payload["methods"]["AdamW (optax)"]["decays"] == [0.01, 1.0]  # --set after --quick
    assert payload["methods"]["decoupled (jaxreg)"]["learning_rates"] == [3e-4, 3e-2]
    assert payload["config"]["evaluation"]["bootstrap"] == 50
    text = (tmp_path / "results.md").read_text()
    assert "Variant `small`: 200 training images. MLP 64-16-10, Adam (batch 32" in text
    with pytest.raises(ValueError, match="unknown weight-decay variant 'tiny'.*default, small"):
        wd.get_config("tiny")


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("weight-decay", ["--out", str(tmp_path), "--no-progress"])
    errors = np.asarray(payload["methods"]["decoupled (jaxreg)"]["test_error"])
    assert errors.mean(-1).min() < 0.1


def test_first_per_class_is_balanced_and_checked():
    data = {"label": np.array([0, 1, 0, 2, 1, 0, 2, 2]), "image": np.arange(8)}
    picked = wd.first_per_class(data, 2)
    np.testing.assert_array_equal(picked["image"], [0, 1, 2, 3, 4, 6])
    with pytest.raises(ValueError, match="train_per_class"):
        wd.first_per_class(data, 3)
