"""The contrastive losses with ``axis_name`` on 8 fake devices: each device holds a shard of the
batch, and the sharded values and gradients equal the unsharded ones on the global batch."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg.losses import contrastive as c

N, V, D = 16, 2, 5  # 2 examples per device


def _cases(labels):
    """(name, loss of (differentiated inputs, axis_name), differentiated inputs, batch-level)."""
    rng = np.random.default_rng(0)

    def emb(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return [
        ("info_nce", lambda a, b, axis_name: c.info_nce(a, b, axis_name=axis_name),
         (emb(N, D), emb(N, D)), False),
        ("info_nce_symmetric",
         lambda a, b, axis_name: c.info_nce(a, b, temperature=0.2, symmetric=True,
                                            axis_name=axis_name),
         (emb(N, D), emb(N, D)), False),
        ("clip", lambda a, b, s, axis_name: c.clip(a, b, s, axis_name=axis_name),
         (emb(N, D), emb(N, D), jnp.float32(2.3)), False),
        ("supervised_contrastive",
         lambda f, y, axis_name: c.supervised_contrastive(f, y, axis_name=axis_name),
         (emb(N, V, D), labels), False),
        ("supervised_contrastive_one",
         lambda f, y, axis_name: c.supervised_contrastive(
             f, y, temperature=0.2, base_temperature=None, contrast_mode="one",
             axis_name=axis_name),
         (emb(N, 1, D), labels), False),  # one view: some anchors have no positive
        ("simclr", lambda f, axis_name: c.supervised_contrastive(f, axis_name=axis_name),
         (emb(N, V, D),), False),
        ("decoupled_contrastive",
         lambda a, b, axis_name: c.decoupled_contrastive(a, b, axis_name=axis_name),
         (emb(N, D), emb(N, D)), False),
        ("decoupled_contrastive_weighted",
         lambda a, b, axis_name: c.decoupled_contrastive_weighted(a, b, axis_name=axis_name),
         (emb(N, D), emb(N, D)), False),
        ("contrastive", lambda e, y, axis_name: c.pair_contrastive(e, y, axis_name=axis_name),
         (emb(N, D), labels), False),
        ("contrastive_mean",
         lambda e, y, axis_name: c.pair_contrastive(e, y, pos_margin=0.5, reducer="mean",
                                               axis_name=axis_name),
         (emb(N, D), labels), False),
        ("uniformity", lambda x, axis_name: c.uniformity(x, axis_name=axis_name),
         (emb(N, D),), True),
    ]


def _spec(x):
    return P() if jnp.ndim(x) == 0 else P("d")


def test_sharded_losses_equal_the_global_batch_loss(devices):
    mesh = jax.make_mesh((8,), ("d",))
    labels = jnp.asarray(np.random.default_rng(1).integers(0, 5, size=N), jnp.int32)
    weights = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, size=N), jnp.float32)
    for name, loss, inputs, batch_level in _cases(labels):
        floats = tuple(i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating))
        in_specs = tuple(_spec(x) for x in inputs)
        out_spec = P() if batch_level else P("d")

        def objective(per_example):
            return per_example if batch_level else jnp.sum(weights * per_example)

        def single(*args):
            return objective(loss(*args, axis_name=None))

        with jax.set_mesh(mesh):
            placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs,
                                                                                in_specs)]
            sharded_loss = jax.shard_map(lambda *args: loss(*args, axis_name="d"),
                                         in_specs=in_specs, out_specs=out_spec)
            value = jax.jit(sharded_loss)(*placed)
            grads = jax.jit(jax.grad(lambda *args: objective(sharded_loss(*args)),
                                     argnums=floats))(*placed)
        np.testing.assert_allclose(value, loss(*inputs, axis_name=None), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        expected = jax.grad(single, argnums=floats)(*inputs)
        for got, want in zip(grads, expected):
            assert np.any(np.asarray(want) != 0), name
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
