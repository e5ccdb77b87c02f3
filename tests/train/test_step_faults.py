"""The step's answers to bad input: an empty batch is named at trace time, and with
``skip_nonfinite`` a NaN or inf leaves the state as it was on every path (summed, per-term
aggregator, representation, perturbation, per-example state, vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import train
from jaxreg.multiobjective.base import from_weighting
from jaxreg.optim.sharpness import sam


def _encode(params, batch):
    return jnp.tanh(batch["x"] @ params["enc"])


def _objective(params, batch, hparams, key, *, representation=None):
    z = _encode(params, batch) if representation is None else representation
    return {"reg": jnp.mean((z @ params["head"] - batch["y"]) ** 2),
            "l2": 0.01 * jnp.sum(params["head"] ** 2)}


def _setup(poison=None):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"enc": jax.random.normal(k[0], (4, 3)), "head": jax.random.normal(k[1], (3,))}
    batch = {"x": jax.random.normal(k[2], (8, 4)), "y": jax.random.normal(k[3], (8,))}
    if poison is not None:
        batch["y"] = batch["y"].at[2].set(poison)
    return params, batch


UNIT = from_weighting(lambda g: jnp.ones(g.shape[0]), num_objectives=2)
PATHS = {  # name -> (make_step keywords, init_state's aggregator)
    "summed": ({}, None),
    "aggregator": ({"aggregator": UNIT}, UNIT),
    "representation": ({"aggregator": UNIT, "representation": _encode}, UNIT),
    "perturbation": ({"perturbation": sam(rho=0.05)}, None),
}
OPT = optax.adam(0.1)


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_a_nonfinite_step_is_skipped_on_every_path(path, poison):
    kw, aggregator = PATHS[path]
    params, bad = _setup(poison)
    _, good = _setup()
    state = train.init_state(params, OPT, key=jax.random.PRNGKey(1), aggregator=aggregator)
    skipping = jax.jit(train.make_step(_objective, OPT, skip_nonfinite=True, **kw))
    new, metrics = skipping(state, bad)
    assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["reg"]))
    _leaves_equal(new.params, state.params)
    _leaves_equal(new.opt_state, state.opt_state)
    assert int(new.step) == 1
    np.testing.assert_array_equal(new.key, jax.random.split(state.key)[0])  # key advanced
    # a finite step is the plain step's, plus `skipped` = 0
    after, metrics = skipping(new, good)
    plain, plain_metrics = jax.jit(train.make_step(_objective, OPT, **kw))(new, good)
    assert float(metrics.pop("skipped")) == 0.0
    _leaves_equal(after, plain)
    assert metrics.keys() == plain_metrics.keys()
    # without skipping, the same batch poisons the parameters
    poisoned, _ = jax.jit(train.make_step(_objective, OPT, **kw))(state, bad)
    assert not np.isfinite(np.asarray(poisoned.params["enc"])).all()


def test_a_nonfinite_loss_with_finite_gradients_is_skipped():
    def constant_nan(params, batch, hparams, key):  # a term that does not depend on params
        return {"mse": jnp.mean((batch["x"] @ params["enc"]) ** 2),
                "bad": jnp.log(-1.0 - batch["y"][0] ** 2)}

    params, batch = _setup()
    state = train.init_state(params, OPT, key=jax.random.PRNGKey(1))
    new, metrics = train.make_step(constant_nan, OPT, skip_nonfinite=True)(state, batch)
    assert float(metrics["skipped"]) == 1.0
    _leaves_equal(new.params, params)


def test_skipping_keeps_the_per_example_rows():
    def counting(params, batch, hparams, key, rows):
        loss = jnp.sum(params ** 2) + jnp.sum(batch["x"])
        return {"loss": loss}, rows + batch["x"]

    state = train.init_state(jnp.ones(2), optax.sgd(0.1), key=jax.random.PRNGKey(0),
                             example_state=jnp.zeros((6, 1)))
    step = jax.jit(train.make_step(counting, optax.sgd(0.1), skip_nonfinite=True))
    bad = {"x": jnp.asarray([[2.0], [np.nan]]), "index": jnp.asarray([4, 1])}
    new, metrics = step(state, bad)
    assert float(metrics["skipped"]) == 1.0
    np.testing.assert_array_equal(new.example_state, np.zeros((6, 1)))
    good = {"x": jnp.asarray([[2.0], [5.0]]), "index": jnp.asarray([4, 1])}
    new, metrics = step(new, good)
    assert float(metrics["skipped"]) == 0.0
    np.testing.assert_array_equal(new.example_state[:, 0], [0, 5, 0, 0, 2, 0])


def test_skipping_is_per_member_under_vmap():
    params, good = _setup()
    _, bad = _setup(np.nan)
    batches = jax.tree.map(lambda a, b: jnp.stack([a, b]), good, bad)
    state = train.init_state(params, OPT, key=jax.random.PRNGKey(1))
    step = train.make_step(_objective, OPT, skip_nonfinite=True)
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    new, metrics = jax.jit(jax.vmap(step))(states, batches)
    np.testing.assert_array_equal(metrics["skipped"], [0.0, 1.0])
    alone, _ = step(state, good)
    np.testing.assert_allclose(new.params["enc"][0], alone.params["enc"], rtol=1e-6)
    np.testing.assert_array_equal(new.params["enc"][1], params["enc"])


def test_an_empty_batch_is_named_at_trace_time():
    params, batch = _setup()
    empty = {k: v[:0] for k, v in batch.items()}
    for kw, aggregator in PATHS.values():
        state = train.init_state(params, OPT, key=jax.random.PRNGKey(1), aggregator=aggregator)
        step = train.make_step(_objective, OPT, **kw)
        with pytest.raises(ValueError, match=r"`batch\['x'\]` holds no examples \(shape "
                                             r"\(0, 4\)\)"):
            jax.jit(step)(state, empty)
    # scalars (the epoch) stay allowed
    state = train.init_state(params, OPT, key=jax.random.PRNGKey(1))
    new, _ = jax.jit(train.make_step(_objective, OPT))(state, {**batch, "epoch": 0})
    assert int(new.step) == 1
    with pytest.raises(TypeError, match="`skip_nonfinite` must be a bool"):
        train.make_step(_objective, OPT, skip_nonfinite="yes")
