"""AdamP and SGDP against the official ``adamp`` package (golden trajectories)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.optim import scale_invariant as adamp_lib

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "adamp.json").read_text())
# PyTorch keeps output channels first; Flax kernels keep them last.
TO_FLAX = {"linear": (1, 0), "conv": (2, 3, 1, 0), "bias": (0,)}


def _flax(tree):
    return {k: jnp.asarray(np.transpose(np.asarray(v, np.float32), TO_FLAX[k]))
            for k, v in tree.items()}


def _build(name, hparams):
    kwargs = dict(hparams)
    lr = kwargs.pop("lr")
    if name.startswith("adamp"):
        if "betas" in kwargs:
            kwargs["b1"], kwargs["b2"] = kwargs.pop("betas")
        return adamp_lib.adamp(lr, **kwargs)
    return adamp_lib.sgdp(lr, **kwargs)


@pytest.mark.parametrize("name", sorted(GOLDEN["cases"]))
def test_matches_the_official_package_step_by_step(name):
    case = GOLDEN["cases"][name]
    opt = _build(name, case["hparams"])
    params = _flax(GOLDEN["init"])
    state = opt.init(params)
    update = jax.jit(opt.update)
    for t, grads in enumerate(GOLDEN["grads"]):
        updates, state = update(_flax(grads), state, params)
        params = optax.apply_updates(params, updates)
        expected = _flax(case["params"][t])
        for k in params:
            np.testing.assert_allclose(params[k], expected[k], rtol=2e-5, atol=2e-6,
                                       err_msg=f"{name} step {t} {k}")


def test_the_golden_case_exercises_both_branches():
    """The conv gradient is orthogonal to its weights (projected), the linear one is not."""
    params, grads = _flax(GOLDEN["init"]), _flax(GOLDEN["grads"][0])
    ratios = {k: adamp_lib.project_scale_invariant(params[k], grads[k], grads[k], delta=0.1,
                                                   wd_ratio=0.1, eps=1e-8)[1] for k in params}
    assert float(ratios["conv"]) == pytest.approx(0.1)
    assert float(ratios["linear"]) == 1.0 and float(ratios["bias"]) == 1.0


def test_projection_removes_the_radial_component_per_channel():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)  # Flax Dense kernel: 3 channels
    g = rng.normal(size=(5, 3))
    g = g - w * (np.sum(g * w, 0) / np.sum(w * w, 0))  # orthogonal per output channel
    step = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    projected, ratio = adamp_lib.project_scale_invariant(
        w, jnp.asarray(g, jnp.float32), step, delta=0.1, wd_ratio=0.1, eps=1e-8)
    np.testing.assert_allclose(np.sum(np.asarray(projected) * np.asarray(w), axis=0), 0.0,
                               atol=1e-5)
    assert float(ratio) == pytest.approx(0.1)
    # A gradient aligned with the weights is not scale-invariant: nothing changes.
    same, ratio = adamp_lib.project_scale_invariant(w, w, step, delta=0.1, wd_ratio=0.1,
                                                    eps=1e-8)
    np.testing.assert_array_equal(same, step)
    assert float(ratio) == 1.0


def test_learning_rate_can_be_traced_and_params_are_required():
    opt = optax.inject_hyperparams(adamp_lib.adamp, static_args=("channel_axis",))(
        learning_rate=0.01, weight_decay=0.1)
    params = _flax(GOLDEN["init"])
    state = opt.init(params)
    step = jax.jit(jax.vmap(lambda lr: opt.update(_flax(GOLDEN["grads"][0]),
                                                  state._replace(hyperparams={
                                                      **state.hyperparams, "learning_rate": lr}),
                                                  params)[0]["linear"]))
    out = step(jnp.array([0.01, 0.02]))
    np.testing.assert_allclose(out[1], 2 * out[0], rtol=1e-6)
    with pytest.raises(ValueError, match="adamp needs `params`"):
        adamp_lib.adamp(0.1).update(params, adamp_lib.adamp(0.1).init(params))
