import jax
import numpy as np
import pytest

from jaxreg import models


@pytest.mark.parametrize("build", [
    lambda: models.mlp((8, 8, 1), 10, hidden=(16,)),
    lambda: models.cnn((8, 8, 1), 10, channels=(4, 8)),
])
def test_pure_init_and_apply(build):
    model = build()
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1))
    logits = jax.jit(model.apply)(params, x)
    assert logits.shape == (5, 10)
    # pure: same key, same parameters; vmap over keys gives one model per key
    again = model.init(jax.random.PRNGKey(0))
    assert all(np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
    stacked = jax.vmap(model.init)(jax.random.split(jax.random.PRNGKey(2), 3))
    outs = jax.vmap(model.apply, (0, None))(stacked, x)
    assert outs.shape == (3, 5, 10) and not np.allclose(outs[0], outs[1])


def test_mlp_layer_widths():
    params = models.mlp((8, 8, 1), 3, hidden=(7, 5)).init(jax.random.PRNGKey(0))
    shapes = [p.shape for p in jax.tree.leaves(params["params"])]
    assert sorted(shapes) == sorted([(7,), (64, 7), (5,), (7, 5), (3,), (5, 3)])


def test_cnn_rejects_flat_input_shape():
    with pytest.raises(ValueError, match="`input_shape` must be"):
        models.cnn((64,), 10)


def test_multitask_halves_compose_to_apply():
    model = models.multitask_mlp((8, 8, 1), {"digit": 10, "parity": 1}, hidden=(16, 8))
    params = model.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1))
    out = model.apply(params, x)
    assert out["digit"].shape == (5, 10) and out["parity"].shape == (5, 1)
    features = model.encode(params, x)
    assert features.shape == (5, 8)
    np.testing.assert_allclose(model.heads(params, features)["digit"], out["digit"])
    assert set(params) == {"trunk", "digit", "parity"}
