"""The chunked contrastive losses with ``axis_name`` on 8 fake devices: each device holds a
shard of the batch, tiles its local rows against the gathered keys, and the sharded values and
gradients equal the unsharded ones on the global batch."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg.losses import chunked as ch

N, V, D = 16, 2, 5  # 2 examples per device; chunks of 3 keys do not divide the batch


def test_sharded_chunked_losses_equal_the_global_batch_loss(devices):
    rng = np.random.default_rng(0)

    def emb(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    labels = jnp.asarray(rng.integers(0, 5, size=N), jnp.int32)
    weights = jnp.asarray(rng.uniform(0.5, 1.5, size=N), jnp.float32)
    cases = [
        ("info_nce", lambda a, b, axis_name: ch.chunked_info_nce(
            a, b, temperature=0.1, chunk_size=3, axis_name=axis_name), (emb(N, D), emb(N, D))),
        ("clip", lambda a, b, axis_name: ch.chunked_info_nce(
            a, b, symmetric=True, chunk_size=3, axis_name=axis_name), (emb(N, D), emb(N, D))),
        ("supcon", lambda f, y, axis_name: ch.chunked_supervised_contrastive(
            f, y, chunk_size=3, axis_name=axis_name), (emb(N, V, D), labels)),
        ("supcon_one", lambda f, y, axis_name: ch.chunked_supervised_contrastive(
            f, y, temperature=0.2, base_temperature=None, contrast_mode="one", chunk_size=3,
            axis_name=axis_name), (emb(N, 1, D), labels)),  # some anchors have no positive
        ("simclr", lambda f, axis_name: ch.chunked_supervised_contrastive(
            f, chunk_size=3, axis_name=axis_name), (emb(N, V, D),)),
        ("dcl", lambda a, b, axis_name: ch.chunked_decoupled_contrastive(
            a, b, chunk_size=3, axis_name=axis_name), (emb(N, D), emb(N, D))),
    ]
    mesh = jax.make_mesh((8,), ("d",))
    for name, loss, inputs in cases:
        floats = tuple(i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating))
        specs = tuple(P("d") for _ in inputs)
        with jax.set_mesh(mesh):
            placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs, specs)]
            sharded = jax.shard_map(lambda *args: loss(*args, axis_name="d"), in_specs=specs,
                                    out_specs=P("d"))
            value = jax.jit(sharded)(*placed)
            grads = jax.jit(jax.grad(lambda *args: jnp.sum(weights * sharded(*args)),
                                     argnums=floats))(*placed)
        np.testing.assert_allclose(value, loss(*inputs, axis_name=None), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
        expected = jax.grad(lambda *args: jnp.sum(weights * loss(*args, axis_name=None)),
                            argnums=floats)(*inputs)
        for got, want in zip(grads, expected):
            assert np.any(np.asarray(want) != 0), name
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)
