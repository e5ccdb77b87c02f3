"""Tests for jaxreg.losses.contrastive.

Each loss is checked against golden values and gradients of its reference implementation
(``golden/contrastive.json``: open_clip, info-nce-pytorch, SupContrast and align_uniform
re-typed in torch; lightly and pytorch-metric-learning run as installed); against an
independent NumPy float64 re-implementation written as loops over anchors and pairs (values;
the gradients are checked in float64 against finite differences with ``check_grads``); and in
its limiting cases, invariances and extreme inputs. NT-Xent is optax's: it is checked here
against lightly and against SupCon.
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads
from numeric import central_difference

from jaxreg.losses import contrastive as c

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "contrastive.json").read_text())
N, V, D = 7, 2, 5  # the golden files' shapes, so the two share compiled primitives
LABELS = np.array([0, 1, 0, 2, 1, 0, 3])  # classes 2 and 3 have one example each


# -- Independent NumPy references (float64 loops) -----------------------------------------------

def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_lse(values):
    values = np.asarray(values)
    peak = values.max()
    return peak + np.log(np.exp(values - peak).sum())


def np_info_nce(q, k, temperature=0.07, symmetric=False):
    q, k = np_unit(q), np_unit(k)
    out = []
    for i in range(len(q)):
        loss = np_lse(q[i] @ k.T / temperature) - q[i] @ k[i] / temperature
        if symmetric:
            loss = (loss + np_lse(k[i] @ q.T / temperature) - q[i] @ k[i] / temperature) / 2
        out.append(loss)
    return np.array(out)


def np_clip(image, text, logit_scale):
    return np_info_nce(image, text, 1 / math.exp(min(logit_scale, math.log(100))), True)


def np_supcon(f, labels=None, temperature=0.07, base_temperature=0.07, contrast_mode="all"):
    n, views, dim = f.shape
    factor = 1.0 if base_temperature is None else temperature / base_temperature
    cls = np.tile(np.arange(n) if labels is None else labels, views)  # view-major rows
    rows = np.swapaxes(np_unit(f), 0, 1).reshape(views * n, dim)
    out = np.zeros(n)
    anchor_views = 1 if contrast_mode == "one" else views
    for i in range(n):
        for a in range(anchor_views):
            me = a * n + i
            others = np.arange(views * n) != me
            logits = rows @ rows[me] / temperature
            log_prob = logits[others] - np_lse(logits[others])
            positives = cls[others] == cls[me]
            if positives.any():
                out[i] -= factor * log_prob[positives].mean() / anchor_views
    return out


def np_dcl(z0, z1, temperature=0.1, sigma=None, weights_at=None):
    """``weights_at``: the views (z0, z1) at which DCLW's (detached) weights are evaluated."""
    a, b = np_unit(z0), np_unit(z1)
    n = len(a)
    weights = np.ones(n)
    if sigma is not None:
        wa, wb = (a, b) if weights_at is None else map(np_unit, weights_at)
        scores = np.sum(wa * wb, axis=-1) / sigma
        weights = 2 - n * np.exp(scores - np_lse(scores))

    def one_way(x, y):
        out = []
        for i in range(n):
            negatives = [x[i] @ x[k] for k in range(n) if k != i]
            negatives += [x[i] @ y[k] for k in range(n) if k != i]
            out.append(-weights[i] * x[i] @ y[i] / temperature
                       + np_lse(np.array(negatives) / temperature))
        return np.array(out)

    return 0.5 * (one_way(a, b) + one_way(b, a))


def np_pair_losses(e, labels, pos_margin=0.0, neg_margin=1.0):
    """PML's lists of (anchor, pair loss) for the positive and the negative pairs."""
    x = np_unit(e)
    pos, neg = [], []
    for i in range(len(x)):
        for j in range(len(x)):
            d = np.linalg.norm(x[i] - x[j])
            if i != j and labels[i] == labels[j]:
                pos.append((i, max(d - pos_margin, 0.0)))
            elif labels[i] != labels[j]:
                neg.append((i, max(neg_margin - d, 0.0)))
    return pos, neg


def np_pml_contrastive(e, labels, pos_margin=0.0, neg_margin=1.0, reducer="avg_nonzero"):
    """PML ``ContrastiveLoss``: each pair set reduced on its own, then added."""
    def reduce(pairs):
        kept = [v for _, v in pairs if v > 0 or reducer == "mean"]
        return np.mean(kept) if kept else 0.0
    return sum(map(reduce, np_pair_losses(e, labels, pos_margin, neg_margin)))


def np_contrastive(e, labels, pos_margin=0.0, neg_margin=1.0, reducer="avg_nonzero"):
    """Per-anchor shares: ``N * (pos_sum_i / n_pos + neg_sum_i / n_neg)``."""
    out = np.zeros(len(e))
    for pairs in np_pair_losses(e, labels, pos_margin, neg_margin):
        count = max(sum(v > 0 or reducer == "mean" for _, v in pairs), 1)
        for i, v in pairs:
            out[i] += len(e) * v / count
    return out


def np_alignment(x, y, alpha=2.0):
    return np.linalg.norm(np_unit(x) - np_unit(y), axis=-1) ** alpha


def np_uniformity(x, t=2.0):
    x = np_unit(x)
    pairs = [np.sum((x[i] - x[j]) ** 2) for i in range(len(x)) for j in range(i + 1, len(x))]
    return np_lse(-t * np.array(pairs)) - np.log(len(pairs))


# -- Inputs and cases ---------------------------------------------------------------------------

def _normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32).astype(np.float64)


def _two_views(seed):
    return _normal(seed, N, D), _normal(seed + 100, N, D)


# (name, jax fn, numpy fn, inputs of a seed (those of rank >= 2 are differentiated), kwargs).
CASES = [
    ("info_nce", c.info_nce, np_info_nce, _two_views, {}),
    ("info_nce_symmetric", c.info_nce, np_info_nce, _two_views,
     {"temperature": 0.3, "symmetric": True}),
    ("clip", c.clip, np_clip, lambda s: (*_two_views(s), 2.5), {}),
    ("clip_clamped", c.clip, np_clip, lambda s: (*_two_views(s), 5.0), {}),
    ("supervised_contrastive", c.supervised_contrastive, np_supcon,
     lambda s: (_normal(s, N, V, D), LABELS), {}),
    ("supervised_contrastive_one", c.supervised_contrastive, np_supcon,
     lambda s: (_normal(s, N, 3, D), LABELS),
     {"temperature": 0.2, "base_temperature": 0.1, "contrast_mode": "one"}),
    ("supervised_contrastive_no_positive", c.supervised_contrastive, np_supcon,
     lambda s: (_normal(s, N, 1, D), LABELS), {"temperature": 0.1, "base_temperature": None}),
    ("simclr", c.supervised_contrastive, np_supcon, lambda s: (_normal(s, N, V, D),),
     {"temperature": 0.5}),
    ("decoupled_contrastive", c.decoupled_contrastive, np_dcl, _two_views, {}),
    ("decoupled_contrastive_weighted", c.decoupled_contrastive_weighted, np_dcl, _two_views,
     {"temperature": 0.3, "sigma": 0.5}),
    ("contrastive", c.pair_contrastive, np_contrastive, lambda s: (_normal(s, N, D), LABELS), {}),
    ("contrastive_mean", c.pair_contrastive, np_contrastive, lambda s: (_normal(s, N, D), LABELS),
     {"pos_margin": 0.4, "neg_margin": 1.3, "reducer": "mean"}),
    ("alignment", c.alignment, np_alignment, _two_views, {"alpha": 1.5}),
    ("uniformity", c.uniformity, np_uniformity, lambda s: (_normal(s, N, D),), {"t": 3.0}),
]
IDS = [case[0] for case in CASES]


def _jax_inputs(inputs):
    return tuple(jnp.float32(x) if np.issubdtype(np.asarray(x).dtype, np.floating)
                 else jnp.asarray(x) for x in inputs)


def _differentiated(inputs):
    return tuple(i for i, x in enumerate(inputs) if np.ndim(x) >= 2)


@pytest.mark.parametrize("name, fn, np_fn, make, kwargs", CASES, ids=IDS)
def test_value_matches_numpy(name, fn, np_fn, make, kwargs):
    inputs = make(0)
    got = jax.jit(lambda *a: fn(*a, **kwargs))(*_jax_inputs(inputs))
    want = np_fn(*inputs, **kwargs)
    assert got.shape == np.shape(want) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# DCLW detaches its weights by definition: test_dclw_weights_are_detached checks its gradient.
DIFFERENTIABLE = [case for case in CASES if "sigma" not in case[4]]


@pytest.mark.parametrize("name, fn, np_fn, make, kwargs", DIFFERENTIABLE,
                         ids=[case[0] for case in DIFFERENTIABLE])
def test_check_grads_in_float64(name, fn, np_fn, make, kwargs):
    """Float64 gradients against finite differences of the loss (whose values match the
    NumPy reference above)."""
    inputs = make(4)
    idx = _differentiated(inputs)
    with jax.enable_x64(True):
        args = [jnp.asarray(x) for x in inputs]

        def loss(*xs):
            full = list(args)
            for i, x in zip(idx, xs):
                full[i] = x
            return jnp.sum(fn(*full, **kwargs))
        check_grads(jax.jit(loss), tuple(args[i] for i in idx), order=1, modes=("rev",), atol=1e-5,
                    rtol=1e-5)


# -- Golden values from the reference implementations ---------------------------------------------

def _anchors_with_positive(labels, views):
    """The number of anchors (example, view) with another row of their label."""
    counts = np.bincount(labels)[labels] * views - 1
    return views * int(np.sum(counts > 0))


def _golden_objective(name, entry):
    """Our loss reduced as the reference reduces it, as a function of the named inputs."""
    call = dict(entry["call"])
    labels = None if entry.get("labels") is None else jnp.asarray(entry["labels"])
    if name.startswith("info_nce"):
        return lambda queries, keys: jnp.mean(c.info_nce(queries, keys, **call))
    if name.startswith("clip"):
        return lambda image, text, logit_scale: jnp.mean(c.clip(image, text, logit_scale))
    if name.startswith("pml_supcon"):
        def pml(features):  # AvgNonZeroReducer: the mean over anchors with a positive
            views = features.shape[1]
            loss = c.supervised_contrastive(features, labels, **call)
            return views * jnp.sum(loss) / _anchors_with_positive(np.asarray(labels), views)
        return pml
    if name.startswith("supcon"):
        return lambda features: jnp.mean(c.supervised_contrastive(features, labels, **call))
    if name == "ntxent":  # lightly NTXentLoss = optax ntxent = SupCon without labels
        return lambda z0, z1: optax.losses.ntxent(jnp.concatenate([z0, z1]),
                                                  jnp.tile(jnp.arange(z0.shape[0]), 2), **call)
    if name.startswith("dclw"):
        return lambda z0, z1: jnp.mean(c.decoupled_contrastive_weighted(z0, z1, **call))
    if name.startswith("dcl"):
        return lambda z0, z1: jnp.mean(c.decoupled_contrastive(z0, z1, **call))
    if name.startswith("pair_contrastive"):
        return lambda embeddings: jnp.mean(c.pair_contrastive(embeddings, labels, **call))
    if name.startswith("alignment"):
        return lambda x, y: jnp.mean(c.alignment(x, y, **call))
    if name == "uniformity":
        return lambda x: c.uniformity(x, **call)
    assert name == "hypersphere"  # lightly: align + (unif(x) + unif(y)) / 2 at t = 1
    return lambda x, y: (jnp.mean(c.alignment(x, y, alpha=call["alpha"]))
                         + (c.uniformity(x, t=call["t"]) + c.uniformity(y, t=call["t"])) / 2)


GOLDEN_NAMES = sorted(k for k in GOLDEN if not k.startswith("_"))


def test_golden_file_covers_the_references():
    assert {"info_nce", "clip", "supcon", "pml_supcon", "ntxent", "dcl", "dclw",
            "pair_contrastive", "alignment", "uniformity"} <= set(GOLDEN_NAMES)
    for name in GOLDEN_NAMES:
        assert "@" in GOLDEN[name]["source"] or "==" in GOLDEN[name]["source"], name


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_matches_reference_implementation(name):
    entry = GOLDEN[name]
    names = list(entry["inputs"])
    inputs = [jnp.float32(entry["inputs"][k]) for k in names]
    value, grads = jax.jit(jax.value_and_grad(_golden_objective(name, entry),
                                              argnums=tuple(range(len(names)))))(*inputs)
    np.testing.assert_allclose(value, entry["loss"], rtol=1e-5, atol=1e-6)
    for key, got in zip(names, grads):
        want = np.asarray(entry["grad"][key])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1, np.abs(want).max()),
                                   err_msg=key)


def test_golden_cases_exercise_the_conventions():
    """The PML cases differ from the plain mean; the no-positive cases have such anchors."""
    for name in ("supcon_no_positive", "pml_supcon_no_positive"):
        labels = np.asarray(GOLDEN[name]["labels"])
        assert _anchors_with_positive(labels, 1) < len(labels)
    entry = GOLDEN["pair_contrastive"]
    e = np.asarray(entry["inputs"]["embeddings"], np.float64)
    pos, neg = np_pair_losses(e, np.asarray(entry["labels"]))
    assert 0 < sum(v > 0 for _, v in neg) < len(neg)  # AvgNonZero drops some pairs
    assert not np.isclose(np_pml_contrastive(e, entry["labels"], reducer="mean"), entry["loss"])
    np.testing.assert_allclose(np_pml_contrastive(e, entry["labels"]), entry["loss"], rtol=1e-5)


# -- NT-Xent is optax's ---------------------------------------------------------------------------

def test_optax_ntxent_equals_lightly_and_supcon_with_base_temperature_t():
    """``optax.losses.ntxent`` with labels pairing the views equals lightly ``NTXentLoss`` and
    ``supervised_contrastive`` without labels and with ``base_temperature=temperature``."""
    entry = GOLDEN["ntxent"]
    z0, z1 = (jnp.float32(entry["inputs"][k]) for k in ("z0", "z1"))
    t = entry["call"]["temperature"]
    pairs = jnp.tile(jnp.arange(z0.shape[0]), 2)
    losses = {
        "optax": lambda a: optax.losses.ntxent(jnp.concatenate([a, z1]), pairs, temperature=t),
        "supcon": lambda a: jnp.mean(c.supervised_contrastive(
            jnp.stack([a, z1], axis=1), temperature=t, base_temperature=t)),
    }
    for name, loss in losses.items():
        value, grad = jax.jit(jax.value_and_grad(loss))(z0)
        np.testing.assert_allclose(value, entry["loss"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(grad, entry["grad"]["z0"], rtol=1e-5, atol=1e-6, err_msg=name)


# -- Limiting cases and invariances ---------------------------------------------------------------

def jitted(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled as one program (cheaper here than op by op)."""
    return jax.jit(lambda *a: fn(*a, **kwargs))(*args)


@pytest.fixture
def views():
    a, b = _two_views(7)
    return jnp.float32(a), jnp.float32(b)


def test_clip_is_symmetric_info_nce_at_the_inverse_temperature(views):
    a, b = views
    np.testing.assert_allclose(c.clip(a, b, jnp.log(20.0)),
                               c.info_nce(a, b, temperature=1 / 20, symmetric=True), rtol=1e-5)
    np.testing.assert_allclose(c.clip(a, b, 1.0), c.clip(b, a, 1.0), rtol=1e-6)
    assert not np.allclose(c.info_nce(a, b), c.info_nce(b, a))  # one-way is not symmetric


def test_clip_clamps_the_logit_scale_at_log_100(views):
    a, b = views
    at_bound = c.clip(a, b, math.log(100.0))
    np.testing.assert_allclose(c.clip(a, b, 7.0), at_bound, rtol=1e-6)
    grad = jax.jit(jax.grad(lambda s: jnp.sum(c.clip(a, b, s))))
    assert float(grad(7.0)) == 0.0
    assert float(grad(4.0)) != 0.0
    unclamped = c.clip(a, b, 7.0, max_logit_scale=None)
    np.testing.assert_allclose(unclamped, c.info_nce(a, b, temperature=math.exp(-7.0),
                                                     symmetric=True), rtol=1e-5)


def test_supcon_without_labels_is_supcon_with_distinct_labels():
    f = jnp.float32(_normal(8, N, 3, D))
    np.testing.assert_allclose(jitted(c.supervised_contrastive, f),
                               jitted(c.supervised_contrastive, f, jnp.arange(N)), rtol=1e-6)


def test_supcon_with_one_view_has_the_same_anchors_in_both_modes():
    f = jnp.float32(_normal(9, N, 1, D))
    np.testing.assert_allclose(jitted(c.supervised_contrastive, f, LABELS, contrast_mode="one"),
                               jitted(c.supervised_contrastive, f, LABELS), rtol=1e-6)


def test_supcon_anchor_without_positive_is_zero_with_zero_gradient():
    f = jnp.float32(_normal(10, N, 1, D))
    loss = c.supervised_contrastive(f, LABELS)
    alone = np.bincount(LABELS)[LABELS] == 1
    np.testing.assert_array_equal(np.asarray(loss)[alone], 0.0)
    assert np.all(np.asarray(loss)[~alone] > 0)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(c.supervised_contrastive(x, LABELS) * alone)))(f)
    np.testing.assert_array_equal(grad, 0.0)


def test_supcon_base_temperature_scales_and_none_drops_the_factor():
    f, t = jnp.float32(_normal(11, N, V, D)), 0.2
    loss = jax.jit(lambda base: c.supervised_contrastive(f, LABELS, temperature=t,
                                                         base_temperature=base))
    plain = c.supervised_contrastive(f, LABELS, temperature=t, base_temperature=None)
    np.testing.assert_allclose(loss(t), plain, rtol=1e-6)
    np.testing.assert_allclose(loss(0.07), plain * t / 0.07, rtol=1e-6)


def test_dclw_at_large_sigma_is_dcl(views):
    """The weights ``2 - N softmax(s / sigma)`` tend to 1 as sigma grows."""
    # atol: a pair's loss is a difference of terms of size 1 / T = 10 (float32 ulp 1e-6).
    np.testing.assert_allclose(c.decoupled_contrastive_weighted(*views, sigma=1e7),
                               c.decoupled_contrastive(*views), rtol=1e-5, atol=1e-5)


def test_dclw_weights_are_detached(views):
    a, b = views
    grad = jax.jit(jax.grad(lambda x: jnp.sum(c.decoupled_contrastive_weighted(x, b))))(a)
    inputs = (np.float64(a), np.float64(b))
    frozen = central_difference(lambda x: np.sum(np_dcl(x, inputs[1], 0.1, 0.5, inputs)),
                                inputs[0])
    live = central_difference(lambda x: np.sum(np_dcl(x, inputs[1], 0.1, 0.5)), inputs[0])
    np.testing.assert_allclose(grad, frozen, rtol=1e-4, atol=1e-5)
    assert not np.allclose(grad, live, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", [c.info_nce, c.decoupled_contrastive,
                                c.decoupled_contrastive_weighted])
def test_two_view_losses_permute_with_the_batch(views, fn):
    a, b = views
    perm = np.random.default_rng(12).permutation(N)
    np.testing.assert_allclose(fn(a[perm], b[perm]), fn(a, b)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [c.decoupled_contrastive, c.decoupled_contrastive_weighted])
def test_dcl_is_symmetric_in_its_views(views, fn):
    np.testing.assert_allclose(fn(*views), fn(*views[::-1]), rtol=1e-6)


def test_label_losses_permute_with_the_batch():
    f, e = jnp.float32(_normal(13, N, V, D)), jnp.float32(_normal(14, N, D))
    perm = np.random.default_rng(15).permutation(N)
    np.testing.assert_allclose(c.supervised_contrastive(f[perm], LABELS[perm]),
                               c.supervised_contrastive(f, LABELS)[perm], rtol=1e-5)
    np.testing.assert_allclose(c.pair_contrastive(e[perm], LABELS[perm]),
                               c.pair_contrastive(e, LABELS)[perm], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.uniformity(e[perm]), c.uniformity(e), rtol=1e-6)


def test_normalized_losses_ignore_the_embedding_scale(views):
    a, b = views
    np.testing.assert_allclose(c.info_nce(3 * a, 0.5 * b), c.info_nce(a, b), rtol=1e-5)
    np.testing.assert_allclose(c.pair_contrastive(4 * a, LABELS), c.pair_contrastive(a, LABELS),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(c.info_nce(3 * a, b, normalize=False), c.info_nce(a, b))


def test_contrastive_reducers_agree_when_every_pair_costs():
    """With margins that make every pair loss positive, AvgNonZero is the mean."""
    e = jnp.float32(_normal(16, N, D))
    kwargs = dict(pos_margin=-1.0, neg_margin=3.0)
    np.testing.assert_allclose(c.pair_contrastive(e, LABELS, **kwargs),
                               c.pair_contrastive(e, LABELS, reducer="mean", **kwargs), rtol=1e-6)


def test_contrastive_of_a_perfect_embedding_is_zero():
    """Same-label rows identical, classes far apart: no pair costs, zero gradient."""
    e = jnp.eye(D)[LABELS % D] * 2.0
    value, grad = jitted(jax.value_and_grad(lambda x: jnp.sum(c.pair_contrastive(x, LABELS % D))),
                         e)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, 0.0)


def test_info_nce_with_identical_keys_is_log_n(views):
    """Every logit of a row equal: the loss is log N for each row, at any temperature."""
    same = jnp.ones((N, D))
    np.testing.assert_allclose(c.info_nce(views[0], same), np.full(N, np.log(N)), rtol=1e-6)
    # At T = 1e-4 the logits are 1e4, where float32 numbers are 1e-3 apart.
    np.testing.assert_allclose(c.info_nce(views[0], same, temperature=1e-4),
                               np.full(N, np.log(N)), atol=1e-3)


# -- jit, vmap over traced hyperparameters ------------------------------------------------------

@pytest.mark.parametrize("name, fn, np_fn, make, kwargs", CASES, ids=IDS)
def test_jit_matches_eager(name, fn, np_fn, make, kwargs):
    inputs = _jax_inputs(make(5))
    eager = fn(*inputs, **kwargs)
    np.testing.assert_allclose(jax.jit(lambda *a: fn(*a, **kwargs))(*inputs), eager, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("fn, make, name, values", [
    (c.info_nce, _two_views, "temperature", [0.05, 0.5, 2.0]),
    (c.clip, lambda s: (*_two_views(s), 4.0), "max_logit_scale", [1.0, 2.0, 3.0]),
    (c.supervised_contrastive, lambda s: (_normal(s, N, V, D), LABELS), "temperature",
     [0.05, 0.5, 2.0]),
    (c.supervised_contrastive, lambda s: (_normal(s, N, V, D), LABELS), "base_temperature",
     [0.05, 0.5, 2.0]),
    (c.decoupled_contrastive, _two_views, "temperature", [0.05, 0.5, 2.0]),
    (c.decoupled_contrastive_weighted, _two_views, "sigma", [0.1, 0.5, 2.0]),
    (c.pair_contrastive, lambda s: (_normal(s, N, D), LABELS), "neg_margin", [0.5, 1.0, 1.5]),
    (c.pair_contrastive, lambda s: (_normal(s, N, D), LABELS), "pos_margin", [0.0, 0.5, 1.0]),
    (c.alignment, _two_views, "alpha", [0.5, 1.0, 2.0]),
    (c.uniformity, lambda s: (_normal(s, N, D),), "t", [0.5, 2.0, 8.0]),
], ids=lambda x: x if isinstance(x, str) else "")
def test_vmap_over_a_traced_hyperparameter(fn, make, name, values):
    inputs = _jax_inputs(make(6))
    swept = jax.jit(jax.vmap(lambda h: fn(*inputs, **{name: h})))(jnp.float32(values))
    for h, got in zip(values, swept):
        np.testing.assert_allclose(got, fn(*inputs, **{name: h}), rtol=1e-5, atol=1e-6)
    assert not np.allclose(swept[0], swept[-1])


def test_vmap_over_the_logit_scale(views):
    scales = jnp.float32([0.0, 2.0, 4.0])
    swept = jax.vmap(lambda s: c.clip(*views, s))(scales)
    for s, got in zip(scales, swept):
        # atol: a pair's loss is a difference of terms of size exp(4) = 55.
        np.testing.assert_allclose(got, c.clip(*views, s), rtol=1e-5, atol=1e-5)


# -- Extreme inputs -------------------------------------------------------------------------------

def _finite(fn, *inputs):
    value, grads = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)),
                                              argnums=tuple(range(len(inputs)))))(*inputs)
    assert np.all(np.isfinite(value))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


# (name, loss of (a, b, t)): ``t`` is the temperature (or the parameter playing its part).
EXTREME = [
    ("info_nce", lambda a, b, t: c.info_nce(a, b, temperature=t)),
    ("info_nce_symmetric", lambda a, b, t: c.info_nce(a, b, temperature=t, symmetric=True)),
    ("clip", lambda a, b, t: c.clip(a, b, -jnp.log(t), max_logit_scale=None)),
    ("supervised_contrastive", lambda a, b, t: c.supervised_contrastive(
        jnp.stack([a, b], axis=1), LABELS, temperature=t)),
    ("supervised_contrastive_one_view", lambda a, b, t: c.supervised_contrastive(
        a[:, None], LABELS, temperature=t)),
    ("decoupled_contrastive", lambda a, b, t: c.decoupled_contrastive(a, b, temperature=t)),
    ("decoupled_contrastive_weighted", lambda a, b, t: c.decoupled_contrastive_weighted(
        a, b, temperature=t, sigma=t)),
    ("contrastive", lambda a, b, t: c.pair_contrastive(a, LABELS, neg_margin=t)),
    ("alignment", lambda a, b, t: c.alignment(a, b, alpha=jnp.minimum(t, 4.0))),
    ("uniformity", lambda a, b, t: c.uniformity(a, t=t)),
]


@pytest.mark.parametrize("name, fn", EXTREME, ids=[e[0] for e in EXTREME])
def test_finite_at_extreme_temperatures_and_inputs(name, fn):
    """Temperatures 1e-4 and 1e4; embeddings of magnitude 1e4 with cos = -1 between the views;
    all embeddings equal (cos = 1, distance 0); bfloat16."""
    a, b = _two_views(17)
    big = jnp.float32(np.sign(a) * 1e4)
    same = jnp.ones((N, D), jnp.float32)
    value_and_grad = jax.jit(jax.value_and_grad(lambda x, y, t: jnp.sum(fn(x, y, t)),
                                                argnums=(0, 1)))
    for t in (1e-4, 1e4):
        for x, y in [(jnp.float32(a), jnp.float32(b)), (big, -big), (same, same),
                     (jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))]:
            value, grads = value_and_grad(x, y, jnp.float32(t))
            assert np.isfinite(value), (t, x.dtype)
            for g in grads:
                assert np.all(np.isfinite(np.asarray(g, np.float32))), (t, x.dtype)


def test_unnormalized_inputs_at_tiny_temperature_stay_finite(views):
    big = views[0] * 1e4
    _finite(lambda a: c.info_nce(a, views[1], temperature=1e-4, normalize=False), big)
    _finite(lambda a: c.supervised_contrastive(a[:, None], LABELS, temperature=1e-4,
                                               normalize=False), big)
    _finite(lambda a: c.decoupled_contrastive(a, views[1], temperature=1e-4, normalize=False),
            big)


@pytest.mark.parametrize("name, fn, np_fn, make, kwargs", CASES, ids=IDS)
def test_bfloat16_is_computed_in_float32(name, fn, np_fn, make, kwargs):
    inputs = _jax_inputs(make(18))
    low = tuple(x.astype(jnp.bfloat16) if x.ndim >= 2 and x.dtype == jnp.float32 else x
                for x in inputs)
    got = fn(*low, **kwargs)
    assert got.dtype == jnp.float32
    exact = fn(*(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x for x in low),
               **kwargs)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6)


# -- Bad input ------------------------------------------------------------------------------------

def test_bad_inputs_raise_naming_the_argument():
    a, b = np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32)
    f = np.zeros((4, 2, 3), np.float32)
    labels = np.arange(4)
    cases = [
        (lambda: c.info_nce(a, b[:3]), ValueError, "`queries` and `keys`"),
        (lambda: c.info_nce(a[0], b[0]), ValueError, "`queries`"),
        (lambda: c.info_nce(a, b, temperature=0.0), ValueError, "`temperature`"),
        (lambda: c.info_nce(a.astype(np.int32), b), TypeError, "`queries`"),
        (lambda: c.clip(a, b, np.zeros(2, np.float32)), ValueError, "`logit_scale`"),
        (lambda: c.clip(a, b[:, :2], 1.0), ValueError, "`image` and `text`"),
        (lambda: c.supervised_contrastive(a, labels), ValueError, "`features`"),
        (lambda: c.supervised_contrastive(f[:, :0], labels), ValueError, "`features`"),
        (lambda: c.supervised_contrastive(f, labels[:3]), ValueError, "`labels`"),
        (lambda: c.supervised_contrastive(f, labels * 1.0), TypeError, "`labels`"),
        (lambda: c.supervised_contrastive(f, labels, contrast_mode="two"), ValueError,
         "`contrast_mode`"),
        (lambda: c.supervised_contrastive(f, labels, temperature=-1.0), ValueError,
         "`temperature`"),
        (lambda: c.supervised_contrastive(f, labels, base_temperature=0.0), ValueError,
         "`base_temperature`"),
        (lambda: c.decoupled_contrastive(a[:1], b[:1]), ValueError, "`z0`"),
        (lambda: c.decoupled_contrastive(a, b[:3]), ValueError, "`z0` and `z1`"),
        (lambda: c.decoupled_contrastive_weighted(a, b, sigma=0.0), ValueError, "`sigma`"),
        (lambda: c.pair_contrastive(a, labels[:3]), ValueError, "`labels`"),
        (lambda: c.pair_contrastive(a, labels * 1.0), TypeError, "`labels`"),
        (lambda: c.pair_contrastive(a, labels, reducer="sum"), ValueError, "`reducer`"),
        (lambda: c.pair_contrastive(a, labels, neg_margin=float("nan")), ValueError,
         "`neg_margin`"),
        (lambda: c.alignment(a, b[:, :2]), ValueError, "`x` and `y`"),
        (lambda: c.alignment(a, b, alpha=0.0), ValueError, "`alpha`"),
        (lambda: c.uniformity(a[:1]), ValueError, "`x`"),
        (lambda: c.uniformity(a, t=-2.0), ValueError, "`t`"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
