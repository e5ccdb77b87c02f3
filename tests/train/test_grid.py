import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg import train
from jaxreg.data import epoch_indices


def _objective(params, batch, hparams, key):
    logits = batch["x"] @ params["w"]
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return {"ce": ce, "l2": hparams["wd"] * jnp.sum(params["w"] ** 2)}


def _init(key):
    return {"w": 0.1 * jax.random.normal(key, (4, 3))}


def _data(n=20):
    k1, k2 = jax.random.split(jax.random.PRNGKey(7))
    return {"x": jax.random.normal(k1, (n, 4)), "y": jax.random.randint(k2, (n,), 0, 3)}


OPT = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)


def test_grid_equals_sequential_runs():
    data = _data()
    hp = {"wd": [0.0, 0.1, 0.0], "learning_rate": [0.5, 0.5, 0.05]}
    result = train.grid(_objective, OPT, _init, data, hparams=hp, seeds=[3, 4], epochs=2,
                        batch_size=8, evaluate=lambda s, d: {"w_norm": jnp.sum(s.params["w"] ** 2)},
                        progress=False)
    step = jax.jit(train.make_step(_objective, OPT))
    for k, config in enumerate(result.configs):
        for s, seed in enumerate(result.seeds):
            init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
            state = train.init_state(_init(init_key), OPT, key=train_key, hparams=config)
            for epoch in range(2):
                for index in epoch_indices(seed, epoch, 20, 8):
                    batch = {"x": data["x"][index], "y": data["y"][index], "index": index,
                             "epoch": epoch}
                    state, _ = step(state, batch)
            np.testing.assert_allclose(result.state.params["w"][k, s], state.params["w"],
                                       rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result.last("eval/w_norm")[k, s],
                                       np.sum(np.asarray(state.params["w"]) ** 2), rtol=1e-5)
    assert result.history["train/loss"].shape == (3, 2, 2)
    with pytest.raises(KeyError, match="eval/w_norm"):
        result.last("eval/w_nrom")
    assert result.label(1) == "wd=0.1, learning_rate=0.5"
    rows = result.summary("eval/w_norm")
    assert rows[2]["learning_rate"] == 0.05 and rows[2]["best_mean"] >= rows[2]["last_mean"] - 1e-9


def test_seed_data_and_example_state_are_per_member():
    data = _data()
    flipped = jnp.stack([data["y"], (data["y"] + 1) % 3])  # one label set per seed

    def stateful(params, batch, hparams, key, rows):
        terms = _objective(params, batch, hparams, key)
        return terms, rows + 1.0

    result = train.grid(stateful, OPT, _init, {"x": data["x"]}, hparams={"wd": [0.0],
                        "learning_rate": [0.1]}, seeds=[0, 1], epochs=1, batch_size=5,
                        seed_data={"y": flipped},
                        init_example_state=lambda d: jnp.zeros(d["y"].shape[0]),
                        evaluate=lambda s, d: {"label_sum": jnp.sum(d["y"])}, progress=False)
    np.testing.assert_allclose(result.state.example_state[0, 0], np.ones(20))  # each seen once
    np.testing.assert_allclose(result.history["eval/label_sum"][0, :, 0],
                               [int(flipped[0].sum()), int(flipped[1].sum())])


def test_bad_grid_arguments_are_named():
    with pytest.raises(ValueError, match="same length"):
        train.grid(_objective, OPT, _init, _data(), hparams={"wd": [0.0, 1.0],
                   "learning_rate": [0.1]}, seeds=[0], epochs=1, batch_size=4)
    with pytest.raises(ValueError, match=r"seed_data\['y'\]"):
        train.grid(_objective, OPT, _init, {"x": _data()["x"]}, hparams={"wd": [0.0]},
                   seeds=[0, 1], epochs=1, batch_size=4, seed_data={"y": jnp.zeros((3, 20))})


def test_product_is_cartesian():
    assert train.product(a=[1, 2], b=["x", "y", "z"]) == {
        "a": [1, 1, 1, 2, 2, 2], "b": ["x", "y", "z", "x", "y", "z"]}


def test_on_epoch_sees_each_epochs_metrics():
    seen = []
    result = train.grid(_objective, OPT, _init, _data(), hparams={"wd": [0.0, 0.1],
                        "learning_rate": [0.5, 0.5]}, seeds=[0], epochs=3, batch_size=5,
                        on_epoch=lambda e, m: seen.append((e, m["train/loss"])), progress=False)
    assert [e for e, _ in seen] == [0, 1, 2]
    np.testing.assert_array_equal(np.stack([m for _, m in seen], -1), result.history["train/loss"])


def test_steps_per_epoch_takes_the_first_batches_of_each_epoch():
    data = _data()
    result = train.grid(_objective, OPT, _init, data, hparams={"wd": [0.0],
                        "learning_rate": [0.5]}, seeds=[3], epochs=2, batch_size=4,
                        steps_per_epoch=2, progress=False)
    step = jax.jit(train.make_step(_objective, OPT))
    init_key, train_key = jax.random.split(jax.random.PRNGKey(3))
    state = train.init_state(_init(init_key), OPT, key=train_key,
                             hparams={"wd": 0.0, "learning_rate": 0.5})
    for epoch in range(2):
        for index in epoch_indices(3, epoch, 20, 4)[:2]:
            state, _ = step(state, {"x": data["x"][index], "y": data["y"][index],
                                    "index": index, "epoch": epoch})
    assert int(result.state.step[0, 0]) == 4
    np.testing.assert_allclose(result.state.params["w"][0, 0], state.params["w"], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"`steps_per_epoch` must be an integer in \[1, 5\]"):
        train.grid(_objective, OPT, _init, data, hparams={"wd": [0.0]}, seeds=[0], epochs=1,
                   batch_size=4, steps_per_epoch=6)


@pytest.mark.parametrize("change, match", [
    ({"epochs": 0}, "`epochs` must be a positive integer, got 0"),
    ({"epochs": -1}, "`epochs` must be a positive integer, got -1"),
    ({"batch_size": 0}, r"`batch_size` must be an integer in \[1, 20\].*got 0"),
    ({"batch_size": 21}, r"`batch_size` must be an integer in \[1, 20\].*got 21"),
    ({"train_data": {}}, "`train_data` is an empty mapping"),
    ({"train_data": {"x": jnp.zeros((0, 4)), "y": jnp.zeros(0, int)}},
     "`train_data` holds no examples"),
    ({"train_data": {"x": jnp.zeros((20, 4)), "y": jnp.zeros(10, int)}},
     r"must share their leading .* \{'x': 20, 'y': 10\}"),
])
def test_bad_schedule_and_data_are_named(change, match):
    kw = {"hparams": {"wd": [0.0], "learning_rate": [0.1]}, "seeds": [0], "epochs": 1,
          "batch_size": 4, "progress": False, **change}
    with pytest.raises(ValueError, match=match):
        train.grid(_objective, OPT, _init, kw.pop("train_data", _data()), **kw)


def test_skip_nonfinite_keeps_a_diverging_member_and_spares_the_others():
    hp = {"wd": [0.1, float("nan")], "learning_rate": [0.5, 0.5]}  # member 1's l2 is NaN
    kw = {"hparams": hp, "seeds": [3], "epochs": 2, "batch_size": 8, "progress": False}
    skipping = train.grid(_objective, OPT, _init, _data(), skip_nonfinite=True, **kw)
    plain = train.grid(_objective, OPT, _init, _data(), **kw)
    np.testing.assert_array_equal(skipping.history["train/skipped"], [[[0.0, 0.0]],
                                                                      [[1.0, 1.0]]])
    init = _init(jax.random.split(jax.random.PRNGKey(3))[0])
    np.testing.assert_allclose(skipping.state.params["w"][1, 0], init["w"], rtol=1e-6)
    assert int(skipping.state.step[1, 0]) == 4
    np.testing.assert_allclose(skipping.state.params["w"][0], plain.state.params["w"][0],
                               rtol=1e-6, atol=1e-7)  # another program: fusion may round apart
    assert np.isnan(np.asarray(plain.state.params["w"][1])).all()  # without: poisoned
