import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import objective


def _objective(params, batch, hparams, key):
    pred = batch["x"] @ params["w"] + params["b"]
    return {"fit": jnp.mean((pred - batch["y"]) ** 2),
            "l1": hparams["lam"] * jnp.sum(jnp.abs(params["w"])),
            "bias": params["b"] ** 2}


def _setup():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = {"w": jax.random.normal(k1, (3,)), "b": jnp.asarray(0.5)}
    batch = {"x": jax.random.normal(k2, (8, 3)), "y": jax.random.normal(k3, (8,))}
    return params, batch, {"lam": jnp.asarray(0.3)}


def test_term_gradients_equal_separate_gradients():
    params, batch, hparams = _setup()
    terms, jac, rows = objective.term_gradients(_objective, params, batch, hparams, None)
    assert list(terms) == ["bias", "fit", "l1"] and rows is None
    for i, name in enumerate(terms):
        expected = jax.grad(lambda p: _objective(p, batch, hparams, None)[name])(params)
        for leaf in ("w", "b"):
            np.testing.assert_allclose(jac[leaf][i], expected[leaf], rtol=1e-6, atol=1e-7)


def test_term_gradients_sum_to_gradient_of_sum():
    params, batch, hparams = _setup()
    _, jac, _ = objective.term_gradients(_objective, params, batch, hparams, None)
    total = jax.grad(lambda p: objective.weighted_sum(_objective(p, batch, hparams, None)))(params)
    np.testing.assert_allclose(jac["w"].sum(0), total["w"], rtol=1e-6)


def test_term_gradients_stateful_returns_rows():
    def stateful(params, batch, hparams, key, rows):
        return {"a": jnp.sum(params * rows)}, rows + 1.0

    terms, jac, rows = objective.term_gradients(stateful, jnp.ones(2), {}, {}, None,
                                                jnp.asarray([2.0, 3.0]))
    np.testing.assert_allclose(jac[0], [2.0, 3.0])
    np.testing.assert_allclose(rows, [3.0, 4.0])


def test_weighted_sum_hand_computed_and_traced_weights():
    terms = {"a": jnp.asarray(2.0), "b": jnp.asarray(5.0)}
    assert float(objective.weighted_sum(terms)) == 7.0
    assert float(objective.weighted_sum(terms, {"b": 0.1})) == pytest.approx(2.5)
    swept = jax.vmap(lambda w: objective.weighted_sum(terms, {"a": w}))(jnp.arange(3.0))
    np.testing.assert_allclose(swept, [5.0, 7.0, 9.0])
    with pytest.raises(KeyError, match="unknown terms"):
        objective.weighted_sum(terms, {"c": 1.0})


def test_bad_objective_outputs_are_named():
    params, batch, hparams = _setup()
    with pytest.raises(TypeError, match="term 'v' must be a scalar"):
        objective.evaluate(lambda *a: {"v": jnp.ones(3)}, params, batch, hparams, None)
    with pytest.raises(TypeError, match="non-empty dict"):
        objective.evaluate(lambda *a: jnp.ones(()), params, batch, hparams, None)
    with pytest.raises(TypeError, match=r"\(terms, new_rows\)"):
        objective.evaluate(lambda *a: {"v": 1.0}, params, batch, hparams, None, jnp.ones(2))


def test_term_order_puts_the_jacobian_rows_in_the_given_order():
    params, batch, hparams = _setup()
    _, jac, _ = objective.term_gradients(_objective, params, batch, hparams, None,
                                         order=("l1", "fit", "bias"))
    expected = jax.grad(lambda p: _objective(p, batch, hparams, None)["l1"])(params)
    np.testing.assert_allclose(jac["w"][0], expected["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="must list each term once"):
        objective.term_gradients(_objective, params, batch, hparams, None, order=("fit",))
