"""The engines give the Jacobian path's Gramian and update without forming the Jacobian:
on an MLP (every layer captured), a sequence model with a shared layer and a LayerNorm (the
positions form, and the fallback for what is not captured) and a CNN (convolutions fall
back), for multi-task, per-example (IWRM) and mixed objectives."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import models, train
from jaxreg import objective as objective_lib
from jaxreg.multiobjective import engine as engine_lib
from jaxreg.multiobjective import graddrop, mean, upgrad


class Sequence(nn.Module):
    """Dense on [B, T, d] (positions), a Dense called twice (shared), a LayerNorm."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(12)(x))  # [B, T, 12]
        shared = nn.Dense(12, use_bias=False)
        h = shared(nn.LayerNorm()(h)) + shared(h)
        return nn.Dense(5)(h.mean(axis=1))


class Tokens(nn.Module):
    """An embedding of token ids [B, T], a Dense on the sequence, and a head tied to the
    embedding through ``attend`` (a use the engine cannot capture: the table falls back)."""
    tied: bool = False

    @nn.compact
    def __call__(self, ids):
        embed = nn.Embed(11, 6)
        h = nn.tanh(nn.Dense(6)(embed(ids))).mean(axis=1)
        return embed.attend(h)[:, :5] if self.tied else nn.Dense(5)(h)


class Strided(nn.Module):
    """Convolutions with strides, dilation, explicit padding and no bias (the patches'
    geometry), and a 1-D convolution."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 2), strides=(2, 1), padding=((1, 0), (0, 2)))(x))
        h = nn.relu(nn.Conv(5, (2, 2), kernel_dilation=2, padding="SAME", use_bias=False)(h))
        h = nn.Conv(3, (2,), padding="VALID")(h.reshape(h.shape[0], -1, h.shape[-1]))
        return nn.Dense(5)(h.mean(axis=1))


def _strided():
    module = Strided()
    return (lambda key: module.init(key, jnp.zeros((1, 6, 5, 2)))), module.apply, (6, 5, 2)


def _tokens(tied):
    module = Tokens(tied)
    init = lambda key: module.init(key, jnp.zeros((1, 4), jnp.int32))  # noqa: E731
    return init, module.apply, None


def _mlp():
    model = models.mlp((6,), 5, hidden=(16, 8))
    return model.init, model.apply, (6,)


def _sequence():
    module = Sequence()
    return (lambda key: module.init(key, jnp.zeros((1, 3, 4)))), module.apply, (3, 4)


def _cnn():
    model = models.cnn((6, 6, 1), 5, channels=(4,))
    return model.init, model.apply, (6, 6, 1)


MODELS = {"mlp": _mlp, "sequence": _sequence, "cnn": _cnn, "strided": _strided,
          "tokens": lambda: _tokens(False), "tied": lambda: _tokens(True)}


def _objective(apply, kind):
    def fn(params, x, y):
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(apply(params, x), y)
        if kind == "tasks":
            return {"a": ce[:3].mean(), "b": ce[3:].mean(), "c": jnp.mean(ce ** 2)}
        if kind == "per_example":
            return {"ce": objective_lib.per_example(ce)}
        return {"ce": objective_lib.per_example(ce), "l2": 1e-2 * optax.tree.norm(params)}
    return fn


def _linearized(model, kind, engine, batch=7):
    init, apply, shape = MODELS[model]()
    params = init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    x = (jnp.asarray(rng.integers(0, 11, (batch, 4))) if shape is None
         else jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32))
    y = jnp.asarray(rng.integers(0, 5, batch))
    objective = _objective(apply, kind)

    def fn(p):
        terms = objective(p, x, y)
        return objective_lib.objective_vector(terms), None

    per_example = kind == "per_example"

    @jax.jit
    def computed(p, w):  # compiled: the engines' loops would dispatch op by op
        lin = engine_lib.linearize(fn, p, engine=engine, per_example=per_example)
        return lin.values, lin.gram, lin.combine(w), lin.jacobian is None

    m = int(jax.eval_shape(fn, params)[0].shape[0])
    w = jnp.asarray(np.random.default_rng(2).normal(size=(m,)), jnp.float32)
    return computed(params, w)


@pytest.mark.filterwarnings("ignore:engine='layers'")
@pytest.mark.parametrize("kind", ["tasks", "per_example", "mixed"])
@pytest.mark.parametrize("model", list(MODELS))
def test_gramian_and_update_equal_the_jacobian_path(model, kind):
    """G and J^T w (for a random w) of each engine against the Jacobian path's."""
    values, gram, expected, no_jacobian = _linearized(model, kind, "jacobian")
    assert not no_jacobian
    scale = float(jnp.max(jnp.abs(gram)))
    for engine in ("gramian", "layers"):
        got_values, got_gram, got, no_jacobian = _linearized(model, kind, engine)
        np.testing.assert_allclose(got_values, values, rtol=1e-6, err_msg=engine)
        np.testing.assert_allclose(got_gram, gram, atol=2e-5 * scale, rtol=1e-4,
                                   err_msg=engine)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, atol=2e-5 * float(jnp.max(jnp.abs(b))) + 1e-7,
                                       rtol=1e-4, err_msg=engine)
        assert no_jacobian


def test_layers_captures_convolutions_and_embeddings_but_not_a_tied_table(monkeypatch):
    monkeypatch.setattr(engine_lib, "_WARNED", set())
    with pytest.warns(UserWarning) as record:
        _linearized("cnn", "tasks", "layers")  # the convolutions and the head: no warning
        _linearized("strided", "per_example", "layers")
        _linearized("tokens", "tasks", "layers")
        _linearized("tied", "tasks", "layers")
    assert len(record) == 1 and "embedding" in str(record[0].message)


def test_layers_warns_once_about_what_it_does_not_capture(monkeypatch):
    monkeypatch.setattr(engine_lib, "_WARNED", set())  # earlier tests saw this model
    with pytest.warns(UserWarning, match=r"Dense_1.*LayerNorm") as record:
        _linearized("sequence", "tasks", "layers", batch=5)
        _linearized("sequence", "tasks", "layers", batch=5)
    assert len(record) == 1
    assert "Dense_0" not in str(record[0].message)  # the first layer is captured


def _step_result(engine, objective, aggregator, params, batch):
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_step(objective, opt, aggregator=aggregator, engine=engine))
    state = train.init_state(params, opt, key=jax.random.PRNGKey(0), aggregator=aggregator)
    state, metrics = step(state, batch)
    state, metrics = step(state, batch)  # the warm-started second step too
    return state, metrics


def test_make_step_engines_agree_for_iwrm_with_upgrad():
    model = models.mlp((6,), 5, hidden=(16,))
    params = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 5, 16))}

    def objective(p, b, h, k):
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]),
                                                                    b["y"])
        return {"ce": objective_lib.per_example(ce)}

    agg = upgrad(num_objectives=16)
    results = {e: _step_result(e, objective, agg, params, batch)
               for e in ("jacobian", "gramian", "layers", "auto")}
    reference, metrics = results["jacobian"]
    assert set(metrics) == {"loss", "ce", "aggregator/iterations"}  # nothing per example
    for engine, (state, m) in results.items():
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=engine)
        np.testing.assert_allclose(m["ce"], metrics["ce"], rtol=1e-6)
    # with the mean weighting, IWRM is ERM: the summed step on the mean loss, per engine
    summed, _ = _step_result("auto", objective, None, params, batch)
    for engine in ("jacobian", "layers"):
        state, _ = _step_result(engine, objective, mean(num_objectives=16), params, batch)
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(summed.params)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=engine)


def test_engine_arguments_are_checked():
    obj = lambda p, b, h, k: {"a": p["w"].sum(), "b": (p["w"] ** 2).sum()}  # noqa: E731
    with pytest.raises(ValueError, match="`engine` must be"):
        train.make_step(obj, optax.sgd(0.1), aggregator=upgrad(), engine="autogram")
    with pytest.raises(ValueError, match="needs the Jacobian itself"):
        train.make_step(obj, optax.sgd(0.1), aggregator=graddrop(), engine="layers")
    with pytest.raises(ValueError, match="needs an `aggregator`"):
        train.make_step(obj, optax.sgd(0.1), engine="gramian")
    with pytest.raises(ValueError, match="per_example"):
        objective_lib.per_example(jnp.ones((2, 2)))


def test_grid_trains_per_example_objectives_with_the_layers_engine():
    """Under grid's vmap over configurations and seeds, the layers engine trains IWRM as the
    Jacobian path does."""
    model = models.mlp((6,), 5, hidden=(8,))
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(32, 6)).astype(np.float32), "y": rng.integers(0, 5, 32)}

    def objective(p, b, h, k):
        ce = optax.losses.softmax_cross_entropy_with_integer_labels(model.apply(p, b["x"]),
                                                                    b["y"])
        return {"ce": objective_lib.per_example(ce)}

    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
    results = [train.grid(objective, opt, model.init, data,
                          hparams={"learning_rate": [0.05, 0.2]}, seeds=[0, 1], epochs=2,
                          batch_size=8, aggregator=upgrad(num_objectives=8), engine=engine,
                          progress=False) for engine in ("jacobian", "layers")]
    for a, b in zip(jax.tree.leaves(results[0].state.params),
                    jax.tree.leaves(results[1].state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(results[0].history["train/ce"], results[1].history["train/ce"],
                               rtol=1e-5)
    assert not np.allclose(results[1].state.params["params"]["Dense_0"]["kernel"][0, 0],
                           results[1].state.params["params"]["Dense_0"]["kernel"][1, 0])


def test_blocks_bound_the_jacobian_held_at_once():
    assert engine_lib.leaf_blocks([5, 5, 20, 1, 1], m=2, budget=20) == [[0, 1], [2], [3, 4]]
    assert engine_lib.leaf_blocks([3], m=4, budget=1) == [[0]]  # a large leaf: its own block
    model = models.mlp((6,), 5, hidden=(8,))
    params = model.init(jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
    values, vjp_fn = jax.vjp(lambda p: model.apply(p, x)[:, 0], params)
    basis = jnp.eye(4)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    rows = lambda e: jax.tree.leaves(vjp_fn(e)[0])  # noqa: E731
    one_block = engine_lib.blockwise_gramian(rows, sizes, basis)
    per_leaf = engine_lib.blockwise_gramian(rows, sizes, basis, budget=1)
    jac = jnp.concatenate([leaf.reshape(4, -1) for leaf in
                           jax.tree.leaves(jax.vmap(vjp_fn)(basis)[0])], axis=1)
    np.testing.assert_allclose(one_block, jac @ jac.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_leaf, jac @ jac.T, rtol=1e-5, atol=1e-6)
