"""Tests for jaxreg.losses.chunked: the tiled softmax contrastive losses and the gradient cache.

Each chunked loss is compared, value and gradient (with respect to the embeddings and to the
temperature), with a dense reference written here on the full ``N x N`` similarity matrix,
for chunk sizes that divide the batch and ones that do not, at temperatures from 1e-3 to 10;
with the golden values of the reference implementations (``golden/contrastive.json``) and
with the dense ``jaxreg.losses.contrastive`` losses. The memory tests compile the gradients
(nothing of that size runs) and compare XLA's temporary buffers: the chunked losses' grow
linearly with the batch, the dense ones' quadratically; the gradient cache keeps one chunk
of the encoder's activations. The gradient cache must equal ``jax.value_and_grad``.
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg.losses import chunked as ch
from jaxreg.losses import contrastive

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "contrastive.json").read_text())
N, V, D = 12, 2, 5
TEMPERATURES = (1e-3, 0.1, 10.0)


# -- Dense references on the full N x N logits --------------------------------------------------

def unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def dense_info_nce(q, k, temperature, symmetric=False):
    s = unit(q) @ unit(k).T / temperature
    loss = jax.nn.logsumexp(s, axis=1) - jnp.diag(s)
    return 0.5 * (loss + jax.nn.logsumexp(s, axis=0) - jnp.diag(s)) if symmetric else loss


def dense_supcon(features, labels, temperature, base_temperature=0.07, contrast_mode="all"):
    n, v, d = features.shape
    contrast = jnp.swapaxes(unit(features), 0, 1).reshape(v * n, d)
    labels = jnp.tile(jnp.arange(n) if labels is None else labels, v)
    a = 1 if contrast_mode == "one" else v
    s = contrast[:a * n] @ contrast.T / temperature
    is_self = jnp.eye(a * n, v * n, dtype=bool)
    log_prob = s - jax.nn.logsumexp(jnp.where(is_self, -jnp.inf, s), axis=1, keepdims=True)
    positive = (labels[:a * n, None] == labels[None]) & ~is_self
    count = positive.sum(1)
    mean = jnp.where(positive, log_prob, 0.0).sum(1) / jnp.maximum(count, 1)
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    return -factor * mean.reshape(a, n).mean(0)


def dense_dcl(z0, z1, temperature):
    z0, z1 = unit(z0), unit(z1)
    eye = jnp.eye(z0.shape[0], dtype=bool)

    def one_way(x, y):
        other, same = x @ y.T / temperature, x @ x.T / temperature
        negatives = jnp.concatenate([jnp.where(eye, -jnp.inf, other),
                                     jnp.where(eye, -jnp.inf, same)], axis=1)
        return jax.nn.logsumexp(negatives, axis=1) - jnp.diag(other)

    return 0.5 * (one_way(z0, z1) + one_way(z1, z0))


def dense_nt_xent(z0, z1, temperature):
    """SimCLR: cross-entropy over the 2N - 1 other views, the positive its pair."""
    z = unit(jnp.concatenate([z0, z1]))
    n2 = z.shape[0]
    s = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, z @ z.T / temperature)
    pair = (jnp.arange(n2) + n2 // 2) % n2
    loss = jax.nn.logsumexp(s, axis=1) - s[jnp.arange(n2), pair]
    return 0.5 * (loss[:n2 // 2] + loss[n2 // 2:])


# -- Helpers -------------------------------------------------------------------------------------

def normal(seed, *shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


WEIGHTS = normal(99, N) ** 2  # a non-uniform cotangent for the per-example losses


def assert_close(actual, expected, rtol=1e-5, what=""):
    """``max |actual - expected| <= rtol * max |expected|`` (a scale-relative tolerance: the
    gradients at T = 1e-3 are of size 1e3 and their float32 rounding scales with them)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.all(np.isfinite(actual)), what
    err, size = np.max(np.abs(actual - expected)), np.max(np.abs(expected))
    assert err <= rtol * size + 1e-7, f"{what}: max error {err:.3g}, scale {size:.3g}"


def weighted(loss):
    """``(args, T, labels) -> ((sum_i w_i L_i, L), gradients in args and T)`` of
    ``loss(*args, *labels, T)``, jitted: one compilation serves every temperature."""
    def total(args, temperature, labels=()):
        per_example = loss(*args, *labels, temperature)
        return jnp.sum(WEIGHTS[:per_example.shape[0]] * per_example), per_example
    return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


DENSE = {"info_nce": weighted(lambda q, k, t: dense_info_nce(q, k, t)),
         "clip": weighted(lambda q, k, t: dense_info_nce(q, k, t, symmetric=True)),
         "supcon": weighted(lambda f, y, t: dense_supcon(f, y, t)),
         "dcl": weighted(dense_dcl)}


def assert_matches(chunked, dense, args, temperatures=TEMPERATURES, labels=()):
    chunked = weighted(chunked)
    for t in temperatures:
        (_, value), (grads, d_t) = chunked(args, jnp.float32(t), labels)
        (_, ref_value), (ref_grads, ref_d_t) = dense(args, jnp.float32(t), labels)
        assert_close(value, ref_value, what=f"value at T={t}")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_close(g, r, what=f"gradient {i} at T={t}")
        # At T = 1e-3 the temperature's gradient is a difference of terms of size N / T^2
        # ~ 1e7 that cancel to O(1): float32 leaves it a few 1e-3 relative, dense included.
        assert_close(d_t, ref_d_t, rtol=1e-5 if t >= 0.1 else 2e-2, what=f"dT at T={t}")


# -- Values and gradients equal the dense definitions --------------------------------------------

@pytest.mark.parametrize("chunk_size,symmetric", [(4, False), (5, True), (64, True)])
def test_info_nce_matches_dense(chunk_size, symmetric):
    """Chunks of 4 divide N = 12, chunks of 5 do not (the last is padded), 64 exceed it."""
    def chunked(q, k, t):
        return ch.chunked_info_nce(q, k, temperature=t, symmetric=symmetric,
                                   chunk_size=chunk_size)
    assert_matches(chunked, DENSE["clip" if symmetric else "info_nce"],
                   (normal(0, N, D), normal(1, N, D)))


@pytest.mark.parametrize("labels,chunk_size", [("classes", 4), ("singletons", 5)])
def test_supervised_contrastive_matches_dense(labels, chunk_size):
    """Labels with classes of several examples, three views; and one view with classes of
    one example, so that some anchors have no positive."""
    views = 1 if labels == "singletons" else 3
    y = (jnp.arange(N) % 4 if labels == "classes"
         else jnp.asarray([0, 0, 1, 2, 3, 3, 3, 4, 5, 6, 6, 7]))

    def chunked(f, y, t):
        return ch.chunked_supervised_contrastive(f, y, temperature=t, chunk_size=chunk_size)
    assert_matches(chunked, DENSE["supcon"], (normal(2, N, views, D),), labels=(y,))


@pytest.mark.parametrize("contrast_mode,base_temperature", [("one", 0.07), ("all", None)])
def test_supervised_contrastive_options_match_dense(contrast_mode, base_temperature):
    features, y = normal(3, N, V, D), jnp.arange(N) % 3

    def chunked(f, t):
        return ch.chunked_supervised_contrastive(f, y, temperature=t, chunk_size=5,
                                                 base_temperature=base_temperature,
                                                 contrast_mode=contrast_mode)
    dense = weighted(lambda f, t: dense_supcon(f, y, t, base_temperature, contrast_mode))
    assert_matches(chunked, dense, (features,), temperatures=(0.1,))


@pytest.mark.parametrize("chunk_size", [4, 5])
def test_decoupled_contrastive_matches_dense(chunk_size):
    def chunked(z0, z1, t):
        return ch.chunked_decoupled_contrastive(z0, z1, temperature=t, chunk_size=chunk_size)
    assert_matches(chunked, DENSE["dcl"], (normal(4, N, D), normal(5, N, D)))


def test_nt_xent_is_supervised_contrastive_without_labels():
    def chunked(z0, z1, t):
        return ch.chunked_supervised_contrastive(jnp.stack([z0, z1], axis=1), None,
                                                 temperature=t, base_temperature=None,
                                                 chunk_size=7)
    assert_matches(chunked, weighted(dense_nt_xent), (normal(6, N, D), normal(7, N, D)))


def test_tiled_logsumexp_gradients_by_finite_differences():
    """The custom VJP against finite differences, in float64, keys excluded by id."""
    with jax.enable_x64(True):
        q, k = normal(8, 6, 3, dtype=jnp.float64), normal(9, 7, 3, dtype=jnp.float64)
        ids = jnp.asarray([0, 1, 2, 3, 4, 5])
        key_ids = jnp.asarray([5, 0, 9, 2, 2, 7, 1])

        def f(q, k):
            return ch._masked_logsumexp(q, k, ids, key_ids, 3) * jnp.arange(1.0, 7.0)
        check_grads(jax.jit(f), (q, k), order=1, modes=["rev"])


# -- Golden values of the reference implementations ---------------------------------------------

def golden_inputs(name):
    case = GOLDEN[name]
    return case, [jnp.asarray(x, jnp.float32) for x in case["inputs"].values()]


@pytest.mark.parametrize("name,chunked", [
    ("info_nce", lambda q, k, c: ch.chunked_info_nce(q, k, chunk_size=3, **c)),
    ("info_nce_symmetric", lambda q, k, c: ch.chunked_info_nce(q, k, chunk_size=3, **c)),
    ("dcl", lambda a, b, c: ch.chunked_decoupled_contrastive(a, b, chunk_size=3, **c)),
    ("dcl_t0.5", lambda a, b, c: ch.chunked_decoupled_contrastive(a, b, chunk_size=3, **c)),
    ("ntxent", lambda a, b, c: ch.chunked_supervised_contrastive(
        jnp.stack([a, b], axis=1), None, temperature=c["temperature"], base_temperature=None,
        chunk_size=3)),
])
def test_golden_pairs(name, chunked):
    """lightly / info-nce-pytorch / open_clip losses (their means) and gradients."""
    case, (a, b) = golden_inputs(name)
    loss, grads = jax.jit(jax.value_and_grad(lambda a, b: chunked(a, b, case["call"]).mean(),
                                             argnums=(0, 1)))(a, b)
    np.testing.assert_allclose(loss, case["loss"], rtol=1e-5, atol=1e-6)
    for g, key in zip(grads, case["inputs"]):
        np.testing.assert_allclose(g, case["grad"][key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["supcon", "supcon_one", "supcon_no_positive"])
def test_golden_supcon(name):
    """HobbitLong/SupContrast SupConLoss (its mean) and gradient."""
    case, (features,) = golden_inputs(name)
    labels = None if case.get("labels") is None else jnp.asarray(case["labels"])
    loss, grad = jax.jit(jax.value_and_grad(lambda f: ch.chunked_supervised_contrastive(
        f, labels, chunk_size=3, **case["call"]).mean()))(features)
    np.testing.assert_allclose(loss, case["loss"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, case["grad"][next(iter(case["inputs"]))], rtol=1e-5,
                               atol=1e-6)


# -- The dense losses of jaxreg.losses.contrastive ------------------------------------------------

@pytest.mark.parametrize("chunked,dense", [
    (lambda q, k, t: ch.chunked_info_nce(q, k, temperature=t, chunk_size=5),
     lambda q, k, t: contrastive.info_nce(q, k, temperature=t)),
    (lambda q, k, t: ch.chunked_info_nce(q, k, temperature=t, symmetric=True, chunk_size=5),
     lambda q, k, t: contrastive.info_nce(q, k, temperature=t, symmetric=True)),
    (lambda q, k, t: ch.chunked_decoupled_contrastive(q, k, temperature=t, chunk_size=5),
     lambda q, k, t: contrastive.decoupled_contrastive(q, k, temperature=t)),
], ids=["info_nce", "clip", "dcl"])
def test_equals_dense_library_pair_losses(chunked, dense):
    assert_matches(chunked, weighted(dense), (normal(10, N, D), normal(11, N, D)),
                   temperatures=(0.05,))


def test_equals_dense_library_supervised_contrastive():
    def chunked(f, y, t):
        return ch.chunked_supervised_contrastive(f, y, temperature=t, chunk_size=5)

    def dense(f, y, t):
        return contrastive.supervised_contrastive(f, y, temperature=t)
    assert_matches(chunked, weighted(dense), (normal(12, N, 3, D),), temperatures=(0.07,),
                   labels=(jnp.arange(N) % 5,))


# -- Transformations, dtypes, extremes ----------------------------------------------------------

def loss_and_grads(loss):
    """``(a, b, T) -> ((sum L, L), (dL/da, dL/db))``, jitted (shared by the tests below, so each
    loss compiles once per dtype)."""
    def total(a, b, t):
        per_example = loss(a, b, t)
        return per_example.sum(), per_example
    return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


LOSSES = {
    "info_nce": lambda a, b, t: ch.chunked_info_nce(a, b, temperature=t, symmetric=True,
                                                    chunk_size=5),
    "simclr": lambda a, b, t: ch.chunked_supervised_contrastive(
        jnp.stack([a, b], 1), temperature=t, chunk_size=5),
    "dcl": lambda a, b, t: ch.chunked_decoupled_contrastive(a, b, temperature=t, chunk_size=5),
}
JITTED = {name: loss_and_grads(loss) for name, loss in LOSSES.items()}


def test_jit_equals_eager():
    a, b = normal(13, N, D), normal(14, N, D)
    assert_close(JITTED["info_nce"](a, b, 0.2)[0][1], LOSSES["info_nce"](a, b, 0.2))


@pytest.mark.parametrize("name", LOSSES)
def test_vmap_over_temperature_and_permutation(name):
    loss, a, b = LOSSES[name], normal(13, N, D), normal(14, N, D)
    temperatures = jnp.asarray([0.05, 0.2, 1.0])
    one_by_one = jnp.stack([JITTED[name](a, b, t)[0][1] for t in temperatures])
    assert_close(jax.jit(jax.vmap(lambda t: loss(a, b, t)))(temperatures), one_by_one)
    # permuting the examples permutes the per-example losses
    order = np.random.default_rng(0).permutation(N)
    assert_close(JITTED[name](a[order], b[order], 0.2)[0][1], one_by_one[1][order])


@pytest.mark.parametrize("name", LOSSES)
def test_bfloat16_and_extreme_inputs(name):
    """bfloat16 inputs are computed in float32 (the float32 loss of the rounded inputs, with
    bfloat16 gradients); magnitudes of 1e4, views with |cos| = 1 and T = 1e-3 stay finite."""
    a, b = normal(15, N, D, dtype=jnp.bfloat16), normal(16, N, D, dtype=jnp.bfloat16)
    (_, value), grads = JITTED[name](a, b, 0.1)
    (_, expected), _ = JITTED[name](a.astype(jnp.float32), b.astype(jnp.float32), 0.1)
    assert value.dtype == jnp.float32
    assert_close(value, expected)
    assert all(g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
               for g in grads)
    a = normal(17, N, D)
    for x, y in [(1e4 * a, -1e4 * a), (a, a)]:
        (total, _), grads = JITTED[name](x, y, 1e-3)
        assert np.isfinite(total) and all(np.all(np.isfinite(g)) for g in grads)


def test_anchors_without_positive_give_zero_and_no_gradient():
    @jax.jit
    def value_and_grad(features, labels):
        return jax.value_and_grad(lambda f: ch.chunked_supervised_contrastive(
            f, labels, chunk_size=3).sum())(features)
    # one view, four classes: no anchor has a positive
    loss, grad = value_and_grad(normal(18, 4, 1, D), jnp.arange(4))
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)
    # a single anchor: no key at all
    loss, grad = value_and_grad(normal(19, 1, 1, D), jnp.arange(1))
    assert loss == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_bad_inputs_raise_naming_the_argument():
    a, f = normal(20, N, D), normal(21, N, V, D)
    with pytest.raises(ValueError, match="chunk_size"):
        ch.chunked_info_nce(a, a, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        ch.chunked_decoupled_contrastive(a, a, chunk_size=2.5)
    with pytest.raises(ValueError, match="keys"):
        ch.chunked_info_nce(a, a[:-1])
    with pytest.raises(ValueError, match="temperature"):
        ch.chunked_info_nce(a, a, temperature=-1.0)
    with pytest.raises(ValueError, match="base_temperature"):
        ch.chunked_supervised_contrastive(f, base_temperature=0.0)
    with pytest.raises(ValueError, match="features"):
        ch.chunked_supervised_contrastive(a)
    with pytest.raises(TypeError, match="labels"):
        ch.chunked_supervised_contrastive(f, jnp.zeros(N))
    with pytest.raises(ValueError, match="contrast_mode"):
        ch.chunked_supervised_contrastive(f, contrast_mode="any")
    with pytest.raises(ValueError, match="z0"):
        ch.chunked_decoupled_contrastive(a[:1], a[:1])
    with pytest.raises(ValueError, match="inputs"):
        ch.gradient_cache(lambda p, x: x[0], lambda p, e: e.sum(), {}, (a, a[:-1]),
                          chunk_size=4)


# -- Memory: XLA's temporary buffers of the compiled gradient ------------------------------------

def temp_bytes(loss, n, chunk_size=None):
    def total(q, k):
        kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}
        return loss(q, k, **kwargs).sum()
    x = jax.ShapeDtypeStruct((n, 32), jnp.float32)
    compiled = jax.jit(jax.grad(total, argnums=(0, 1))).lower(x, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("chunked,dense", [
    (lambda q, k, **c: ch.chunked_info_nce(q, k, symmetric=True, **c),
     lambda q, k: dense_info_nce(q, k, 0.07, symmetric=True)),
    (lambda q, k, **c: ch.chunked_supervised_contrastive(jnp.stack([q, k], 1), **c),
     lambda q, k: dense_supcon(jnp.stack([q, k], 1), None, 0.07)),
], ids=["clip", "simclr"])
def test_chunked_gradient_memory_grows_linearly_not_quadratically(chunked, dense):
    """Four times the batch: the chunked gradient's temporaries grow about 4x (tiles of
    ``N x 64``; a quadratic implementation grows 16x and fails), and at N = 4096 they are a
    small fraction of the dense gradient's (``N x N``, 64 MiB per matrix)."""
    small, large = 1024, 4096
    chunked_large = temp_bytes(chunked, large, 64)
    assert chunked_large / temp_bytes(chunked, small, 64) < 6
    assert chunked_large < temp_bytes(dense, large) / 10


# -- Gradient cache ------------------------------------------------------------------------------

class Tower(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(6)(nn.tanh(nn.Dense(16)(x)))


def two_towers():
    """A CLIP-like pair of MLP encoders and a loss with its own parameter (the logit scale)."""
    image, text = Tower(), Tower()
    xs, ts = normal(22, 10, 7), normal(23, 10, 3)
    params = {"image": image.init(jax.random.PRNGKey(0), xs),
              "text": text.init(jax.random.PRNGKey(1), ts), "logit_scale": jnp.float32(2.0)}

    def encode(p, batch):
        return image.apply(p["image"], batch[0]), text.apply(p["text"], batch[1])

    def loss(p, embedded):
        return ch.chunked_info_nce(*embedded, temperature=jnp.exp(-p["logit_scale"]),
                                   symmetric=True, chunk_size=4).mean()
    return encode, loss, params, (xs, ts)


def test_gradient_cache_equals_value_and_grad():
    """Chunks of 4 do not divide the batch of 10 (the last is padded), chunks of 5 do."""
    encode, loss, params, inputs = two_towers()
    expected, expected_grads = jax.jit(jax.value_and_grad(
        lambda p: loss(p, encode(p, inputs))))(params)
    for chunk_size in (4, 5):
        value, grads = jax.jit(lambda p, x: ch.gradient_cache(
            encode, loss, p, x, chunk_size=chunk_size))(params, inputs)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
        assert jax.tree.structure(grads) == jax.tree.structure(expected_grads)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
            assert_close(g, r)
        assert float(jnp.abs(grads["logit_scale"])) > 0  # the loss's own parameter learns


def test_gradient_cache_keeps_one_chunk_of_activations():
    """A wide encoder on a batch of 4096: the direct gradient keeps every hidden activation
    (4096 x 512 floats a layer), the gradient cache one chunk of 256 of them and the
    embeddings; compiled temporaries, nothing runs."""
    wide = nn.Sequential([nn.Dense(512), nn.tanh, nn.Dense(512), nn.tanh, nn.Dense(8)])
    x = jax.ShapeDtypeStruct((4096, 16), jnp.float32)
    params = jax.eval_shape(wide.init, jax.random.PRNGKey(0), x)

    def loss(p, embedded):
        return ch.chunked_info_nce(embedded[:2048], embedded[2048:], chunk_size=256).mean()

    def memory(step):
        return jax.jit(step).lower(params, x).compile().memory_analysis().temp_size_in_bytes
    direct = memory(jax.value_and_grad(lambda p, x: loss(p, wide.apply(p, x))))
    cached = memory(lambda p, x: ch.gradient_cache(wide.apply, loss, p, x, chunk_size=256))
    assert cached < direct / 4, (cached, direct)
