"""A sharded step computes the unsharded step: data-parallel, FSDP and data x FSDP on 8 fake
devices, for a summed objective, multi-objective aggregators and a batch-level loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from problem import (
    BATCH,
    CLASSES,
    HIDDEN,
    IN,
    STEPS,
    batch_level,
    features_of,
    init_params,
    logits_of,
    summed,
    two_tasks,
)

import jaxreg.multiobjective as mo
from jaxreg import losses, train
from jaxreg.optim.sharpness import sam
from jaxreg.train import sharding


def _batches(steps=STEPS):
    key = jax.random.PRNGKey(1)
    out = []
    for i in range(steps):
        kx, ky = jax.random.split(jax.random.fold_in(key, i))
        out.append({"x": np.asarray(jax.random.normal(kx, (BATCH, IN))),
                    "y": np.asarray(jax.random.randint(ky, (BATCH,), 0, CLASSES)),
                    "index": np.arange(i * BATCH, (i + 1) * BATCH, dtype=np.int32)})
    return out


LAYOUTS = {
    "data-parallel": (dict(data=8), sharding.data_parallel),
    "fsdp": (dict(data=1, fsdp=8), sharding.fully_sharded),
    "data2xfsdp4": (dict(data=2, fsdp=4), sharding.fully_sharded),
}
# The kernels' largest dimension is split by fsdp (the bias of 32 too, the one of 8 only when
# fsdp divides it); data-parallel replicates everything.
EXPECTED_SPECS = {
    "data-parallel": {"hidden/kernel": P(), "out/kernel": P(), "out/bias": P()},
    "fsdp": {"hidden/kernel": P(None, "fsdp"), "out/kernel": P("fsdp", None),
             "out/bias": P("fsdp")},
    "data2xfsdp4": {"hidden/kernel": P(None, "fsdp"), "out/kernel": P("fsdp", None),
                    "out/bias": P("fsdp")},
}


def _run(step, state, batches, jit):
    jitted = jit(step, state, batches[0])
    for batch in batches:
        state, metrics = jitted(state, batch)
    return state, metrics, jitted


def _compare(layout, objective, optimizer=optax.adam(0.05), atol=1e-6, **step_kwargs):
    sizes, plan_of = LAYOUTS[layout]
    mesh = sharding.make_mesh(**sizes)
    plan = plan_of(mesh, init_params())
    aggregator = step_kwargs.get("aggregator")
    state = train.init_state(init_params(), optimizer, key=jax.random.PRNGKey(2),
                             aggregator=aggregator)
    batches = _batches()
    single, single_metrics, _ = _run(train.make_step(objective, optimizer, **step_kwargs),
                                     state, batches,
                                     lambda f, s, b: jax.jit(f))
    sharded_step = train.make_step(objective, optimizer, sharding=plan, **step_kwargs)
    placed = plan.put_state(state)
    batches = [plan.put_batch(b, BATCH) for b in batches]
    out, metrics, jitted = _run(sharded_step, placed, batches, plan.jit_step)
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(out.params)[0],
                                 jax.tree.leaves(single.params)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))
    for name in single_metrics:
        np.testing.assert_allclose(metrics[name], single_metrics[name], rtol=1e-5, atol=atol,
                                   err_msg=name)
    return out, plan, jitted, batches[0]


def _spec(array):
    return array.sharding.spec


def _expect_specs(state, layout):
    """The parameters (and Adam's moments) are laid out as asked, not silently replicated."""
    expected = EXPECTED_SPECS[layout]
    leaves = {"hidden/kernel": state.params["hidden"]["kernel"],
              "out/kernel": state.params["out"]["kernel"], "out/bias": state.params["out"]["bias"]}
    for name, leaf in leaves.items():
        assert leaf.sharding.is_equivalent_to(
            jax.sharding.NamedSharding(leaf.sharding.mesh, expected[name]), leaf.ndim), (
            name, _spec(leaf), expected[name])
    if layout != "data-parallel":
        kernel = state.params["hidden"]["kernel"]
        assert {s.data.shape for s in kernel.addressable_shards} == {
            (IN, HIDDEN // kernel.sharding.mesh.shape["fsdp"])}
    adam = next(s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                if hasattr(s, "mu"))
    for moment in (adam.mu, adam.nu):
        assert moment["hidden"]["kernel"].sharding.is_equivalent_to(
            state.params["hidden"]["kernel"].sharding, 2)
    assert state.params["scale"].sharding.is_fully_replicated


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_summed_step(layout, devices):
    state, plan, jitted, batch = _compare(layout, summed)
    _expect_specs(state, layout)
    compiled = jitted.lower(state, batch).compile()
    state_in, batch_in = compiled.input_shardings[0]
    state_out, _ = compiled.output_shardings
    for asked, got_in, got_out in zip(jax.tree.leaves(plan.state(state)),
                                      jax.tree.leaves(state_in), jax.tree.leaves(state_out)):
        assert got_in.is_equivalent_to(asked, 2) or got_in.is_equivalent_to(asked, 0)
        assert got_out.spec == got_in.spec
    batch_axes = {"data-parallel": ("data", "fsdp"), "fsdp": ("data", "fsdp"),
                  "data2xfsdp4": ("data", "fsdp")}[layout]
    assert batch_in["x"].spec == P(batch_axes)
    assert {s.data.shape for s in batch["x"].addressable_shards} == {(BATCH // 8, IN)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", ["upgrad", "config"])
def test_multiobjective_step(layout, name, devices):
    aggregator = getattr(mo, name)()
    state, *_ = _compare(layout, two_tasks, aggregator=aggregator, atol=2e-6)
    _expect_specs(state, layout)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batch_level_loss(layout, devices):
    state, *_ = _compare(layout, batch_level)
    _expect_specs(state, layout)


def test_every_aggregator_under_data_x_fsdp(devices):
    """Each registered aggregator's sharded step equals its one-device step (2 x 4 mesh)."""
    from jaxreg import catalog

    def three_tasks(params, batch, hparams, key):  # Krum and TrimmedMean need m >= 3
        terms = two_tasks(params, batch, hparams, key)
        return {**terms, "scale": jnp.mean(params["scale"] ** 2) + terms["ce"] ** 2}

    entries = [e for e in catalog.ENTRIES if e.inputs.startswith("jacobian")]
    assert len(entries) >= 15, [e.name for e in entries]
    for entry in entries:
        m = 3 if entry.name in ("krum", "trimmed_mean") else 2
        aggregator = entry.fn(num_objectives=m)
        _compare("data2xfsdp4", two_tasks if m == 2 else three_tasks, optimizer=optax.sgd(0.1),
                 aggregator=aggregator, atol=5e-6)


def test_sharpness_aware_and_per_example_state(devices):
    """SAM's two gradients, and ELR's per-example targets gathered and scattered by index."""
    _compare("data2xfsdp4", summed, perturbation=sam(rho=0.05))

    def elr(params, batch, hparams, key, rows):
        logits = logits_of(params, batch["x"])
        loss, new_rows = losses.elr(logits, batch["y"], rows)
        return {"elr": loss.mean()}, new_rows

    optimizer = optax.sgd(0.1)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    plan = sharding.fully_sharded(mesh, init_params())
    state = train.init_state(init_params(), optimizer, key=jax.random.PRNGKey(2),
                             example_state=jnp.zeros((BATCH * STEPS, CLASSES)))
    single, _, _ = _run(train.make_step(elr, optimizer), state, _batches(),
                        lambda f, s, b: jax.jit(f))
    out, _, _ = _run(train.make_step(elr, optimizer, sharding=plan), plan.put_state(state),
                     [plan.put_batch(b, BATCH) for b in _batches()], plan.jit_step)
    np.testing.assert_allclose(out.example_state, single.example_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.params["out"]["kernel"], single.params["out"]["kernel"],
                               rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(out.example_state).sum()) > 0  # every row was written


def test_aggregation_on_the_shared_representation(devices):
    """MGDA-UB (``representation=``): weights from the features' Jacobian, one backward."""

    def heads(params, batch, hparams, key, *, representation):
        logits = params["scale"] * (representation @ params["out"]["kernel"]
                                    + params["out"]["bias"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return {"ce": ce, "reconstruction": jnp.mean((logits[:, :4] - batch["x"][:, :4]) ** 2)}

    _compare("data2xfsdp4", heads, aggregator=mo.mgda(num_objectives=2),
             representation=lambda params, batch: features_of(params, batch["x"]))


def test_batch_not_divisible_by_the_data_axes_is_named(devices):
    plan = sharding.data_parallel(sharding.make_mesh(data=8), init_params())
    with pytest.raises(ValueError, match="batch of 12 examples is not divisible by the mesh "
                                         r"axes \('data', 'fsdp'\)"):
        plan.put_batch({"x": np.zeros((12, IN))}, 12)


@pytest.mark.parametrize("engine", ["layers", "gramian", "jacobian"])
def test_per_example_objectives_with_each_engine(engine, devices):
    """IWRM (one objective per example) on a Flax MLP under data x FSDP: every engine's
    sharded step equals the one-device step (the layers engine's Gramian needs the
    activations of the whole batch: XLA gathers them)."""
    from jaxreg import models
    from jaxreg import objective as objective_lib

    model = models.mlp((IN,), CLASSES, hidden=(HIDDEN,))
    params = model.init(jax.random.PRNGKey(0))

    def iwrm(p, batch, hparams, key):
        ce = optax.softmax_cross_entropy_with_integer_labels(model.apply(p, batch["x"]),
                                                             batch["y"])
        return {"ce": objective_lib.per_example(ce)}

    optimizer, aggregator = optax.sgd(0.1), mo.upgrad(num_objectives=BATCH)
    state = train.init_state(params, optimizer, key=jax.random.PRNGKey(2), aggregator=aggregator)
    single, single_metrics, _ = _run(
        train.make_step(iwrm, optimizer, aggregator=aggregator, engine=engine), state,
        _batches(), lambda f, s, b: jax.jit(f))
    plan = sharding.fully_sharded(sharding.make_mesh(data=2, fsdp=4), params)
    out, metrics, _ = _run(
        train.make_step(iwrm, optimizer, aggregator=aggregator, engine=engine, sharding=plan),
        plan.put_state(state), [plan.put_batch(b, BATCH) for b in _batches()], plan.jit_step)
    for got, want in zip(jax.tree.leaves(out.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(metrics["ce"], single_metrics["ce"], rtol=1e-5)
