"""FAMO, DWA, STCH, the geometric mean and PBI against torchjd 0.18 (the gradient of each
scalarizer with respect to the values, over consecutive steps), their limits, and the train
step's values engine."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import golden

from jaxreg import train
from jaxreg.multiobjective import balancing, scalarization, stochastic

GOLDEN = golden("torchjd_new")
SCALARIZERS = GOLDEN["scalarizers"]
VALUES = np.asarray(SCALARIZERS["values"])


def _weights_over_steps(weighting, values=VALUES, dtype=jnp.float32):
    state = weighting.init(values.shape[1], dtype)
    update = jax.jit(weighting.update)
    out = []
    for v in values:
        w, state = update(None, state, jnp.asarray(v, dtype))
        out.append(np.asarray(w))
    return np.stack(out), state


CASES = {
    "famo": lambda: scalarization.famo_weighting(3),
    "famo_lr0.5_min": lambda: scalarization.famo_weighting(
        3, lr=0.5, weight_decay=0.01, min_losses=[0.1, 0.2, 0.0]),
    "dwa_1": lambda: scalarization.dwa_weighting(3),
    "dwa_2_t0.5": lambda: scalarization.dwa_weighting(3, temperature=0.5, steps_per_epoch=2),
    "stch_1": lambda: scalarization._stateless(scalarization.stch_weights),
    "stch_0.1_pref_ref": lambda: scalarization._stateless(
        lambda v: scalarization.stch_weights(v, mu=0.1, pref=[0.2, 0.5, 0.3],
                                             reference=[0.1, 0.0, 0.5])),
    "geometric_mean": lambda: scalarization._stateless(scalarization.geometric_mean_weights),
    "pbi_5": lambda: scalarization._stateless(scalarization.pbi_weights),
    "pbi_2_pref_ref": lambda: scalarization._stateless(
        lambda v: scalarization.pbi_weights(v, theta=2.0, pref=[0.2, 0.5, 0.3],
                                            reference=[0.1, 0.0, 0.5])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torchjd_over_consecutive_steps(name):
    weighting = CASES[name]()
    assert not weighting.uses_gramian
    got, _ = _weights_over_steps(weighting)
    np.testing.assert_allclose(got, SCALARIZERS[name], rtol=1e-5, atol=1e-6,
                               err_msg=f"{name} ({GOLDEN['source']})")


def test_stateful_weights_move_and_keep_their_dtypes():
    for name in ("famo", "dwa_2_t0.5"):
        got, state = _weights_over_steps(CASES[name]())
        assert not np.allclose(got[-1], got[0])  # the state changed the weights
        assert all(jnp.result_type(x) in (jnp.float32, jnp.int32)
                   for x in jax.tree.leaves(state))


def test_aggregators_combine_the_weights():
    """``J^T w`` through the optax aggregator, the logged weights and the state round-trip."""
    rng = np.random.default_rng(0)
    jac = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
    params = {"w": jnp.zeros(4)}
    agg = scalarization.famo(num_objectives=3)
    state = agg.init(params)
    for v in VALUES[:3]:
        update, state = jax.jit(agg.update)(jac, state, params, values=jnp.asarray(v))
    expected, _ = _weights_over_steps(CASES["famo"](), VALUES[:3])
    np.testing.assert_allclose(state.weights, expected[-1], rtol=1e-5)
    np.testing.assert_allclose(update["w"], expected[-1] @ np.asarray(jac["w"]), rtol=1e-5,
                               atol=1e-6)


def test_limits_and_closed_forms():
    v = jnp.asarray([1.5, 0.8, 2.2])
    # STCH tends to the Tchebycheff weights as mu -> 0: lambda_k on the largest term
    for pref in (None, [0.5, 0.3, 0.2]):
        lam = np.full(3, 1 / 3) if pref is None else np.asarray(pref)
        w = np.asarray(scalarization.stch_weights(v, mu=1e-4, pref=pref))
        k = int(np.argmax(lam * np.asarray(v)))
        np.testing.assert_allclose(w, lam * np.eye(3)[k], atol=1e-6)
        # and to the weighted mean's lambda as mu -> inf
        np.testing.assert_allclose(scalarization.stch_weights(v, mu=1e6, pref=pref), lam / 3,
                                   rtol=1e-4)
    # geometric mean: weights GM / (m f_i), so w_i f_i is constant
    w = np.asarray(scalarization.geometric_mean_weights(v))
    np.testing.assert_allclose(w * np.asarray(v), np.full(3, np.exp(np.log(v).mean()) / 3),
                               rtol=1e-6)
    assert np.all(np.isnan(scalarization.geometric_mean_weights(jnp.asarray([1.0, -1.0]))))
    # PBI with theta = 0 is the projection on the preference direction
    np.testing.assert_allclose(scalarization.pbi_weights(v, theta=0.0, pref=[3.0, 4.0, 0.0]),
                               [0.6, 0.8, 0.0], rtol=1e-6)
    # FAMO: weights sum to one, equal to 1/m for equal values at the first step
    w, _ = scalarization.famo_weighting(3).update(None, scalarization.famo_weighting(3).init(
        3, jnp.float32), jnp.ones(3))
    np.testing.assert_allclose(w, np.full(3, 1 / 3), rtol=1e-6)
    # DWA: ones until two epochs have ended, then m softmax(r / T)
    got, _ = _weights_over_steps(scalarization.dwa_weighting(3, temperature=2.0))
    np.testing.assert_allclose(got[:2], 1.0)
    rates = VALUES[1] / VALUES[0]
    np.testing.assert_allclose(got[2], 3 * jax.nn.softmax(rates / 2.0), rtol=1e-6)


def test_bad_input_is_named():
    w = scalarization.famo_weighting(3)
    with pytest.raises(ValueError, match="pass `values`"):
        w.update(None, w.init(3, jnp.float32), None)
    with pytest.raises(ValueError, match=r"famo \(`values`\) was built for num_objectives=3"):
        w.update(None, w.init(3, jnp.float32), jnp.ones(2))
    agg = scalarization.stch(num_objectives=2)
    with pytest.raises(ValueError, match="`values`"):
        agg.update({"w": jnp.ones((2, 3))}, agg.init({"w": jnp.ones(3)}))
    with pytest.raises(ValueError, match="give `num_objectives`"):
        scalarization.famo(num_objectives=None)
    with pytest.raises(ValueError, match="`lr` must be >= 0"):
        scalarization.famo(num_objectives=2, lr=-1.0)
    with pytest.raises(ValueError, match="`weight_decay` must be >= 0"):
        scalarization.famo(num_objectives=2, weight_decay=-1.0)
    with pytest.raises(ValueError, match="`min_losses` must have one value per objective"):
        scalarization.famo(num_objectives=2, min_losses=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        scalarization.dwa(num_objectives=2, temperature=0.0)
    with pytest.raises(ValueError, match="`steps_per_epoch` must be a positive int"):
        scalarization.dwa(num_objectives=2, steps_per_epoch=0)
    with pytest.raises(ValueError, match="`mu` must be > 0"):
        scalarization.stch(mu=0.0)
    with pytest.raises(ValueError, match="`pref` must have one value per objective"):
        scalarization.stch(pref=[1.0, 2.0], num_objectives=3)
    with pytest.raises(ValueError, match="`reference` must have one value per objective"):
        scalarization.stch_weights(jnp.ones(3), reference=[1.0])
    with pytest.raises(ValueError, match="`theta` must be >= 0"):
        scalarization.pbi(theta=-1.0)


def _tiny_problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros(2)}

    def objective(p, batch, hparams, key):
        pred = batch["x"] @ p["w"] + p["b"]
        err = (pred - batch["y"]) ** 2
        return {"a": jnp.mean(err[:, 0]) + 0.1, "b": jnp.mean(err[:, 1]) + 0.1}

    return objective, params, {"x": x, "y": y}


@pytest.mark.parametrize("build", [
    lambda: scalarization.stch(mu=0.5, num_objectives=2),  # uses_gramian=False: one backward
    lambda: scalarization.famo(num_objectives=2),
    lambda: stochastic.modo(num_objectives=2),  # a Gramian weighting
    lambda: balancing.fairgrad(num_objectives=2),
], ids=["stch", "famo", "modo", "fairgrad"])
def test_make_step_engines_agree(build):
    objective, params, batch = _tiny_problem()
    results = {}
    for engine in ("jacobian", "auto"):
        aggregator = build()
        opt = optax.sgd(0.1)
        step = jax.jit(train.make_step(objective, opt, aggregator=aggregator, engine=engine))
        state = train.init_state(params, opt, key=jax.random.PRNGKey(0), aggregator=aggregator)
        for _ in range(3):
            state, metrics = step(state, batch)
        results[engine] = (state, metrics)
    (a, ma), (b, mb) = results["jacobian"], results["auto"]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ma["weight/a"], mb["weight/a"], rtol=1e-5)
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(params)[0])
