"""The shared contract every catalog entry passes (optax's shared-suite idea).

Driven by ``jaxreg.catalog``: each entry's ``inputs`` says how to call it and its
``hparams`` lists the numeric hyperparameters to sweep. Checks: jit equals eager; vmap over
each hyperparameter equals a loop; gradients agree with finite differences (float64);
finite values and gradients at inputs of magnitude 1e4 and in bfloat16; clear errors for a
wrong label dtype or mismatched shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg import catalog

B, K, D = 6, 5, 4
ENTRIES = tuple(e for e in catalog.entries() if e.family in ("classification", "noisy_labels"))
IDS = [e.name for e in ENTRIES]


def _inputs(entry, key, dtype=jnp.float32, scale=2.0):
    """Positional arguments for ``entry``: the differentiable input first."""
    k1, k2, k3 = jax.random.split(key, 3)
    labels = jax.random.randint(k2, (B,), 0, K)
    kind = entry.inputs
    if kind == "features, centers, labels":
        return (scale * jax.random.normal(k1, (B, D), dtype),
                jax.random.normal(k3, (K, D), dtype), labels)
    logits = scale * jax.random.normal(k1, (B, K), dtype)
    if kind == "logits, labels":
        return logits, labels
    if kind == "logits, targets":
        return logits, jax.random.bernoulli(k3, 0.4, (B, K)).astype(dtype)
    if kind == "logits, labels, class_counts":
        return logits, labels, jnp.asarray([50.0, 20.0, 10.0, 5.0, 2.0], dtype)
    if kind == "logits, labels, example_state":
        return logits, labels, jax.nn.softmax(jax.random.normal(k3, (B, K), dtype))
    raise AssertionError(f"no input builder for {kind!r}")


def _loss(entry, args, **hparams):
    out = entry.fn(*args, **hparams)
    return out[0] if entry.inputs == "logits, labels, example_state" else out


def _sweep(default):
    return [default, 0.8 * default, 1.1 * default] if default else [0.0, 0.5, 0.25]


def test_catalog_is_well_formed():
    for entry in ENTRIES:
        assert entry.paper and entry.arxiv and entry.reference, entry.name
        assert entry.provider in ("jaxreg", "optax"), entry.name
    assert {e.name for e in ENTRIES if e.stops_gradient} == {
        "asymmetric", "normalized_focal", "elr"}
    assert catalog.get("mae").family == "noisy_labels"
    with pytest.raises(KeyError, match="unknown component 'nope'; the catalog has: .*mae"):
        catalog.get("nope")
    with pytest.raises(KeyError, match="families: classification"):
        catalog.entries("nope")


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_per_example_shape_and_jit(entry):
    args = _inputs(entry, jax.random.PRNGKey(0))
    eager = _loss(entry, args)
    assert eager.shape == (B,)
    jitted = jax.jit(lambda *a: _loss(entry, a))(*args)
    np.testing.assert_allclose(jitted, eager, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.hparams],
                         ids=[e.name for e in ENTRIES if e.hparams])
def test_vmap_over_each_hyperparameter(entry):
    args = _inputs(entry, jax.random.PRNGKey(1))
    for name, default in entry.hparams.items():
        values = jnp.asarray(_sweep(default), jnp.float32)
        swept = jax.jit(jax.vmap(lambda v: _loss(entry, args, **{name: v})))(values)
        for i, v in enumerate(_sweep(default)):
            np.testing.assert_allclose(swept[i], _loss(entry, args, **{name: v}), rtol=2e-5,
                                       atol=1e-6, err_msg=f"{entry.name}: {name}={v}")
        if len(set(_sweep(default))) > 1:
            # Some hyperparameters (a stabilising eps) move the loss only slightly: any change
            # at all shows the traced value reaches the computation.
            unchanged = (np.array_equal(swept[0], swept[1])
                         and np.array_equal(swept[0], swept[2]))
            assert not unchanged, f"{entry.name}: hyperparameter {name} has no effect"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_gradients_match_finite_differences(entry):
    if entry.stops_gradient:
        pytest.skip(f"{entry.name} stops gradients by definition: {entry.stops_gradient}; its "
                    "own tests check the gradient against the reference")
    with jax.enable_x64(True):
        args = _inputs(entry, jax.random.PRNGKey(2), dtype=jnp.float64, scale=1.0)
        rest = args[1:]
        check_grads(lambda x: jnp.sum(_loss(entry, (x, *rest))), (args[0],), order=1,
                    modes=("rev",), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("magnitude", [1e4, -1e4])
def test_finite_at_extreme_inputs(entry, magnitude):
    args = _inputs(entry, jax.random.PRNGKey(3))
    x = jnp.sign(args[0]) * magnitude  # every entry pushed to +-1e4, with mixed signs
    x = x.at[0].set(magnitude)  # and one row constant
    loss, grad = jax.value_and_grad(lambda z: jnp.sum(_loss(entry, (z, *args[1:]))))(x)
    assert np.isfinite(loss), f"{entry.name}: loss {loss}"
    assert np.all(np.isfinite(grad)), f"{entry.name}: non-finite gradient"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bfloat16_inputs(entry):
    args32 = _inputs(entry, jax.random.PRNGKey(4))
    args16 = tuple(a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a
                   for a in args32)
    loss16, grad16 = jax.value_and_grad(
        lambda z: jnp.sum(_loss(entry, (z, *args16[1:]))))(args16[0])
    assert np.isfinite(np.asarray(loss16, np.float32))
    assert np.all(np.isfinite(np.asarray(grad16, np.float32)))
    # bf16 carries 8 bits of mantissa: the inputs themselves move by up to 2**-8 relatively.
    loss32 = jnp.sum(_loss(entry, tuple(jnp.asarray(a, jnp.float32)
                                        if jnp.issubdtype(a.dtype, jnp.floating) else a
                                        for a in args16)))
    np.testing.assert_allclose(np.float32(loss16), loss32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_wrong_label_dtype_is_named(entry):
    args = list(_inputs(entry, jax.random.PRNGKey(5)))
    if entry.inputs == "logits, targets":
        args[1] = args[1].astype(jnp.complex64)
        name = "targets"
    else:
        args[-1 if entry.inputs == "features, centers, labels" else 1] = jnp.zeros(B)
        name = "labels"
    with pytest.raises(TypeError, match=f"`{name}`"):
        _loss(entry, tuple(args))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_mismatched_shapes_are_named(entry):
    args = list(_inputs(entry, jax.random.PRNGKey(6)))
    position = 2 if entry.inputs == "features, centers, labels" else 1
    args[position] = args[position][:-1]  # one example short
    with pytest.raises(ValueError, match="`(labels|targets)`"):
        _loss(entry, tuple(args))
    if len(args) == 3:  # the third input (counts, state rows, centers) loses a column
        args = list(_inputs(entry, jax.random.PRNGKey(6)))
        if entry.inputs == "features, centers, labels":
            args[1] = args[1][:, :-1]
        else:
            args[2] = args[2][..., :-1]
        with pytest.raises(ValueError, match="`"):
            _loss(entry, tuple(args))


def test_every_public_loss_is_in_the_catalog():
    from jaxreg import losses
    helpers = {"initial_predictions", "pskd_alpha",  # PS-KD's schedule and buffer
               "AdaFaceState", "adaface_init",  # AdaFace's state
               "mixup_views", "whiten", "sinkhorn_knopp"}  # the pieces Mix-BT, W-MSE, SwAV use
    registered = {e.fn for e in catalog.entries()}
    missing = [n for n in losses.__all__
               if n not in helpers and getattr(losses, n) not in registered]
    assert not missing, f"public losses missing from the catalog: {missing}"
