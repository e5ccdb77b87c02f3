import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import train
from jaxreg.multiobjective.base import from_weighting

CALLS = []


def _encode(params, batch):
    return jnp.tanh(batch["x"] @ params["enc"])


def _objective(params, batch, hparams, key, *, representation=None):
    CALLS.append(1)  # counted at trace time: forward passes per step
    z = _encode(params, batch) if representation is None else representation
    return {"reg": jnp.mean((z @ params["head_reg"] - batch["y"]) ** 2),
            "cls": jnp.mean(jax.nn.softplus(-(z @ params["head_cls"]) * batch["s"]))}


def _setup():
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"enc": jax.random.normal(k[0], (4, 3)), "head_reg": jax.random.normal(k[1], (3,)),
              "head_cls": jax.random.normal(k[2], (3,))}
    batch = {"x": jax.random.normal(k[3], (16, 4)), "y": jax.random.normal(k[4], (16,)),
             "s": jnp.sign(jax.random.normal(k[4], (16,)))}
    return params, batch


def _state(params, aggregator=None):
    return train.init_state(params, optax.sgd(0.1), key=jax.random.PRNGKey(1),
                            aggregator=aggregator)


def _grads(params, batch, name):
    return jax.grad(lambda p: _objective(p, batch, {}, None)[name])(params)


def test_per_term_step_with_unit_weights_equals_summed_step_from_one_forward():
    params, batch = _setup()
    ones = from_weighting(lambda g: jnp.ones(g.shape[0]), num_objectives=2)
    CALLS.clear()
    multi, metrics = jax.jit(train.make_step(_objective, optax.sgd(0.1), aggregator=ones,
                                             gradient_metrics=True, engine="jacobian"))(
        _state(params, ones), batch)
    assert len(CALLS) == 1  # one forward pass for both terms' gradients
    plain, _ = jax.jit(train.make_step(_objective, optax.sgd(0.1)))(_state(params), batch)
    for leaf in params:
        np.testing.assert_allclose(multi.params[leaf], plain.params[leaf], rtol=1e-5, atol=1e-6)
    flat = {n: np.concatenate([np.ravel(v) for v in jax.tree.leaves(_grads(params, batch, n))])
            for n in ("cls", "reg")}
    cosine = flat["cls"] @ flat["reg"] / np.linalg.norm(flat["cls"]) / np.linalg.norm(flat["reg"])
    np.testing.assert_allclose(metrics["cos/cls,reg"], cosine, rtol=1e-4)
    np.testing.assert_allclose(metrics["grad_norm/reg"], np.linalg.norm(flat["reg"]), rtol=1e-5)
    np.testing.assert_allclose([metrics["weight/cls"], metrics["weight/reg"]], [1.0, 1.0])


def test_representation_mode_is_mgda_ub():
    params, batch = _setup()
    fixed = from_weighting(lambda g: jnp.asarray([0.2, 0.8]), num_objectives=2)  # cls, reg
    step = train.make_step(_objective, optax.sgd(0.1), aggregator=fixed, representation=_encode,
                           gradient_metrics=True)
    new, metrics = jax.jit(step)(_state(params, fixed), batch)
    expected = jax.grad(lambda p: 0.2 * _objective(p, batch, {}, None)["cls"]
                        + 0.8 * _objective(p, batch, {}, None)["reg"])(params)
    for leaf in params:
        np.testing.assert_allclose(new.params[leaf], params[leaf] - 0.1 * expected[leaf],
                                   rtol=1e-5, atol=1e-6)
    z = _encode(params, batch)
    dz = {n: np.ravel(jax.grad(lambda f: _objective(params, batch, {}, None,
                                                    representation=f)[n])(z))
          for n in ("cls", "reg")}
    cosine = dz["cls"] @ dz["reg"] / np.linalg.norm(dz["cls"]) / np.linalg.norm(dz["reg"])
    np.testing.assert_allclose(metrics["cos/cls,reg"], cosine, rtol=1e-4)


def test_inconsistent_options_are_refused():
    ones = from_weighting(lambda g: jnp.ones(g.shape[0]))
    with pytest.raises(ValueError, match="`representation` needs an `aggregator`"):
        train.make_step(_objective, optax.sgd(0.1), representation=_encode)
    with pytest.raises(ValueError, match="not both"):
        train.make_step(_objective, optax.sgd(0.1), aggregator=ones, weights={"reg": 2.0})
    params, batch = _setup()
    step = train.make_step(_objective, optax.sgd(0.1), aggregator=ones, representation=_encode)
    with pytest.raises(ValueError, match="build it with num_objectives=2"):
        step(_state(params, ones), batch)


def test_grid_sweeps_an_injected_aggregator_hyperparameter():
    params, batch = _setup()
    scaled = optax.inject_hyperparams(
        lambda scale: from_weighting(lambda g: scale * jnp.ones(g.shape[0])))(scale=1.0)
    data = {k: np.asarray(v) for k, v in batch.items()}
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    result = train.grid(_objective, opt, lambda key: params, data, aggregator=scaled,
                        hparams={"scale": [0.5, 1.0], "learning_rate": [0.2, 0.1]}, seeds=[0],
                        epochs=2, batch_size=8, progress=False)
    w = result.state.params["enc"]  # half the weight at twice the rate: the same SGD path
    np.testing.assert_allclose(w[0, 0], w[1, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(w[0, 0], params["enc"])


