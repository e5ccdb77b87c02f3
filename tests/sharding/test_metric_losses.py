"""The metric losses with ``axis_name`` on 8 fake devices equal, in value and gradient, the
single-device loss on the global batch: Circle and Multi-Similarity (each device's anchors
against the gathered batch) and Proxy-Anchor (per-proxy sums over devices; gradients to the
embeddings and to the replicated proxies)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg.losses import metric as ml

N_LOCAL, D, K = 2, 3, 6


# name -> (loss of (embeddings, labels, proxies, axis_name), output spec)
CASES = {
    "circle": (lambda x, y, p, axis_name: ml.circle(x, y, gamma=16.0, axis_name=axis_name),
               P("d")),
    "multi_similarity": (lambda x, y, p, axis_name: ml.multi_similarity(
        x, y, beta=10.0, axis_name=axis_name), P("d")),
    "proxy_anchor": (lambda x, y, p, axis_name: ml.proxy_anchor(
        x, y, p, alpha=8.0, axis_name=axis_name), P()),
}


def test_sharded_metric_losses_equal_the_global_batch(devices):
    mesh = jax.make_mesh((len(devices),), ("d",))
    rng = np.random.default_rng(0)
    n = N_LOCAL * len(devices)
    x = jnp.float32(rng.normal(size=(n, D)))
    # K - 1 classes used: one proxy without positives; shards mix same-class examples
    y = jnp.asarray(rng.integers(0, K - 1, size=n))
    proxies = jnp.float32(rng.normal(size=(K, D)))
    specs = (P("d"), P("d"), P())
    for name, (loss, out_spec) in CASES.items():
        single = loss(x, y, proxies, axis_name=None)
        weights = jnp.float32(rng.uniform(0.5, 1.5, np.shape(single)))
        with jax.set_mesh(mesh):
            placed = [jax.device_put(a, NamedSharding(mesh, s))
                      for a, s in zip((x, y, proxies), specs)]
            sharded = jax.jit(jax.shard_map(lambda *a: loss(*a, axis_name="d"),
                                            in_specs=specs, out_specs=out_spec))
            got = sharded(*placed)
            got_grads = jax.grad(lambda a, b, p: jnp.sum(sharded(a, b, p) * weights),
                                 (0, 2))(*placed)
        want_grads = jax.grad(lambda a, b, p: jnp.sum(loss(a, b, p, axis_name=None) * weights),
                              (0, 2))(x, y, proxies)
        np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.any(want_grads[0]), name
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
