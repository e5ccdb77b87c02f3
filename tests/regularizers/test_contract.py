"""The contract every regularizer in the catalog passes (families ``regularizers_*``).

Driven by ``jaxreg.catalog``: each entry's ``inputs`` says how to call it, its ``hparams``
which numeric hyperparameters to sweep. Checks: jit equals eager; vmap over ``strength`` and
over each hyperparameter equals a loop, and each one changes the value; the penalty is
linear in ``strength``; gradients are finite and agree with finite differences (float64);
values stay finite in bfloat16; a malformed parameter tree (or input) raises an error that
names the argument.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxreg import catalog

ENTRIES = tuple(e for e in catalog.entries() if e.family.startswith("regularizers"))
IDS = [e.name for e in ENTRIES]
B, D, K, E = 8, 4, 3, 2  # batch, input width, classes, environments
# Float32 test values replacing a catalog default: VAT's official xi = 1e-6 makes its finite
# difference mostly float32 rounding (documented in smoothness.py, where float64 tests check
# the official value), so jit, vmap and loop would differ by rounding alone.
FLOAT32_HPARAMS = {"virtual_adversarial": {"xi": 1e-2}}


def _hparams(entry):
    return {**entry.hparams, **FLOAT32_HPARAMS.get(entry.name, {})}


def _mlp(params, inputs):
    return jnp.tanh(inputs @ params["hidden"]["kernel"]) @ params["out"]["kernel"] \
        + params["out"]["bias"]


def _params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {"hidden": {"kernel": jax.random.normal(k1, (D, 5), dtype) / 2},
            "out": {"kernel": jax.random.normal(k2, (5, K), dtype) / 2,
                    "bias": 0.1 * jax.random.normal(k3, (K,), dtype)}}


def _inputs(entry, key, dtype=jnp.float32):
    """``(differentiable, args, kwargs)``: the call is ``fn(*args, **kwargs)`` with the
    differentiable argument at ``args[differentiable]``."""
    ks = jax.random.split(key, 6)
    kind = entry.inputs
    params = _params(ks[0], dtype)
    x = jax.random.normal(ks[1], (B, D), dtype)
    labels = jax.random.randint(ks[2], (B,), 0, K)
    if kind == "params":
        return 0, [params], {}
    if kind == "reparameterization":
        return 0, [params], {}
    if kind == "params, projectors":
        basis = jnp.linalg.qr(jax.random.normal(ks[3], (D * 5, 6)))[0]
        projectors = jax.tree.map(lambda _: None, params)
        projectors["hidden"]["kernel"] = basis @ basis.T
        return 0, [params, projectors], {}
    if kind == "lora_a, lora_b, pretrained":
        lora_a = {"query": jax.random.normal(ks[0], (3, D, 2), dtype),
                  "value": jax.random.normal(ks[1], (2, D, 2), dtype)}
        lora_b = {"query": jax.random.normal(ks[2], (3, 2, 5), dtype),
                  "value": jax.random.normal(ks[3], (2, 2, K), dtype)}
        pretrained = {"query": jax.random.normal(ks[4], (D, 5), dtype) / 2,
                      "value": jax.random.normal(ks[5], (D, K), dtype) / 2}
        return 0, [lora_a, lora_b, pretrained], {}
    if kind == "params, anchor":
        return 0, [params, _params(ks[3], dtype)], {}
    if kind == "params, anchor, fisher":
        fisher = jax.tree.map(lambda p: jnp.abs(p) + 0.1, _params(ks[4], dtype))
        return 0, [params, _params(ks[3], dtype), fisher], {}
    if kind == "logits":
        return 0, [2 * jax.random.normal(ks[1], (B, K), dtype)], {}
    if kind == "loss":
        return 0, [jax.random.uniform(ks[1], (B,), dtype)], {}
    if kind == "student, teacher":
        return 0, [jax.random.normal(ks[1], (B, K), dtype),
                   jax.random.normal(ks[3], (B, K), dtype)], {}
    if kind == "apply_fn, params, inputs":
        return 1, [_mlp, params, x], {}
    if kind == "apply_fn, params, inputs, key":
        return 1, [_mlp, params, x, ks[5]], {}
    if kind == "loss_fn, params, key":
        def loss_fn(p):
            return jnp.mean(jnp.square(_mlp(p, x.astype(dtype)) - jax.nn.one_hot(labels, K)))
        return 1, [loss_fn, params, ks[5]], {}
    if kind == "inputs, targets, key":
        return 0, [x, jax.nn.one_hot(labels, K, dtype=dtype), ks[5]], {}
    if kind == "outputs, attributes":
        attributes = jnp.stack([jax.random.bernoulli(ks[3], 0.5, (B,)).astype(dtype),
                                jax.random.normal(ks[4], (B,), dtype)], axis=1)
        return 0, [jax.random.normal(ks[1], (B,), dtype), attributes], {}
    if kind.startswith("apply_fn, params, inputs, labels, environments"):
        environments = jnp.arange(B) % E
        args = [_mlp, params, x, labels, environments]
        if kind.endswith("key"):
            args.append(ks[5])
        return 1, args, {"num_environments": E}
    if kind == "source, mapped":
        source = jax.random.normal(ks[1], (B, 2), dtype)
        return 1, [source, source + 0.3 * jax.random.normal(ks[3], (B, 2), dtype)], {}
    raise AssertionError(f"no input builder for {kind!r}")


def _value(entry, args, kwargs, **hparams):
    """The penalty at the catalog's hyperparameters, overridden by ``hparams`` (the catalog's
    values are the function's defaults, or test values where it has none). Array outputs
    (reparameterized trees, mixed batches) are reduced by a fixed non-uniform weighting, which
    stays linear but, unlike a plain sum, sees a permutation or mixing of the batch."""
    out = entry.fn(*args, **kwargs, **{**_hparams(entry), **hparams})

    def reduce(leaf):
        weights = 1.0 + jnp.arange(leaf.size, dtype=jnp.float32).reshape(leaf.shape) / leaf.size
        return jnp.sum(leaf * weights.astype(leaf.dtype))

    return sum(reduce(leaf) for leaf in jax.tree.leaves(out))


def _sweep(default):
    return [default, 0.8 * default, 1.1 * default] if default else [0.0, 0.5, 0.25]


def test_every_regularizer_family_is_covered():
    families = {e.family for e in ENTRIES}
    assert families, "no regularizers in the catalog"
    for entry in ENTRIES:
        assert entry.paper and entry.arxiv and entry.reference, entry.name
        assert "strength" in entry.hparams or entry.inputs in (
            "loss", "inputs, targets, key", "reparameterization"), (
            f"{entry.name}: a penalty takes `strength`")


def test_every_public_regularizer_is_in_the_catalog():
    from jaxreg import regularizers
    registered = {e.fn for e in catalog.entries()}
    helpers = set(getattr(regularizers, "HELPERS", ()))
    missing = [n for n in regularizers.__all__
               if n not in helpers and getattr(regularizers, n) not in registered]
    assert not missing, f"public regularizers missing from the catalog: {missing}"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_jit_equals_eager(entry):
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(0))
    eager = _value(entry, args, kwargs)
    diff = [i for i, a in enumerate(args) if callable(a)]
    static = {i: args[i] for i in diff}
    traced = [a for i, a in enumerate(args) if i not in static]

    def call(*rest):
        it = iter(rest)
        return _value(entry, [static[i] if i in static else next(it)
                              for i in range(len(args))], kwargs)

    np.testing.assert_allclose(jax.jit(call)(*traced), eager, rtol=2e-5, atol=1e-6)
    assert np.isfinite(eager), entry.name


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.hparams],
                         ids=[e.name for e in ENTRIES if e.hparams])
def test_vmap_over_each_hyperparameter(entry):
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(1))
    for name, default in _hparams(entry).items():
        values = _sweep(default)
        swept = jax.jit(jax.vmap(lambda v: _value(entry, args, kwargs, **{name: v})))(
            jnp.asarray(values, jnp.float32))
        for i, v in enumerate(values):
            # VAT's finite difference amplifies float32 rounding, which vmap and a loop
            # order differently (by 5e-5 relative with jax 0.12)
            np.testing.assert_allclose(swept[i], _value(entry, args, kwargs, **{name: v}),
                                       rtol=1e-4 if entry.name == "virtual_adversarial"
                                       else 2e-5, atol=1e-6,
                                       err_msg=f"{entry.name}: {name}={v}")
        assert not (swept[0] == swept[1] == swept[2]), (
            f"{entry.name}: hyperparameter {name} has no effect")


@pytest.mark.parametrize("entry", [e for e in ENTRIES if "strength" in e.hparams],
                         ids=[e.name for e in ENTRIES if "strength" in e.hparams])
def test_linear_in_strength(entry):
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(2))
    one = _value(entry, args, kwargs, strength=1.0)
    np.testing.assert_allclose(_value(entry, args, kwargs, strength=2.5), 2.5 * one,
                               rtol=1e-5, atol=1e-7)
    assert float(_value(entry, args, kwargs, strength=0.0)) == 0.0


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_gradients_are_finite_and_match_finite_differences(entry):
    with jax.enable_x64(True):
        position, args, kwargs = _inputs(entry, jax.random.PRNGKey(3), dtype=jnp.float64)

        def f(z):
            return _value(entry, [z if i == position else a for i, a in enumerate(args)],
                          kwargs)

        grad = jax.grad(f)(args[position])
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad)), entry.name
        if entry.stops_gradient:
            return  # its own tests check the gradient against the reference
        check_grads(f, (args[position],), order=1, modes=("rev",), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bfloat16_inputs(entry):
    position, args, kwargs = _inputs(entry, jax.random.PRNGKey(4), dtype=jnp.bfloat16)

    def f(z):
        return _value(entry, [z if i == position else a for i, a in enumerate(args)], kwargs)

    value, grad = jax.value_and_grad(f)(args[position])
    assert np.isfinite(np.float32(value)), entry.name
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in jax.tree.leaves(grad))


MASKED = [e for e in ENTRIES if e.inputs in ("params", "params, anchor", "params, anchor, fisher")]


@pytest.mark.parametrize("entry", MASKED, ids=[e.name for e in MASKED])
def test_malformed_parameter_tree_is_named(entry):
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(5))
    params = args[0]
    bad = {**params, "hidden": {"kernel": params["hidden"]["kernel"].astype(jnp.int32)}}
    with pytest.raises(TypeError, match="`params`"):
        entry.fn(bad, *args[1:], **kwargs)
    mask = {"hidden": {"kernel": True}}  # the `out` subtree is missing
    with pytest.raises(ValueError, match="`mask`"):
        entry.fn(*args, mask=mask, **kwargs)
    for position, name in ((1, "anchor"), (2, "fisher"))[:len(args) - 1]:
        short = list(args)
        short[position] = {"hidden": args[position]["hidden"]}
        with pytest.raises(ValueError, match=f"`{name}`"):
            entry.fn(*short, **kwargs)


FUNCTIONAL = [e for e in ENTRIES if e.inputs.startswith(("apply_fn, params", "loss_fn, params"))]


@pytest.mark.parametrize("entry", FUNCTIONAL, ids=[e.name for e in FUNCTIONAL])
def test_functional_regularizer_names_a_malformed_parameter_tree(entry):
    """A parameter tree with an integer leaf (a model's buffer or step counter passed by
    mistake) is refused before any differentiation, naming `params`."""
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(6))
    params = args[1]
    bad = {**params, "hidden": {"kernel": params["hidden"]["kernel"].astype(jnp.int32)}}
    with pytest.raises(TypeError, match="`params`"):
        entry.fn(args[0], bad, *args[2:], **kwargs, **_hparams(entry))


STRENGTH = [e for e in ENTRIES if "strength" in e.hparams]


@pytest.mark.parametrize("entry", STRENGTH, ids=[e.name for e in STRENGTH])
def test_negative_strength_is_named(entry):
    """A concrete negative ``strength`` is refused before any computation (the shared check
    ``_validate.check_strength``); a traced one is not checked, so ``vmap`` sweeps still run."""
    _, args, kwargs = _inputs(entry, jax.random.PRNGKey(7))
    for bad in (-1.0, -1e-3, jnp.float32(-0.5), float("nan")):
        with pytest.raises(ValueError, match=r"`strength` must be >= 0, got "):
            _value(entry, args, kwargs, strength=bad)
    diff = [i for i, a in enumerate(args) if callable(a)]

    def call(strength, *rest):
        it = iter(rest)
        full = [args[i] if i in diff else next(it) for i in range(len(args))]
        return _value(entry, full, kwargs, strength=strength)

    traced = jax.jit(call)(jnp.float32(-1.0), *[a for i, a in enumerate(args) if i not in diff])
    np.testing.assert_allclose(traced, -_value(entry, args, kwargs, strength=1.0), rtol=1e-5,
                               atol=1e-7)
