import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg.optim import multi_adam

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "multi_adam.json").read_text())


def _numpy_multi_adam(grads, lr, b1=0.99, b2=0.99, eps=1e-8, weights=None, eps_inside=False):
    """PINNacle's ``sadam`` in float64, bias corrections in its order; ``lr`` may be callable.

    ``eps_inside`` moves eps before the bias correction of the root (a wrong placement the
    golden cases must tell apart).
    """
    m = len(grads[0])
    weights = np.full(m, 1.0 / m) if weights is None else np.asarray(weights)
    mu, nu, outs = np.zeros_like(grads[0]), np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        mu = b1 * mu + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g ** 2
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        root = np.sqrt(nu) / np.sqrt(bc2)
        denom = (np.sqrt(nu) + eps) / np.sqrt(bc2) if eps_inside else root + eps
        step_size = (lr(t - 1) if callable(lr) else lr) / bc1
        outs.append(-step_size * np.tensordot(weights, mu / denom, axes=1))
    return outs


def _tree(g):
    """``[m, 8]`` -> ``{"w": [m, 3, 2], "b": [m, 2]}`` (the golden files' parameter layout)."""
    g = jnp.asarray(g, jnp.float32)
    return {"w": g[:, :6].reshape(len(g), 3, 2), "b": g[:, 6:]}


def _vector(tree):
    return np.concatenate([np.ravel(tree["w"]), np.ravel(tree["b"])])


def _run(tx, grads):
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:]), _tree(grads[0]))
    state, outs = tx.init(params), []
    for g in grads:
        out, state = jax.jit(tx.update)(_tree(g), state, params)
        outs.append(_vector(out))
    return outs, state


def _golden_transformation(case):
    kwargs = case["kwargs"]
    b1, b2 = kwargs.get("betas", (0.99, 0.99))
    lr = kwargs["lr"]
    if case.get("lr_schedule"):
        base, decay = case["lr_schedule"]
        lr = optax.exponential_decay(base, transition_steps=1, decay_rate=decay)
    return multi_adam(lr, b1=b1, b2=b2, eps=kwargs.get("eps", 1e-8),
                      group_weights=kwargs.get("group_weights"),
                      num_objectives=len(case["group_gradients"][0]))


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_matches_the_reference_trajectory(case):
    tx = _golden_transformation(case)
    params = {"w": jnp.asarray(case["init"][:6], jnp.float32).reshape(3, 2),
              "b": jnp.asarray(case["init"][6:], jnp.float32)}
    state = tx.init(params)
    for grads, expected in zip(case["group_gradients"], case["params"]):
        update, state = jax.jit(tx.update)(_tree(grads), state, params)
        params = optax.apply_updates(params, update)
        np.testing.assert_allclose(_vector(params), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_numpy_reference_reproduces_the_golden_and_tells_eps_placement_apart(case):
    kwargs = case["kwargs"]
    grads = [np.asarray(g, np.float64) for g in case["group_gradients"]]
    lr = kwargs["lr"]
    if case.get("lr_schedule"):
        base, decay = case["lr_schedule"]
        lr = lambda t: base * decay ** t  # noqa: E731
    b1, b2 = kwargs.get("betas", (0.99, 0.99))
    common = dict(b1=b1, b2=b2, eps=kwargs.get("eps", 1e-8), weights=kwargs.get("group_weights"))
    start = np.asarray(case["init"], np.float64)
    trajectory = start + np.cumsum(_numpy_multi_adam(grads, lr, **common), axis=0)
    np.testing.assert_allclose(trajectory, case["params"], rtol=1e-6, atol=1e-6)
    if case["name"] == "group_weights_eps":  # eps comparable to the roots of small gradients
        wrong = start + np.cumsum(_numpy_multi_adam(grads, lr, eps_inside=True, **common), axis=0)
        assert np.abs(wrong - np.asarray(case["params"])).max() > 1e-4


def test_matches_numpy_on_groups_of_very_different_scales():
    rng = np.random.default_rng(0)
    scales = np.array([[1.0], [1e4], [1e-3]])
    grads = [rng.standard_normal((3, 8)) * scales for _ in range(6)]
    got, _ = _run(multi_adam(1e-2, b1=0.9, b2=0.999, eps=1e-3, num_objectives=3,
                             group_weights=(0.5, 0.3, 0.2)), grads)
    expected = _numpy_multi_adam(grads, 1e-2, b1=0.9, b2=0.999, eps=1e-3, weights=(0.5, 0.3, 0.2))
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-5, atol=1e-8)


def test_one_objective_is_adam():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal((1, 8)) for _ in range(5)]
    got, _ = _run(multi_adam(1e-2, num_objectives=1), grads)
    adam = optax.adam(1e-2, b1=0.99, b2=0.99, eps=1e-8)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    state = adam.init(params)
    for g, ours in zip(grads, got):
        update, state = adam.update(jax.tree.map(lambda x: x[0], _tree(g)), state)
        np.testing.assert_allclose(ours, _vector(update), rtol=1e-6, atol=1e-9)


def test_each_group_is_scale_invariant():
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal((2, 8)) for _ in range(4)]
    scaled = [g * np.array([[1.0], [1e4]]) for g in grads]
    a, _ = _run(multi_adam(1e-3, num_objectives=2, eps=0.0), grads)
    b, _ = _run(multi_adam(1e-3, num_objectives=2, eps=0.0), scaled)
    np.testing.assert_allclose(np.stack(a), np.stack(b), rtol=1e-5, atol=1e-9)  # lr 1e-3


def test_state_keeps_moments_per_objective_and_logs_nan_weights():
    grads = [np.ones((3, 8)) * np.array([[1.0], [2.0], [3.0]])]
    _, state = _run(multi_adam(1e-3, num_objectives=3), grads)
    np.testing.assert_allclose(state.adam.mu["b"], 0.01 * np.array([[1.0] * 2, [2.0] * 2,
                                                                     [3.0] * 2]), rtol=1e-6)
    assert state.adam.nu["w"].shape == (3, 3, 2)
    assert state.weights.shape == (3,) and np.all(np.isnan(state.weights))


def test_learning_rate_schedule_injection_scan_and_vmap():
    rng = np.random.default_rng(3)
    grads = np.stack([rng.standard_normal((2, 8)) for _ in range(5)]).astype(np.float32)
    schedule = optax.exponential_decay(1e-2, transition_steps=1, decay_rate=0.7)
    got, _ = _run(multi_adam(schedule, num_objectives=2), list(grads))
    expected = _numpy_multi_adam(list(grads.astype(np.float64)), lambda t: 1e-2 * 0.7 ** t)
    np.testing.assert_allclose(np.stack(got), np.stack(expected), rtol=1e-5, atol=1e-9)

    injected, _ = _run(optax.inject_hyperparams(multi_adam, static_args=("num_objectives",))(
        learning_rate=1e-2, num_objectives=2), list(grads))
    constant = _numpy_multi_adam(list(grads.astype(np.float64)), 1e-2)
    np.testing.assert_allclose(np.stack(injected), np.stack(constant), rtol=1e-5, atol=1e-9)

    def trajectory(lr, b1):
        tx = multi_adam(lr, b1=b1, num_objectives=2)
        step = lambda s, g: tx.update(_tree(g), s)[::-1]
        return jax.lax.scan(step, tx.init({"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}),
                            jnp.asarray(grads))[1]

    lrs, b1s = jnp.array([1e-2, 1e-3]), jnp.array([0.99, 0.9])
    swept = jax.jit(jax.vmap(trajectory))(lrs, b1s)
    for i in range(2):
        want = _numpy_multi_adam(list(grads.astype(np.float64)), float(lrs[i]), b1=float(b1s[i]))
        got = np.stack([_vector(jax.tree.map(lambda x: x[i, t], swept)) for t in range(5)])
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-9)


def test_finite_on_zero_and_scaled_gradients():
    base = np.random.default_rng(4).standard_normal((2, 8))
    for scale in (0.0, 1e-15, 1e-10, 1e3, 1e5, 1e10, 1e15):
        outs, _ = _run(multi_adam(1e-3, num_objectives=2), [base * scale] * 3)
        assert np.all(np.isfinite(outs)), scale
    zero, _ = _run(multi_adam(1e-3, num_objectives=2), [np.zeros((2, 8))])
    np.testing.assert_array_equal(zero[0], 0.0)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="give `num_objectives`"):
        multi_adam(1e-3)
    with pytest.raises(ValueError, match=r"`group_weights` must have shape \(2,\)"):
        multi_adam(1e-3, num_objectives=2, group_weights=(1.0, 2.0, 3.0))
    tx = multi_adam(1e-3, num_objectives=2)
    state = tx.init({"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match="built for num_objectives=2 but received 3"):
        tx.update({"w": jnp.ones((3, 3))}, state)
    with pytest.raises(ValueError, match="same leading objective axis"):
        tx.update({"w": jnp.ones((2, 3)), "b": jnp.ones((3, 1))},
                  tx.init({"w": jnp.zeros(3), "b": jnp.zeros(1)}))
