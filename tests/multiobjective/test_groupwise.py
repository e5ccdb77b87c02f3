"""Group-wise aggregation: each group of parameters aggregated on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import models, train
from jaxreg.multiobjective import gradvac, upgrad
from jaxreg.multiobjective.groupwise import groupwise, parameter_groups


def _jacobian(seed=0, m=3):
    rng = np.random.default_rng(seed)
    shapes = {"Dense_0": {"bias": (4,), "kernel": (2, 4)}, "Dense_1": {"bias": (2,),
                                                                       "kernel": (4, 2)}}
    return {"params": jax.tree.map(lambda s: jnp.asarray(rng.normal(size=(m, *s)),
                                                         jnp.float32), shapes,
                                   is_leaf=lambda s: isinstance(s, tuple))}


def test_groups_by_leaf_module_pattern_and_function():
    jac = _jacobian()
    # leaves in key order: Dense_0 bias, kernel; Dense_1 bias, kernel
    assert parameter_groups(jac, "leaf") == [[0], [1], [2], [3]]
    assert parameter_groups(jac, "module") == [[0, 1], [2, 3]]
    assert parameter_groups(jac, "all") == [[0, 1, 2, 3]]
    assert parameter_groups(jac, ["kernel"]) == [[0, 2], [1, 3]]
    assert parameter_groups(jac, lambda path: "Dense_1" in path) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="regular expression"):
        parameter_groups(jac, ["("])
    with pytest.raises(ValueError, match="`groups` must be"):
        parameter_groups(jac, "layer")


def test_all_in_one_group_is_the_plain_aggregator_and_leaves_are_independent():
    jac = _jacobian()
    params = jax.tree.map(lambda x: x[0], jac)
    plain = upgrad(num_objectives=3)
    expected, _ = plain.update(jac, plain.init(params))
    whole = groupwise(upgrad(num_objectives=3), "all", num_objectives=3)
    got, state = whole.update(jac, whole.init(params))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.isnan(state.weights)) and len(state.groups) == 1
    per_leaf = groupwise(upgrad(), "leaf")
    got, _ = jax.jit(per_leaf.update)(jac, per_leaf.init(params))
    for leaf_out, leaf_jac in zip(jax.tree.leaves(got), jax.tree.leaves(jac)):
        alone = upgrad()
        direction, _ = alone.update([leaf_jac], alone.init([leaf_jac[0]]))
        np.testing.assert_allclose(leaf_out, direction[0], rtol=1e-5, atol=1e-7)
    # per-leaf aggregation is non-conflicting leaf by leaf: <g_i restricted, d_leaf> >= 0
    for leaf_out, leaf_jac in zip(jax.tree.leaves(got), jax.tree.leaves(jac)):
        flat = np.asarray(leaf_jac).reshape(3, -1)
        assert np.all(flat @ np.ravel(leaf_out) >= -1e-5)


def test_a_stateful_aggregator_per_layer_in_a_train_step():
    model = models.mlp((4,), 3, hidden=(8,))
    params = model.init(jax.random.PRNGKey(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 4)), jnp.float32)

    def objective(p, batch, hparams, key):
        out = model.apply(p, x)
        return {"a": jnp.mean(out[:, 0] ** 2), "b": jnp.mean((out[:, 1] - 1) ** 2),
                "c": jnp.mean(out[:, 2] * out[:, 0])}

    agg = groupwise(gradvac(num_objectives=3), "module", num_objectives=3)
    opt = optax.sgd(0.05)
    state = train.init_state(params, opt, key=jax.random.PRNGKey(1), aggregator=agg)
    step = jax.jit(train.make_step(objective, opt, aggregator=agg))
    first = float(step(state, {})[1]["loss"])
    for _ in range(20):
        state, metrics = step(state, {})
    assert float(metrics["loss"]) < first
    targets = [s.inner[0] for s in state.opt_state[0].groups]  # GradVac's EMA per layer
    assert len(targets) == 2 and not np.allclose(targets[0], targets[1])
    with pytest.raises(ValueError, match="needs the Jacobian itself"):
        train.make_step(objective, opt, aggregator=agg, engine="layers")
