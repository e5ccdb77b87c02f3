import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxreg import train


def _objective(params, batch, hparams, key):
    resid = batch["x"] @ params["w"] - batch["y"]
    return {"mse": jnp.mean(resid ** 2), "l2": hparams["wd"] * jnp.sum(params["w"] ** 2)}


def _data(n=16):
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {"x": jax.random.normal(k1, (n, 3)), "y": jax.random.normal(k2, (n,))}


def test_sgd_step_matches_hand_computation():
    data = _data()
    w = jnp.asarray([0.1, -0.2, 0.3])
    opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
    state = train.init_state({"w": w}, opt, key=jax.random.PRNGKey(0),
                             hparams={"wd": 0.5, "learning_rate": 0.1})
    assert set(state.hparams) == {"wd"}  # the learning rate went to the optimizer
    new, metrics = jax.jit(train.make_step(_objective, opt))(state, data)
    x, y = np.asarray(data["x"], np.float64), np.asarray(data["y"], np.float64)
    grad = 2 * x.T @ (x @ np.asarray(w) - y) / len(y) + 2 * 0.5 * np.asarray(w)
    np.testing.assert_allclose(new.params["w"], np.asarray(w) - 0.1 * grad, rtol=1e-5)
    expected_loss = np.mean((x @ np.asarray(w) - y) ** 2) + 0.5 * np.sum(np.asarray(w) ** 2)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
    assert int(new.step) == 1 and not np.array_equal(new.key, state.key)


def test_vmapped_hyperparameters_equal_separate_runs():
    data = _data()
    opt = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3, weight_decay=0.0)
    step = train.make_step(_objective, opt)
    params = {"w": jnp.ones(3)}

    def run(lr, wd, decay):
        state = train.init_state(params, opt, key=jax.random.PRNGKey(0),
                                 hparams={"learning_rate": lr, "wd": wd, "weight_decay": decay})
        for _ in range(3):
            state, _ = step(state, data)
        return state.params["w"]

    lrs, wds, decays = jnp.asarray([0.1, 0.01]), jnp.asarray([0.0, 1.0]), jnp.asarray([0.0, 0.1])
    swept = jax.jit(jax.vmap(run))(lrs, wds, decays)
    for i in range(2):
        np.testing.assert_allclose(swept[i], run(lrs[i], wds[i], decays[i]), rtol=1e-6)
    assert not np.allclose(swept[0], swept[1])


def test_example_state_rows_are_gathered_and_scattered():
    def counting(params, batch, hparams, key, rows):
        return {"loss": jnp.sum(params ** 2)}, rows + batch["x"][:, :1]

    state = train.init_state(jnp.ones(2), optax.sgd(0.1), key=jax.random.PRNGKey(0),
                             example_state=jnp.zeros((6, 1)))
    batch = {"x": jnp.asarray([[2.0], [5.0]]), "index": jnp.asarray([4, 1])}
    new, _ = train.make_step(counting, optax.sgd(0.1))(state, batch)
    np.testing.assert_allclose(new.example_state[:, 0], [0, 5, 0, 0, 2, 0])
