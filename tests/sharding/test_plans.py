"""Meshes and sharding plans: sizes, FSDP's axis choice, overrides, logical axis rules, and
the optimizer state following its parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxreg import train
from jaxreg.optim import multi_adam
from jaxreg.train import sharding


def test_make_mesh_sizes(devices):
    assert dict(sharding.make_mesh().shape) == {"grid": 1, "data": 8, "fsdp": 1, "tensor": 1}
    assert dict(sharding.make_mesh(fsdp=4).shape) == {"grid": 1, "data": 2, "fsdp": 4,
                                                      "tensor": 1}
    assert dict(sharding.make_mesh(grid=2, data=2, fsdp=-1).shape)["fsdp"] == 2
    mesh = sharding.make_mesh(data=2, fsdp=2, devices=devices[:4])
    assert mesh.devices.size == 4
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_errors_name_the_axis(devices):
    with pytest.raises(ValueError, match=r"mesh axes grid=1, fsdp=3, tensor=1 \(product 3\) do "
                                         "not divide the 8 devices, so `data` cannot be inferred"):
        sharding.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="multiply to 4, but there are 8 devices"):
        sharding.make_mesh(data=2, fsdp=2)
    with pytest.raises(ValueError, match="only one mesh axis can be inferred"):
        sharding.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="mesh axis `tensor` must be a positive integer"):
        sharding.make_mesh(tensor=0)


PARAMS = {"dense": {"kernel": jnp.zeros((24, 16)), "bias": jnp.zeros(16)},
          "head": {"kernel": jnp.zeros((16, 16)), "bias": jnp.zeros(5)},
          "odd": jnp.zeros((3, 7))}


def test_fully_sharded_takes_the_largest_divisible_axis(devices):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    specs = sharding.fully_sharded(mesh, PARAMS).param_specs
    assert specs["dense"]["kernel"] == P("fsdp", None)  # 24 > 16, both divisible by 4
    assert specs["head"]["kernel"] == P("fsdp", None)  # a tie: the first axis
    assert specs["dense"]["bias"] == P("fsdp")
    assert specs["head"]["bias"] == P() and specs["odd"] == P()  # nothing divisible by 4
    # fsdp of 8: 24 and 16 are divisible, 16 of the bias too
    specs = sharding.fully_sharded(sharding.make_mesh(fsdp=8), PARAMS).param_specs
    assert specs["dense"]["kernel"] == P("fsdp", None) and specs["dense"]["bias"] == P("fsdp")


def test_overrides_pin_leaves_by_path(devices):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    plan = sharding.fully_sharded(mesh, PARAMS, overrides={
        r"\['dense'\]\['kernel'\]": P(None, "fsdp"), r"bias": P()})
    assert plan.param_specs["dense"]["kernel"] == P(None, "fsdp")
    assert plan.param_specs["dense"]["bias"] == P()  # the second pattern
    assert plan.param_specs["head"]["kernel"] == P("fsdp", None)  # untouched
    with pytest.raises(ValueError, match=r"override 'decoder' matches no parameter; parameter "
                                         r"paths are: \['dense'\]\['bias'\]"):
        sharding.fully_sharded(mesh, PARAMS, overrides={"decoder": P()})
    with pytest.raises(ValueError, match=r"dimension 7 of shape \(3, 7\) is not divisible by "
                                         r"mesh axes \('fsdp',\)"):
        sharding.fully_sharded(mesh, PARAMS, overrides={"odd": P(None, "fsdp")})
    with pytest.raises(ValueError, match=r"names mesh axes \['model'\]"):
        sharding.fully_sharded(mesh, PARAMS, overrides={"odd": P("model")})


# A transformer layer's leaves with MaxText-style logical names.
LOGICAL_PARAMS = {"embedding": jnp.zeros((256, 64)), "query": jnp.zeros((64, 8, 8)),
                  "out": jnp.zeros((8, 8, 64)), "mlp_in": jnp.zeros((64, 256)),
                  "mlp_out": jnp.zeros((256, 64)), "norm": jnp.zeros(64)}
LOGICAL_AXES = {"embedding": P("vocab", "embed"), "query": P("embed", "heads", "head_dim"),
                "out": P("heads", "head_dim", "embed"), "mlp_in": P("embed", "mlp"),
                "mlp_out": P("mlp", "embed"), "norm": P("norm")}


def test_logical_rules_switch_the_strategy(devices):
    dp = sharding.from_logical_axes(sharding.make_mesh(), LOGICAL_PARAMS, LOGICAL_AXES,
                                    rules=sharding.DATA_PARALLEL)
    specs = jax.tree.leaves(dp.param_specs, is_leaf=lambda x: isinstance(x, P))
    assert len(specs) == 6 and all(all(axis is None for axis in spec) for spec in specs)
    assert dp.batch_axes == ("data", "fsdp")

    fsdp = sharding.from_logical_axes(sharding.make_mesh(data=1, fsdp=8), LOGICAL_PARAMS,
                                      LOGICAL_AXES, rules=sharding.FSDP)
    assert fsdp.param_specs["embedding"] == P(None, "fsdp")
    assert fsdp.param_specs["query"] == P("fsdp", None, None)
    assert fsdp.param_specs["mlp_in"] == P("fsdp", None)
    assert fsdp.param_specs["norm"] == P(None)

    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=4)
    both = sharding.from_logical_axes(mesh, LOGICAL_PARAMS, LOGICAL_AXES,
                                      rules=sharding.FSDP_TENSOR)
    assert both.param_specs["embedding"] == P("tensor", "fsdp")
    assert both.param_specs["query"] == P("fsdp", "tensor", None)
    assert both.param_specs["out"] == P("tensor", None, "fsdp")
    assert both.param_specs["mlp_in"] == P("fsdp", "tensor")
    assert both.param_specs["mlp_out"] == P("tensor", "fsdp")


def test_a_rule_that_does_not_divide_falls_back_to_replicated(devices):
    mesh = sharding.make_mesh(data=1, fsdp=8)
    rules = (("embed", "fsdp"), ("mlp", "fsdp"), ("mlp", "tensor"))
    assert sharding.logical_to_mesh(mesh, P("embed", "mlp"), (12, 16), rules) == P(None, "fsdp")
    # 12 % 8 != 0: embed stays whole and mlp takes fsdp; with embed on fsdp, mlp falls back
    assert sharding.logical_to_mesh(mesh, P("embed", "mlp"), (16, 16), rules) == P("fsdp", "tensor")
    with pytest.raises(ValueError, match="do not match a leaf of shape"):
        sharding.logical_to_mesh(mesh, P("embed"), (12, 16), sharding.FSDP)


def test_optimizer_state_follows_its_parameters(devices):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    params = {"enc": {"w": jnp.zeros((8, 16))}, "w": jnp.zeros((8, 16))}
    plan = sharding.fully_sharded(mesh, params, overrides={r"^\['w'\]$": P()})
    optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                            optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3))
    state = train.init_state(params, optimizer, key=jax.random.PRNGKey(0))
    shardings = plan.state(state)
    adam = shardings.opt_state[1].inner_state[0]
    assert adam.mu["enc"]["w"].spec == P(None, "fsdp")  # the longest matching path wins
    assert adam.mu["w"].spec == P() and adam.nu["enc"]["w"].spec == P(None, "fsdp")
    assert adam.count.spec == P()
    assert all(s.spec == P() for s in jax.tree.leaves(shardings.opt_state[1].hyperparams))
    assert shardings.key.spec == P() and shardings.step.spec == P()

    # per-objective moments [m, *shape] keep the parameter's spec on their trailing axes
    per_objective = train.init_state(params, multi_adam(1e-3, num_objectives=3),
                                     key=jax.random.PRNGKey(0))
    specs = {jax.tree_util.keystr(path): s.spec for path, s in
             jax.tree_util.tree_flatten_with_path(plan.state(per_objective).opt_state)[0]}
    moments = [spec for path, spec in specs.items() if path.endswith("['enc']['w']")]
    assert moments and all(spec == P(None, None, "fsdp") for spec in moments), specs


def test_fsdp_divides_the_bytes_each_device_holds(devices):
    params = {"w": jnp.ones((64, 32)), "b": jnp.ones(32)}
    replicated = sharding.data_parallel(sharding.make_mesh(), params)
    fsdp = sharding.fully_sharded(sharding.make_mesh(data=1, fsdp=8), params)
    full = sharding.per_device_bytes(jax.device_put(params, replicated.params()))
    split = sharding.per_device_bytes(jax.device_put(params, fsdp.params()))
    assert full == (64 * 32 + 32) * 4 and split == full // 8
    np.testing.assert_array_equal(jax.device_put(params, fsdp.params())["w"], params["w"])
