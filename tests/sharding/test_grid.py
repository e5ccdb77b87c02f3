"""``grid`` on a mesh: configurations on the ``grid`` axis, each configuration's batch on
``data`` x ``fsdp`` (and its parameters on ``fsdp``), equal to the one-device grid."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from problem import dataset, init_params, summed, two_tasks

import jaxreg.multiobjective as mo
from jaxreg import cli, train
from jaxreg.optim.sharpness import sam
from jaxreg.train import sharding

OPT = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
KW = dict(hparams={"learning_rate": [0.05, 0.1, 0.2, 0.4]}, seeds=[0, 1], epochs=2,
          batch_size=16, progress=False)


def _init(key):
    return init_params(key)


def _evaluate(state, data):
    return {"w": state.params["out"]["kernel"][0, 0]}


def _compare(mesh=None, plan=None, objective=summed, **kw):
    kwargs = {**KW, **kw}
    single = train.grid(objective, OPT, _init, dataset(), evaluate=_evaluate, **kwargs)
    sharded = train.grid(objective, OPT, _init, dataset(), evaluate=_evaluate, mesh=mesh,
                         sharding=plan, **kwargs)
    for a, b in zip(jax.tree.leaves(sharded.state.params), jax.tree.leaves(single.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6)
    assert sharded.history.keys() == single.history.keys()
    for name in single.history:
        np.testing.assert_allclose(sharded.history[name], single.history[name], rtol=1e-5,
                                   atol=2e-6, err_msg=name)
    assert not np.allclose(sharded.state.params["out"]["kernel"][0],
                           sharded.state.params["out"]["kernel"][3])  # the rates differ
    return sharded


@pytest.mark.parametrize("explicit", [False, True], ids=["auto-mesh", "explicit-mesh"])
def test_configurations_over_the_grid_axis(explicit, devices):
    if explicit:  # jax.make_mesh's default axis type
        mesh = jax.make_mesh((4,), ("grid",), devices=devices[:4])
    else:
        mesh = jax.sharding.Mesh(np.array(devices[:4]), ("grid",))
    result = _compare(mesh)
    w = result.state.params["hidden"]["kernel"]
    assert w.sharding.is_equivalent_to(NamedSharding(mesh, P("grid")), w.ndim)
    assert len(w.addressable_shards) == 4 and w.addressable_shards[0].data.shape[0] == 1
    with pytest.raises(ValueError, match="3 configurations cannot be split evenly over the "
                                         "mesh's `grid` axis of 4 devices"):
        train.grid(summed, OPT, _init, dataset(), mesh=mesh,
                   hparams={"learning_rate": [0.1] * 3}, seeds=[0], epochs=1, batch_size=16)


def test_grid_axis_times_data_axis(devices):
    mesh = sharding.make_mesh(grid=4, data=2)
    result = _compare(mesh)
    w = result.state.params["hidden"]["kernel"]
    assert w.sharding.spec == P("grid", None)
    assert {s.data.shape for s in w.addressable_shards} == {(1, 2, 16, 32)}  # replicated on data


def test_grid_axis_times_fsdp(devices):
    mesh = sharding.make_mesh(grid=2, data=1, fsdp=4)
    plan = sharding.fully_sharded(mesh, init_params())
    result = _compare(plan=plan)
    w = result.state.params["hidden"]["kernel"]
    assert w.sharding.spec == P("grid", None, None, "fsdp")
    assert {s.data.shape for s in w.addressable_shards} == {(2, 2, 16, 8)}


@pytest.mark.parametrize("name", ["upgrad", "pcgrad", "nash_mtl"])
def test_aggregators_on_grid_times_data(name, devices):
    """The aggregator's state (PCGrad's key, Nash-MTL's warm start) lives with its
    configuration, and the result is the one-device result."""
    mesh = sharding.make_mesh(grid=4, data=2)
    result = _compare(mesh, objective=two_tasks, aggregator=getattr(mo, name)(num_objectives=2),
                      gradient_metrics=True)
    assert "train/cos/ce,reconstruction" in result.history


def test_sharpness_aware_grid_on_a_mesh(devices):
    _compare(sharding.make_mesh(grid=2, data=2, fsdp=2), perturbation=sam(rho=0.05))


def test_a_mesh_without_a_grid_axis_is_refused(devices):
    mesh = jax.make_mesh((8,), ("batch",))
    with pytest.raises(ValueError, match="has no `grid` axis"):
        train.grid(summed, OPT, _init, dataset(), mesh=mesh, **KW)
    with pytest.raises(ValueError, match="give `mesh` or `sharding`, not both"):
        plan = sharding.data_parallel(sharding.make_mesh(grid=8, data=1), init_params())
        train.grid(summed, OPT, _init, dataset(), mesh=plan.mesh, sharding=plan, **KW)


def test_grid_command_shards_over_devices(capsys, devices):
    code = cli.main(["grid", "--loss", "comp_sum", "--set", "tau=1.0,1.2,1.4,1.6,1.8,2.0,1.1,1.3",
                     "--seeds", "1", "--epochs", "1", "--shard"])
    assert code == 0 and "| tau=2.0, learning_rate=0.001 |" in capsys.readouterr().out
    assert cli.main(["grid", "--loss", "comp_sum", "--set", "tau=1.0,2.0", "--shard"]) == 2
    assert "cannot be split evenly over 8 devices" in capsys.readouterr().err
