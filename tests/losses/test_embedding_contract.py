"""The shared contract of the embedding losses (families contrastive, metric, self_supervised),
driven by ``jaxreg.catalog`` as ``tests/test_contract.py`` is for the classification losses.

Checks: jit equals eager and the output has the shape the input kind promises; vmap over
each numeric hyperparameter equals a loop (and the hyperparameter has an effect); gradients
agree with finite differences in float64 (entries that stop gradients by definition are
checked against their references in their own modules); finite values and gradients at
inputs of magnitude 1e4 and in bfloat16; a rank-1 embedding, float labels and mismatched
batch sizes raise errors naming the argument.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg import catalog
from jaxreg.losses import adaface_init

N, D, K, V = 8, 4, 5, 2
FAMILIES = ("contrastive", "metric", "self_supervised")
# gradient_cache is a procedure, not a loss: its module's tests check it against value_and_grad
ENTRIES = tuple(e for f in FAMILIES for e in catalog.entries(f) if e.name != "gradient_cache")
IDS = [e.name for e in ENTRIES]
KINDS = ("z0, z1", "image, text, logit_scale", "views, labels", "embeddings, labels",
         "embeddings, labels, proxies", "anchors, positives, negatives",
         "features, centers, labels, state", "utterances, w, b", "embeddings",
         "z0, z1, z_mixed, ratio, permutation", "views, key", "student, teacher, center",
         "scores")  # and "features, centers, labels", shared with tests/test_contract.py
# Keyword arguments an input kind needs beyond the defaults (W-MSE whitens sub-batches of
# w_size >= 2 D rows, and its default 128 exceeds this batch).
CALL = {"views, key": {"w_size": 2 * D}}
SHAPES = {"utterances, w, b": {(3, N // 2)}, "embeddings, labels, proxies": {()}}


def _inputs(entry, key, dtype=jnp.float32, scale=1.0):
    """Positional arguments for ``entry``: the differentiable input first."""
    ks = jax.random.split(key, 6)
    normal = lambda k, shape: scale * jax.random.normal(k, shape, dtype)
    labels = jax.random.randint(ks[5], (N,), 0, 3)
    kind = entry.inputs
    if kind == "z0, z1":
        return normal(ks[0], (N, D)), normal(ks[1], (N, D))
    if kind == "image, text, logit_scale":
        # a logit scale near the clamp at log 100, so that the clamp is swept too
        return normal(ks[0], (N, D)), normal(ks[1], (N, D)), jnp.asarray(4.0, dtype)
    if kind == "views, labels":
        return normal(ks[0], (N, V, D)), labels
    if kind == "embeddings, labels":
        return normal(ks[0], (N, D)), labels
    if kind == "embeddings, labels, proxies":
        return normal(ks[0], (N, D)), labels, normal(ks[1], (K, D))
    if kind == "anchors, positives, negatives":
        return normal(ks[0], (N, D)), normal(ks[1], (N, D)), normal(ks[2], (N, D))
    if kind in ("features, centers, labels", "features, centers, labels, state"):
        args = normal(ks[0], (N, D)), normal(ks[1], (K, D)), jax.random.randint(ks[5], (N,), 0, K)
        return args + ((adaface_init(),) if kind.endswith("state") else ())
    if kind == "utterances, w, b":
        return normal(ks[0], (3, N // 2, D)), jnp.asarray(10.0, dtype), jnp.asarray(-5.0, dtype)
    if kind == "embeddings":
        return (normal(ks[0], (N, D)),)
    if kind == "z0, z1, z_mixed, ratio, permutation":
        return (normal(ks[0], (N, D)), normal(ks[1], (N, D)), normal(ks[2], (N, D)),
                jnp.asarray(0.3, dtype), jax.random.permutation(ks[3], N))
    if kind == "views, key":
        return normal(ks[0], (V, N, D)), ks[4]
    if kind == "student, teacher, center":
        return normal(ks[0], (V, N, K)), normal(ks[1], (V, N, K)), jnp.zeros(K, dtype)
    if kind == "scores":
        return (normal(ks[0], (V, N, K)),)
    raise AssertionError(f"no input builder for {kind!r}")


def _outputs(entry, args, **hparams):
    """Everything ``entry`` returns (the loss, and the new state of a stateful loss)."""
    return entry.fn(*args, **CALL.get(entry.inputs, {}), **hparams)


def _loss(entry, args, **hparams):
    out = _outputs(entry, args, **hparams)
    return out[0] if isinstance(out, tuple) else out


def _sweep(default):
    """The default and two values inside any domain ``[0, bound]`` that holds it."""
    return [default, 0.8 * default, 0.9 * default] if default else [0.0, 0.5, 0.25]


# Floors far below the unit-scale inputs' norms and distances: swept, they change nothing a
# float32 result can show (they matter at norms near 0, which the modules' tests cover).
INVISIBLE = {("negative_cosine", "eps"), ("koleo", "eps")}


def test_catalog_is_well_formed():
    assert {e.family for e in ENTRIES} == set(FAMILIES)
    for entry in ENTRIES:
        assert entry.paper and entry.arxiv and entry.reference, entry.name
    assert {e.name for e in ENTRIES if e.stops_gradient} == {
        "decoupled_contrastive_weighted", "circle", "adaface", "negative_cosine", "dino", "swav"}
    assert {e.name for e in ENTRIES if e.provider == "optax"} == {"ntxent", "triplet"}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_shape_and_jit(entry):
    args = _inputs(entry, jax.random.PRNGKey(0))
    eager = _loss(entry, args)
    assert eager.shape in SHAPES.get(entry.inputs, {(N,), ()}), eager.shape
    jitted = jax.jit(lambda *a: _loss(entry, a))(*args)
    np.testing.assert_allclose(jitted, eager, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.hparams],
                         ids=[e.name for e in ENTRIES if e.hparams])
def test_vmap_over_each_hyperparameter(entry):
    args = _inputs(entry, jax.random.PRNGKey(1))
    for name, default in entry.hparams.items():
        values = _sweep(default)
        swept = jax.jit(jax.vmap(lambda v: _outputs(entry, args, **{name: v})))(
            jnp.asarray(values, jnp.float32))
        for i, v in enumerate(values):
            looped = _outputs(entry, args, **{name: v})
            for got, want in zip(jax.tree.leaves(swept), jax.tree.leaves(looped)):
                np.testing.assert_allclose(got[i], want, rtol=2e-5, atol=1e-6,
                                           err_msg=f"{entry.name}: {name}={v}")
        if (entry.name, name) not in INVISIBLE:
            changed = any(not np.array_equal(leaf[0], leaf[i])
                          for leaf in jax.tree.leaves(swept) for i in (1, 2))
            assert changed, f"{entry.name}: hyperparameter {name} has no effect"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_gradients_match_finite_differences(entry):
    if entry.stops_gradient:
        pytest.skip(f"{entry.name} stops gradients by definition: {entry.stops_gradient}; its "
                    "own tests check the gradient against the reference")
    with jax.enable_x64(True):
        args = _inputs(entry, jax.random.PRNGKey(2), dtype=jnp.float64)
        rest = args[1:]
        check_grads(lambda x: jnp.sum(_loss(entry, (x, *rest))), (args[0],), order=1,
                    modes=("rev",), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_finite_at_extreme_inputs(entry, magnitude):
    args = _inputs(entry, jax.random.PRNGKey(3))
    x = jnp.sign(args[0]) * magnitude  # every entry pushed to +-1e4, with mixed signs
    if entry.inputs != "views, key":  # whitening a constant row's batch is singular (NaN, as
        x = x.at[0].set(magnitude)    # the reference), so W-MSE keeps the sign pattern alone
    loss, grad = jax.value_and_grad(lambda z: jnp.sum(_loss(entry, (z, *args[1:]))))(x)
    assert np.isfinite(loss), f"{entry.name}: loss {loss}"
    assert np.all(np.isfinite(grad)), f"{entry.name}: non-finite gradient"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bfloat16_inputs(entry):
    args16 = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        _inputs(entry, jax.random.PRNGKey(4)))
    loss16, grad16 = jax.value_and_grad(
        lambda z: jnp.sum(_loss(entry, (z, *args16[1:]))))(args16[0])
    assert np.isfinite(np.asarray(loss16, np.float32))
    assert np.all(np.isfinite(np.asarray(grad16, np.float32)))
    loss32 = jnp.sum(_loss(entry, jax.tree.map(
        lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        args16)))
    np.testing.assert_allclose(np.float32(loss16), loss32, rtol=1e-2, atol=1e-2)


JAXREG = [e for e in ENTRIES if e.provider == "jaxreg"]


@pytest.mark.parametrize("entry", JAXREG, ids=[e.name for e in JAXREG])
def test_bad_input_is_named(entry):
    args = list(_inputs(entry, jax.random.PRNGKey(5)))
    first = next(iter(inspect.signature(entry.fn).parameters))
    with pytest.raises((ValueError, TypeError), match=f"`{first}`"):
        _loss(entry, (args[0].reshape(-1), *args[1:]))  # a rank-1 embedding
    if "labels" in entry.inputs:
        position = entry.inputs.split(", ").index("labels")
        bad = list(args)
        bad[position] = bad[position].astype(jnp.float32)
        with pytest.raises(TypeError, match="`labels`"):
            _loss(entry, tuple(bad))
        bad[position] = args[position][:-1]  # one label short
        with pytest.raises(ValueError, match="`labels`"):
            _loss(entry, tuple(bad))
    if entry.inputs in ("z0, z1", "anchors, positives, negatives",
                        "z0, z1, z_mixed, ratio, permutation"):
        second = list(inspect.signature(entry.fn).parameters)[1]
        with pytest.raises(ValueError, match=f"`({first}|{second})`"):
            _loss(entry, (args[0], args[1][:-1], *args[2:]))  # one example short
