import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.multiobjective import auxiliary


def _numpy_bloop(jacobians, lbda, ema):
    m = np.zeros(jacobians[0].shape[1])
    outs = []
    for jac in jacobians:
        m = m + ema * (jac[0] - m)
        ratio = m @ jac[1] / (m @ m + 1e-7)
        outs.append(jac[0] + lbda * (jac[1] - ratio * m))
    return outs


def _run(agg, jacobians):
    params = {"w": jnp.zeros(jacobians[0].shape[1])}
    state, outs = agg.init(params), []
    for jac in jacobians:
        out, state = jax.jit(agg.update)({"w": jnp.asarray(jac, jnp.float32)}, state, params)
        outs.append(np.asarray(out["w"]))
    return outs, state


def test_matches_the_algorithm_over_several_steps():
    rng = np.random.default_rng(0)
    jacobians = [rng.standard_normal((2, 7)) for _ in range(4)]
    outs, _ = _run(auxiliary.bloop(lbda=0.3, ema=0.2), jacobians)
    for got, expected in zip(outs, _numpy_bloop(jacobians, 0.3, 0.2)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_ema_one_projects_the_auxiliary_gradient_off_the_main_one():
    jac = np.random.default_rng(1).standard_normal((2, 5))
    (out,), state = _run(auxiliary.bloop(lbda=1.0, ema=1.0), [jac])
    np.testing.assert_allclose(state.main_ema["w"], jac[0], rtol=1e-6)
    projected = out - jac[0]  # lbda * pi
    assert abs(projected @ jac[0]) < 1e-4 * np.linalg.norm(jac[0]) ** 2


def test_only_two_objectives():
    with pytest.raises(ValueError, match="num_objectives must be 2"):
        auxiliary.bloop(num_objectives=3)
    chain = optax.chain(auxiliary.bloop(), optax.sgd(0.1))
    update, _ = chain.update({"w": jnp.ones((2, 3))}, chain.init({"w": jnp.zeros(3)}))
    assert update["w"].shape == (3,)
