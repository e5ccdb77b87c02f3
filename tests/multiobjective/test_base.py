import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import as_tree, flat, matrices

from jaxreg.multiobjective import base


def test_gramian_and_combine_match_the_flat_matrix():
    for name, matrix in matrices():
        tree = as_tree(matrix)
        np.testing.assert_allclose(base.gramian(tree), flat(tree) @ flat(tree).T, rtol=1e-5,
                                   atol=1e-6, err_msg=name)
        w = np.linspace(-1, 2, len(matrix)).astype(np.float32)
        combined = jax.tree.map(lambda x: x[None], base.combine(w, tree))
        np.testing.assert_allclose(flat(combined)[0], w @ flat(tree), rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_leaves_with_different_objective_counts_are_refused():
    with pytest.raises(ValueError, match="same leading objective axis"):
        base.gramian({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})


def test_from_weighting_is_an_optax_aggregator():
    halves = base.from_weighting(lambda g: jnp.full(g.shape[0], 0.5), num_objectives=2)
    params = {"w": jnp.zeros(3), "b": jnp.zeros(2)}
    chain = optax.chain(halves, optax.sgd(1.0))
    state = chain.init(params)
    jac = as_tree(np.array([[1.0, 2, 3, 4, 5], [3, 2, 1, 0, -1]]), split=3)
    update, state = jax.jit(chain.update)(jac, state, params)
    np.testing.assert_allclose(update["w"], [-2.0, -2.0, -2.0])
    np.testing.assert_allclose(state[0].weights, [0.5, 0.5])
    with pytest.raises(ValueError, match="built for num_objectives=2 but received 3"):
        chain.update(as_tree(np.ones((3, 5)), split=3), state, params)
    unlogged = base.from_weighting(lambda g: jnp.ones(g.shape[0]))
    assert unlogged.update(jac, unlogged.init(params))[1].weights.shape == (0,)
