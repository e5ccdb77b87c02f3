"""The self-supervised losses with ``axis_name`` on 8 fake devices equal, in value and
gradient, the single-device loss on the global batch (lightly #1977: a distributed Barlow
Twins gradient off by the world size)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxreg.losses import self_supervised as ss

N_LOCAL, D = 2, 3


def _cases(rng, devices):
    """name -> (loss of (inputs..., axis_name), inputs, their batch axes, output specs)."""
    n = N_LOCAL * devices
    z0, z1, zm = (jnp.float32(rng.normal(size=(n, D))) for _ in range(3))
    views = jnp.float32(np.tanh(rng.normal(size=(3, n, 4))))
    teacher = jnp.float32(rng.normal(size=(2, n, 4)))
    local_perms = np.concatenate([rng.permutation(N_LOCAL) for _ in range(devices)])
    global_perm = local_perms + np.repeat(np.arange(devices) * N_LOCAL, N_LOCAL)
    center = jnp.float32([0.1, -0.2, 0.3, 0.0])
    return {
        "barlow_twins": (lambda a, b, axis_name: ss.barlow_twins(a, b, axis_name=axis_name),
                         (z0, z1), (0, 0), P()),
        "vicreg": (lambda a, b, axis_name: ss.vicreg(a, b, axis_name=axis_name),
                   (z0, z1), (0, 0), P()),
        "mixed_barlow_twins": (
            lambda a, b, m, perm, axis_name: ss.mixed_barlow_twins(
                a, b, m, 0.3, global_perm if axis_name is None else perm, axis_name=axis_name),
            (z0, z1, zm, jnp.asarray(local_perms)), (0, 0, 0, 0), P()),
        "dino": (lambda s, t, axis_name: ss.dino(s, t, center, axis_name=axis_name),
                 (views, teacher), (1, 1), (P("d"), P())),
        "swav": (lambda s, axis_name: ss.swav(s, axis_name=axis_name), (views,), (1,), P("d")),
        # times the scores, so that the gradient (the detached codes) is compared too
        "sinkhorn_knopp": (lambda s, axis_name: s[0] * ss.sinkhorn_knopp(s[0],
                                                                         axis_name=axis_name),
                           (views,), (1,), P("d")),
        "koleo": (lambda x, axis_name: ss.koleo(x, axis_name=axis_name), (z0,), (0,), P("d")),
    }


def _spec(axis, ndim):
    return P(*[("d" if i == axis else None) for i in range(ndim)])


def _scalar(out, weights):
    """A scalar of the outputs that weights every entry differently."""
    return sum(jnp.sum(o * w) for o, w in zip(jax.tree.leaves(out), weights))


def test_sharded_losses_equal_the_global_batch(devices):
    mesh = jax.make_mesh((len(devices),), ("d",))
    rng = np.random.default_rng(0)
    for name, (loss, inputs, axes, out_specs) in _cases(rng, len(devices)).items():
        single = loss(*inputs, axis_name=None)
        weights = [jnp.float32(rng.uniform(0.5, 1.5, np.shape(o))) for o in
                   jax.tree.leaves(single)]
        floats = [i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating)]
        specs = tuple(_spec(axis, x.ndim) for axis, x in zip(axes, inputs))
        with jax.set_mesh(mesh):
            placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in zip(inputs, specs)]
            sharded = jax.jit(jax.shard_map(lambda *xs: loss(*xs, axis_name="d"),
                                            in_specs=specs, out_specs=out_specs))
            got = sharded(*placed)
            got_grads = jax.grad(lambda *xs: _scalar(sharded(*xs), weights), floats)(*placed)
        want_grads = jax.grad(lambda *xs: _scalar(loss(*xs, axis_name=None), weights),
                              floats)(*inputs)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(single)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
        assert any(np.any(w) for w in want_grads), name
        for g, w in zip(got_grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
