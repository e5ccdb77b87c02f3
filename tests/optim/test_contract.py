"""The contract of every gradient transformation in the catalog (family ``optim``).

On a small Flax MLP: it runs under jit and inside the train step, each numeric
hyperparameter can be traced and vmapped (``optax.inject_hyperparams``) and changes the
result (for ordinary gradients or for gradients perpendicular to the weights), updates
stay finite for parameters and gradients from 0 to 1e4 and in bfloat16 (bfloat16
parameters get bfloat16 updates; the state keeps its dtypes), and with a learning rate it
decreases a convex loss. Float64 under ``jax_enable_x64``: ``tests/test_x64.py``.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import catalog, train
from jaxreg.models import mlp

ENTRIES = catalog.entries("optim")
IDS = [e.name for e in ENTRIES]
MODEL = mlp((6,), 3, hidden=(8,))
STATIC = ("channel_axis", "axis", "nesterov", "mask", "schedule")
PROXIMAL = ("prox_l1", "prox_group_lasso")  # applied after the gradient step, at its rate


def _params():
    return MODEL.init(jax.random.PRNGKey(0))


def _required(entry, params):
    """Arguments that are not hyperparameters (decay_to_anchor's anchor)."""
    if entry.name == "decay_to_anchor":
        return {"anchor": jax.tree.map(lambda p: 0.5 * p, params)}
    return {}


def _build(entry, params, **hparams):
    return entry.fn(**{**entry.hparams, **hparams}, **_required(entry, params))


def _batch():
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {"x": jax.random.normal(k1, (16, 6)), "y": jax.random.randint(k2, (16,), 0, 3)}


def _objective(params, batch, hparams, key):
    logits = MODEL.apply(params, batch["x"])
    return {"ce": optax.losses.softmax_cross_entropy_with_integer_labels(
        logits, batch["y"]).mean()}


def _extra(opt):
    """MoMo reads the loss value; make_step passes it to every extra-args transformation."""
    return {"value": jnp.asarray(1.0)} if isinstance(
        opt, optax.GradientTransformationExtraArgs) else {}


def _grads(params):
    return jax.grad(lambda p: _objective(p, _batch(), None, None)["ce"])(params)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_jit_and_train_step(entry):
    params = _params()
    opt = _build(entry, params)
    if entry.name in PROXIMAL:
        opt = optax.chain(optax.sgd(entry.hparams["learning_rate"]), opt)
    elif "learning_rate" not in entry.hparams:  # a transformation to chain before a rate
        opt = optax.chain(opt, optax.sgd(0.1))
    step = jax.jit(train.make_step(_objective, opt))
    state = train.init_state(params, opt, key=jax.random.PRNGKey(0))
    first = float(_objective(params, _batch(), None, None)["ce"])
    for _ in range(30):
        state, metrics = step(state, _batch())
    assert float(metrics["ce"]) < first, entry.name  # it descends a (locally) convex loss
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def _perpendicular(grads, params):
    """Gradients orthogonal to each weight tensor: what scale-invariant weights receive."""
    def one(g, w):
        norm2 = jnp.vdot(w, w)
        return g - jnp.where(norm2 > 0, jnp.vdot(w, g) / jnp.where(norm2 > 0, norm2, 1.0), 0) * w
    return jax.tree.map(one, grads, params)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.hparams],
                         ids=[e.name for e in ENTRIES if e.hparams])
def test_each_hyperparameter_is_traced_and_matters(entry):
    """Swept under vmap, each hyperparameter changes the update for ordinary gradients or
    for gradients perpendicular to the weights (AdamP's wd_ratio acts only on those)."""
    params = _params()
    gradient_sets = (_grads(params), _perpendicular(_grads(params), params))
    for name, value in entry.hparams.items():
        factory = functools.partial(entry.fn, **_required(entry, params))
        static = set(STATIC) & set(inspect.signature(factory).parameters)
        opt = optax.inject_hyperparams(factory, static_args=static)(**entry.hparams)
        state = opt.init(params)
        values = jnp.asarray([value, 10.0 * value + 0.05], jnp.float32)
        effect = False
        for grads in gradient_sets:
            def update(v, name=name, opt=opt, state=state, grads=grads):
                hp = {**state.hyperparams, name: v}
                return opt.update(grads, state._replace(hyperparams=hp), params,
                                  **_extra(opt))[0]

            leaves = jax.tree.leaves(jax.jit(jax.vmap(update))(values))
            assert all(np.all(np.isfinite(x)) for x in leaves), (entry.name, name)
            effect |= any(not np.allclose(x[0], x[1]) for x in leaves)
        assert effect, f"{entry.name}: hyperparameter {name} has no effect"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("magnitude", [0.0, 1e4])
def test_finite_at_extreme_and_bfloat16_inputs(entry, magnitude):
    params = jax.tree.map(lambda p: jnp.full_like(p, magnitude), _params())
    grads = jax.tree.map(lambda p: jnp.full_like(p, magnitude), params)
    opt = _build(entry, params)
    updates, _ = jax.jit(functools.partial(opt.update, **_extra(opt)))(
        grads, opt.init(params), params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(updates)), entry.name
    half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    opt = _build(entry, half)
    state = opt.init(half)
    updates, new_state = jax.jit(functools.partial(opt.update, **_extra(opt)))(
        _grads(half), state, half)
    assert all(np.all(np.isfinite(np.asarray(x, np.float32)))
               for x in jax.tree.leaves(updates)), entry.name
    # bfloat16 parameters get bfloat16 updates, and the state keeps its structure and dtypes
    assert {x.dtype for x in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}, entry.name
    assert jax.tree.structure(new_state) == jax.tree.structure(state), entry.name
    assert [x.dtype for x in jax.tree.leaves(new_state)] == [
        x.dtype for x in jax.tree.leaves(state)], entry.name
