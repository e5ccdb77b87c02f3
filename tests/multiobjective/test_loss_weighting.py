"""GradNorm against a NumPy re-implementation of the paper's equations; uncertainty
weighting against its closed-form optimum; both inside the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import as_tree, flat

from jaxreg import train
from jaxreg.multiobjective import loss_weighting as lw


def numpy_gradnorm(jacobians, values, alpha, lr):
    """Chen et al. 2018, Eqs. 1-3, with SGD on the weights and renormalisation to sum m.

    Returns the update of every step and the weights applied at it.
    """
    m = jacobians[0].shape[0]
    w, initial, updates, applied = np.ones(m), None, [], []
    for jac, loss in zip(jacobians, values):
        initial = loss if initial is None else initial
        norms = np.linalg.norm(jac, axis=1)
        g = w * norms
        ratio = loss / initial
        target = g.mean() * (ratio / ratio.mean()) ** alpha
        grad = np.sign(g - target) * norms
        updates.append(w @ jac)
        applied.append(w.copy())
        w = np.maximum(w - lr * grad, 0.0)
        w = m * w / w.sum()
    return updates, applied


def test_gradnorm_matches_the_papers_equations():
    rng = np.random.default_rng(0)
    m, n, steps = 3, 7, 6
    jacobians = [rng.normal(size=(m, n)) * np.array([[1.0], [3.0], [0.3]]) for _ in range(steps)]
    values = [np.array([2.0, 1.0, 4.0]) * np.exp(-np.array([0.1, 0.3, 0.05]) * t)
              for t in range(steps)]
    expected, weights = numpy_gradnorm(jacobians, values, alpha=1.5, lr=0.05)
    agg = lw.gradnorm(num_objectives=m, alpha=1.5, weight_optimizer=optax.sgd(0.05))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), as_tree(jacobians[0]))
    state = agg.init(params)
    update_fn = jax.jit(agg.update)
    for t in range(steps):
        update, state = update_fn(as_tree(jacobians[t]), state, params,
                                  values=jnp.asarray(values[t], jnp.float32))
        got = flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0]
        np.testing.assert_allclose(got, expected[t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.weights, weights[t], rtol=1e-5)
        np.testing.assert_allclose(np.sum(state.next_weights), m, rtol=1e-6)
    assert not np.allclose(weights[-1], 1.0)  # the weights moved


def test_gradnorm_balances_gradient_norms():
    """Equal training rates (alpha irrelevant): the weights drive w_i ||g_i|| together."""
    jac = np.array([[4.0, 0.0], [0.0, 1.0]])
    agg = lw.gradnorm(num_objectives=2, weight_optimizer=optax.sgd(0.01))
    params = {"w": jnp.zeros(2)}
    state = agg.init(params)
    for _ in range(300):
        _, state = agg.update({"w": jnp.asarray(jac)}, state, params, values=jnp.ones(2))
    scaled = np.asarray(state.next_weights) * np.array([4.0, 1.0])
    np.testing.assert_allclose(scaled[0], scaled[1], rtol=0.05)
    np.testing.assert_allclose(state.next_weights, [0.4, 1.6], rtol=0.05)


def test_gradnorm_layer_selects_the_balanced_parameters():
    jac = {"shared": jnp.array([[1.0, 0.0], [0.0, 1.0]]),
           "head": jnp.array([[100.0], [0.0]])}  # only task 0 has a head gradient
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), jac)
    for layer, moves in ((None, True), (lambda j: j["shared"], False)):
        agg = lw.gradnorm(num_objectives=2, weight_optimizer=optax.sgd(0.01), layer=layer)
        _, state = agg.update(jac, agg.init(params), params, values=jnp.ones(2))
        assert np.allclose(state.next_weights, 1.0) != moves


def test_gradnorm_needs_values_and_the_right_count():
    agg = lw.gradnorm(num_objectives=2)
    params = {"w": jnp.zeros(3)}
    with pytest.raises(ValueError, match="needs the objectives' values"):
        agg.update({"w": jnp.ones((2, 3))}, agg.init(params), params)
    with pytest.raises(ValueError, match="num_objectives=2 but received 3"):
        agg.update({"w": jnp.ones((3, 3))}, agg.init(params), params, values=jnp.ones(3))


def _objective(params, batch, hparams, key):
    pred = batch["x"] @ params["w"]
    return {"a": jnp.mean((pred[:, 0] - batch["y"][:, 0]) ** 2),
            "b": 10.0 * jnp.mean((pred[:, 1] - batch["y"][:, 1]) ** 2)}


def _batch():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"x": jax.random.normal(k1, (16, 3)), "y": jax.random.normal(k2, (16, 2))}


def test_gradnorm_in_the_train_step_receives_the_term_values():
    params, batch = {"w": jnp.zeros((3, 2))}, _batch()
    agg = lw.gradnorm(num_objectives=2)
    step = jax.jit(train.make_step(_objective, optax.sgd(0.01), aggregator=agg))
    state = train.init_state(params, optax.sgd(0.01), key=jax.random.PRNGKey(0), aggregator=agg)
    state, metrics = step(state, batch)
    terms = _objective(params, batch, None, None)
    np.testing.assert_allclose(state.opt_state[0].initial, [terms["a"], terms["b"]], rtol=1e-6)
    np.testing.assert_allclose([metrics["weight/a"], metrics["weight/b"]], [1.0, 1.0])
    state, metrics = step(state, batch)
    assert metrics["weight/a"] > 1.0 > metrics["weight/b"]  # b's gradient is 10x larger


def test_uncertainty_weighting_terms_and_their_optimum():
    params = lw.uncertainty_parameters({"w": jnp.zeros((3, 2))}, ["a", "b"], init=0.3)
    wrapped = lw.uncertainty_weighting(_objective, classification=["b"])
    batch = _batch()
    raw = _objective(params["model"], batch, None, None)
    terms = wrapped(params, batch, None, None)
    np.testing.assert_allclose(terms["a"], 0.5 * np.exp(-0.3) * raw["a"] + 0.15, rtol=1e-6)
    np.testing.assert_allclose(terms["b"], np.exp(-0.3) * raw["b"] + 0.15, rtol=1e-6)
    # With the model fixed, gradient descent on s reaches argmin c e^-s L + s/2 = log(2 c L).
    frozen = optax.multi_transform({"model": optax.set_to_zero(), "log_variance": optax.sgd(0.5)},
                                   {"model": "model", "log_variance": "log_variance"})
    step = jax.jit(train.make_step(wrapped, frozen))
    state = train.init_state(params, frozen, key=jax.random.PRNGKey(0))
    for _ in range(400):
        state, _ = step(state, batch)
    s = state.params["log_variance"]
    np.testing.assert_allclose(s["a"], np.log(2 * 0.5 * raw["a"]), atol=1e-4)
    np.testing.assert_allclose(s["b"], np.log(2 * 1.0 * raw["b"]), atol=1e-4)


def test_uncertainty_weighting_names_missing_terms():
    wrapped = lw.uncertainty_weighting(_objective)
    params = lw.uncertainty_parameters({"w": jnp.zeros((3, 2))}, ["a"])
    with pytest.raises(KeyError, match="every term needs a log variance"):
        wrapped(params, _batch(), None, None)
    with pytest.raises(KeyError, match="classification name must be a term"):
        lw.uncertainty_weighting(_objective, classification=["c"])(
            lw.uncertainty_parameters({"w": jnp.zeros((3, 2))}, ["a", "b"]), _batch(), None,
            None)
