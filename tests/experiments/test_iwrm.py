import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import iwrm
from jaxreg import models, multiobjective, train
from jaxreg.objective import per_example
from jaxreg.protocol import runner


def test_quick_run_writes_table_json_and_plot(tmp_path):
    payload = runner.main("iwrm", ["--quick", "--out", str(tmp_path), "--no-progress"])
    assert list(payload["results"]) == ["mean", "upgrad"]
    assert payload["learning_rates"] == [0.03, 0.1]
    for r in payload["results"].values():
        assert np.shape(r["train_ce"]) == np.shape(r["test_accuracy"]) == (2, 2)  # [lr, seed]
        assert np.shape(r["train_ce_curve"]) == (2, 2, 2)  # [lr, seed, epoch]
        assert all(0 <= a <= 1 for row in r["test_accuracy"] for a in row)
    np.testing.assert_allclose(payload["results"]["mean"]["step_length"], 1.0, rtol=1e-4)
    assert len(payload["claims"]) == 3  # each learning rate, and each method's best
    text = (tmp_path / "results.md").read_text()
    assert "## The paper's claim" in text and "| 0.03 | UPGrad |" in text
    assert "1437 train / 360 test digits, MLP 64-64-64-10, plain SGD, batch 32" in text
    assert text.rstrip().endswith(runner.QUICK_NOTE)
    saved = json.loads((tmp_path / "results.json").read_text())["config"]
    assert saved["train"] == {"epochs": 2, "batch_size": 32, "seeds": [0, 1]}
    assert json.loads((tmp_path / "config.json").read_text()) == saved
    assert (tmp_path / "train_loss.png").stat().st_size > 10_000


def test_every_field_reaches_the_run_and_bad_arguments_are_named(tmp_path):
    payload = runner.main("iwrm", [
        "--quick", "--set", "methods.names=mgda", "--set", "methods.options.mgda.max_iters=7",
        "--set", "model.hidden=8", "--set", "train.batch_size=16", "--set", "train.epochs=1",
        "--set", "train.seeds=3", "--set", "optimizer.learning_rates=0.05",
        "--set", "data.train_size=1000", "--set", "data.split_seed=1",
        "--out", str(tmp_path), "--no-progress"])
    assert list(payload["results"]) == ["mean", "mgda"]  # mean: the ERM baseline, added
    assert payload["config"]["methods"]["options"]["mgda"]["max_iters"] == 7
    assert payload["claims"] == []  # no UPGrad, no verdict
    assert np.shape(payload["results"]["mgda"]["train_ce"]) == (1, 1)
    text = (tmp_path / "results.md").read_text()
    assert "1000 train / 797 test digits, MLP 64-8-10, plain SGD, batch 16" in text
    assert "1 epochs (62 steps); 1 learning rates x 1 seeds" in text
    with pytest.raises(ValueError, match="unknown iwrm variant 'cifar'; variants: default"):
        iwrm.get_config("cifar")
    with pytest.raises(ValueError, match=r"methods.names: unknown \['sgd'\]; available: mean"):
        iwrm.methods(runner.config_lib.override(iwrm.get_config(), ["methods.names=sgd"]))
    with pytest.raises(ValueError, match="optimizer.learning_rates is empty"):
        runner.main("iwrm", ["--quick", "--set", "optimizer.learning_rates=",
                             "--out", str(tmp_path / "bad"), "--no-progress"])


def test_mean_of_per_example_gradients_is_erm():
    """The baseline: the mean aggregator on per-example losses takes ERM's SGD step."""
    model = models.mlp((8, 8, 1), 10, hidden=(16,))
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(0), (12, 8, 8, 1)),
             "label": jnp.arange(12) % 10}

    def losses(params):
        logits = model.apply(params, batch["image"])
        return optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    params, sgd = model.init(jax.random.PRNGKey(1)), optax.sgd(0.1)
    aggregator = multiobjective.mean()
    step = train.make_step(lambda p, b, h, k: {"ce": per_example(losses(p))}, sgd,
                           aggregator=aggregator)
    state = train.init_state(params, sgd, key=jax.random.PRNGKey(2), aggregator=aggregator)
    new, _ = jax.jit(step)(state, batch)
    erm = jax.tree.map(lambda p, g: p - 0.1 * g, params,
                       jax.grad(lambda p: losses(p).mean())(params))
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(erm)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_claims_follow_the_numbers():
    erm = [[0.50, 0.52, 0.49], [0.20, 0.22, 0.21]]
    results = {"mean": {"train_ce": erm},
               "upgrad": {"train_ce": [[0.30, 0.33, 0.29], [0.25, 0.18, 0.21]]}}
    claims = iwrm.claims(results, [0.01, 0.1])
    assert [c.agrees for c in claims] == [True, False, False]
    assert "difference +0.1967, SE 0.0033, +59.0 SE" in claims[0].evidence
    assert "ERM 0.2100 at 0.1 (the sweep's edge), UPGrad 0.2133 at 0.1" in claims[2].evidence
    assert iwrm.claims({"mean": {"train_ce": erm}}, [0.01, 0.1]) == []


@pytest.mark.slow
def test_full_run(tmp_path):
    payload = runner.main("iwrm", ["--out", str(tmp_path), "--no-progress"])
    assert len(payload["claims"]) == len(iwrm.get_config().optimizer.learning_rates) + 1
