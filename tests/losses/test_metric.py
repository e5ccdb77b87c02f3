"""Tests for jaxreg.losses.metric.

Each loss is checked against golden values and gradients of pytorch-metric-learning 2.9.0 or of
the official code re-typed (``golden/metric.json``), against an independent NumPy
re-implementation written from its formula (float64, loops over pairs, proxies and
utterances) on random inputs, with gradients by central differences (of the NumPy loss with
the detached quantities frozen where the reference detaches), and in its invariances,
limiting cases, extreme inputs and error messages. The sharded checks are in
``tests/sharding/test_metric_losses.py``. The triplet loss is optax's, checked here against
``torch.nn.TripletMarginLoss``.
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

from jaxreg.losses import metric as ml

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "metric.json").read_text())
TOL = {"rtol": 1e-5, "atol": 1e-6}
N, D, K = 8, 4, 5


def _rng(seed):
    return np.random.default_rng(seed)


def _close(got, want, **tol):
    """float32 rounding is relative to the largest entry, so atol scales with it."""
    want = np.asarray(want, np.float64)
    atol = tol.pop("atol", 1e-6) * max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol.pop("rtol", 1e-5),
                               atol=atol)


# -- Independent NumPy references (float64) ---------------------------------------------------

def np_unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_lse(values):
    values = np.asarray(values)
    top = values.max()
    return top + np.log(np.exp(values - top).sum())


def np_log1p_sum_exp(values):
    return np_lse(np.append(np.asarray(values, np.float64), 0.0))


def np_circle(x, y, margin=0.4, gamma=80.0, weight_at=None):
    """``weight_at``: embeddings at which the detached alphas are evaluated; default ``x``."""
    s = np_unit(x) @ np_unit(x).T
    sw = s if weight_at is None else np_unit(weight_at) @ np_unit(weight_at).T
    out = np.zeros(len(x))
    for i in range(len(x)):
        pos = [j for j in range(len(x)) if j != i and y[j] == y[i]]
        neg = [j for j in range(len(x)) if y[j] != y[i]]
        if not pos or not neg:
            continue
        lp = [-gamma * max(1 + margin - sw[i, j], 0) * (s[i, j] - (1 - margin)) for j in pos]
        ln = [gamma * max(sw[i, j] + margin, 0) * (s[i, j] - margin) for j in neg]
        out[i] = np.logaddexp(0.0, np_lse(lp) + np_lse(ln))
    return out


def np_multi_similarity(x, y, alpha=2.0, beta=50.0, base=0.5):
    s = np_unit(x) @ np_unit(x).T
    out = np.zeros(len(x))
    for i in range(len(x)):
        pos = [-alpha * (s[i, j] - base) for j in range(len(x)) if j != i and y[j] == y[i]]
        neg = [beta * (s[i, j] - base) for j in range(len(x)) if y[j] != y[i]]
        out[i] = np_log1p_sum_exp(pos) / alpha + np_log1p_sum_exp(neg) / beta
    return out


def np_proxy_anchor(x, y, proxies, margin=0.1, alpha=32.0):
    cos = np_unit(x) @ np_unit(proxies).T
    pos_total, neg_total, with_pos = 0.0, 0.0, 0
    for p in range(len(proxies)):
        members = [i for i in range(len(x)) if y[i] == p]
        others = [i for i in range(len(x)) if y[i] != p]
        if members:
            with_pos += 1
            pos_total += np_log1p_sum_exp([-alpha * (cos[i, p] - margin) for i in members])
        neg_total += np_log1p_sum_exp([alpha * (cos[i, p] + margin) for i in others])
    return pos_total / max(with_pos, 1) + neg_total / len(proxies)


def np_cross_entropy(logits, y):
    return np.array([np_lse(row) - row[t] for row, t in zip(logits, y)])


def np_margin_head(x, w, y, target_fn, scale, clamp=1.0):
    cos = np.clip(np_unit(x) @ np_unit(w).T, -clamp, clamp)
    logits = cos.copy()
    for i, t in enumerate(y):
        logits[i, t] = target_fn(cos[i, t], i)
    return np_cross_entropy(scale * logits, y)


def np_cosface(x, w, y, scale=64.0, margin=0.35):
    return np_margin_head(x, w, y, lambda c, i: c - margin, scale)


def np_arcface(x, w, y, scale=64.0, margin=0.5, easy_margin=False):
    def target(c, i):
        theta = math.acos(c)
        if easy_margin:
            return math.cos(theta + margin) if c > 0 else c
        return math.cos(theta + margin) if theta + margin < math.pi else c - margin * math.sin(
            margin)
    return np_margin_head(x, w, y, target, scale)


def np_adaface(x, w, y, state=(20.0, 100.0), margin=0.4, h=0.333, scale=64.0, t_alpha=1.0,
               norms_at=None):
    """``norms_at``: features whose norms are used (detached in the reference)."""
    eps = 1e-3
    norms = np.clip(np.linalg.norm(x if norms_at is None else norms_at, axis=-1), eps, 100)
    mean = t_alpha * norms.mean() + (1 - t_alpha) * state[0]
    std = t_alpha * norms.std(ddof=1) + (1 - t_alpha) * state[1]
    scaler = np.clip(h * (norms - mean) / (std + eps), -1, 1)

    def target(c, i):
        angle = np.clip(math.acos(c) - margin * scaler[i], eps, math.pi - eps)
        return math.cos(angle) - margin * (1 + scaler[i])
    return np_margin_head(x, w, y, target, scale, clamp=1 - eps), (mean, std)


def np_ge2e(x, w, b, variant="softmax"):
    e = np_unit(x)
    speakers, utterances = x.shape[:2]
    out = np.zeros((speakers, utterances))
    for j in range(speakers):
        for i in range(utterances):
            sim = []
            for k in range(speakers):
                if k == j:
                    centroid = sum(e[j, u] for u in range(utterances) if u != i)
                else:
                    centroid = e[k].mean(0)
                sim.append(w * e[j, i] @ np_unit(centroid) + b)
            sim = np.array(sim)
            if variant == "softmax":
                out[j, i] = np_lse(sim) - sim[j]
            else:
                sig = 1 / (1 + np.exp(-sim))
                out[j, i] = 1 - sig[j] + max(sig[k] for k in range(speakers) if k != j)
    return out


# -- Inputs -------------------------------------------------------------------------------------

def _f64(a):
    return np.asarray(a, np.float32).astype(np.float64)


def pair_batch(seed, classes=3):
    rng = _rng(seed)
    x = _f64(rng.normal(size=(N, D)))
    y = rng.integers(0, classes, size=N)
    y[-1] = classes  # a class of its own: an anchor without positives
    return x, y


def head_batch(seed, norms=(1.0, 1.0)):
    rng = _rng(seed)
    x = _f64(rng.normal(size=(N, D)) * rng.uniform(*norms, size=(N, 1)))
    return x, _f64(rng.normal(size=(K, D))), rng.integers(0, K, size=N)


def speaker_batch(seed, speakers=3, utterances=4):
    return _f64(_rng(seed).normal(size=(speakers, utterances, 5)))


# -- Golden values from the reference implementations ------------------------------------------

def _pml_kwargs(call):
    renamed = {"m": "margin", "s": "scale"}
    return {renamed.get(k, k): v for k, v in call.items()}


def _avg_non_zero(losses):
    """PML's AvgNonZeroReducer: the mean over the losses > 0 (0 if none)."""
    return jnp.sum(losses) / jnp.maximum(jnp.sum(losses > 0), 1)


def _names(prefix):
    return sorted(k for k in GOLDEN if k.startswith(prefix))


def test_golden_file_covers_the_references():
    assert {"circle", "multi_similarity", "proxy_anchor", "arcface_pml", "arcface_insightface",
            "arcface_insightface_easy", "cosface_pml", "cosface_insightface",
            "am_softmax_pml", "adaface", "ge2e_softmax", "triplet"} <= set(GOLDEN)
    for name, entry in GOLDEN.items():
        if name != "_meta":
            assert "@" in entry["source"], name


@pytest.mark.parametrize("name", _names("circle") + _names("multi_similarity"))
def test_pair_losses_match_pml(name):
    entry = GOLDEN[name]
    fn = ml.circle if name.startswith("circle") else ml.multi_similarity
    reduce = _avg_non_zero if entry["reducer"] == "AvgNonZeroReducer" else jnp.mean
    assert entry["reducer"] in ("AvgNonZeroReducer", "MeanReducer")
    labels = jnp.asarray(entry["labels"])
    call = _pml_kwargs(entry["call"])
    x = jnp.float32(entry["embeddings"])
    _close(fn(x, labels, **call), entry["per_example"])
    value, grad = jax.jit(jax.value_and_grad(lambda x: reduce(fn(x, labels, **call))))(x)
    _close(value, entry["loss"])
    _close(grad, entry["grad"])


def test_circle_mean_differs_from_pml_when_an_anchor_has_no_positive():
    entry = GOLDEN["circle"]
    losses = ml.circle(jnp.float32(entry["embeddings"]), jnp.asarray(entry["labels"]))
    assert np.sum(losses == 0) == 1
    np.testing.assert_allclose(losses.mean() * N / (N - 1), entry["loss"], rtol=1e-5)
    assert not np.isclose(losses.mean(), entry["loss"], rtol=1e-3)


@pytest.mark.parametrize("name", _names("proxy_anchor"))
def test_proxy_anchor_matches_pml(name):
    entry = GOLDEN[name]
    labels = jnp.asarray(entry["labels"])
    assert len(set(entry["labels"])) < len(entry["proxies"])  # a proxy without positives
    value, (gx, gp) = jax.jit(jax.value_and_grad(
        lambda x, p: ml.proxy_anchor(x, labels, p, **entry["call"]), argnums=(0, 1)))(
        jnp.float32(entry["embeddings"]), jnp.float32(entry["proxies"]))
    _close(value, entry["loss"])
    _close(gx, entry["grad"])
    _close(gp, entry["grad_proxies"])


HEADS = {"arcface": ml.arcface, "cosface": ml.cosface, "am_softmax": ml.additive_margin_softmax}


@pytest.mark.parametrize("name", _names("arcface") + _names("cosface") + _names("am_softmax"))
def test_margin_heads_match_references(name):
    entry = GOLDEN[name]
    (fn,) = [fn for prefix, fn in HEADS.items() if name.startswith(prefix)]
    labels = jnp.asarray(entry["labels"])
    value, (gx, gw) = jax.jit(jax.value_and_grad(
        lambda x, w: fn(x, w, labels, **entry["call"]).mean(), argnums=(0, 1)))(
        jnp.float32(entry["features"]), jnp.float32(entry["centers"]))
    _close(value, entry["loss"])
    _close(gx, entry["grad"])
    _close(gw, entry["grad_centers"])


def test_arcface_golden_inputs_reach_the_fallback_branch():
    cos_y = np.asarray(GOLDEN["arcface_insightface"]["target_cos"])
    assert np.any(cos_y <= math.cos(math.pi - 0.5)) and np.any(cos_y > 0)
    assert np.any((cos_y < 0) & (cos_y > math.cos(math.pi - 0.5)))


def test_arcface_radians_equal_pml_degrees():
    assert GOLDEN["arcface_pml"]["pml_kwargs"]["margin"] == pytest.approx(math.degrees(0.5))
    np.testing.assert_allclose(GOLDEN["arcface_pml"]["loss"],
                               GOLDEN["arcface_insightface"]["loss"], rtol=1e-6)


@pytest.mark.parametrize("name", _names("adaface"))
def test_adaface_matches_reference(name):
    entry = GOLDEN[name]
    labels = jnp.asarray(entry["labels"])
    state = ml.AdaFaceState(*map(jnp.float32, entry["state"]))
    call = _pml_kwargs(entry["call"])

    def mean_loss(x, w):
        losses, new_state = ml.adaface(x, w, labels, state, **call)
        return losses.mean(), (losses, new_state)

    (value, (losses, new_state)), (gx, gw) = jax.jit(jax.value_and_grad(
        mean_loss, argnums=(0, 1), has_aux=True))(jnp.float32(entry["features"]),
                                                 jnp.float32(entry["centers"]))
    _close(value, entry["loss"])
    _close(losses, entry["per_example"])
    _close(gx, entry["grad"])
    _close(gw, entry["grad_centers"])
    _close(new_state, entry["new_state"])
    assert all(s.dtype == jnp.float32 for s in new_state)


@pytest.mark.parametrize("name", _names("ge2e"))
def test_ge2e_softmax_matches_corentinj(name):
    entry = GOLDEN[name]
    x, w, b = jnp.float32(entry["embeddings"]), jnp.float32(entry["w"]), jnp.float32(entry["b"])
    _close(ml.ge2e(x, w, b), entry["per_example"])
    value, grads = jax.jit(jax.value_and_grad(lambda *a: ml.ge2e(*a).mean(),
                                              argnums=(0, 1, 2)))(x, w, b)
    _close(value, entry["loss"])
    for got, key in zip(grads, ("grad", "grad_w", "grad_b")):
        _close(got, entry[key])


@pytest.mark.parametrize("name", _names("triplet"))
def test_optax_triplet_margin_loss_matches_torch(name):
    """optax adds ``eps`` to the squared distance, torch to each coordinate of the difference:
    with ``eps = 0`` they are the same function; at the default ``eps = 1e-6`` they differ by
    about ``eps * sqrt(D)`` per distance, hence the looser atol there."""
    entry = GOLDEN[name]
    call = {"margin": 1.0, "eps": 1e-6} | entry["call"]
    a, p, n = (jnp.float32(entry[k]) for k in ("anchors", "positives", "negatives"))

    def loss(a):
        return optax.losses.triplet_margin_loss(a, p, n, **call)

    tol = {"rtol": 1e-5, "atol": 1e-6 if call["eps"] == 0 else 1e-5}
    _close(loss(a), entry["per_example"], **tol)
    value, grad = jax.value_and_grad(lambda a: loss(a).mean())(a)
    _close(value, entry["loss"], **tol)
    _close(grad, entry["grad"], **tol)


# -- NumPy references on random inputs ----------------------------------------------------------

PAIR_CASES = [
    ("circle", ml.circle, np_circle, {}),
    ("circle_face", ml.circle, np_circle, {"margin": 0.25, "gamma": 256.0}),
    ("circle_negative_margin", ml.circle, np_circle, {"margin": -0.1, "gamma": 30.0}),
    ("multi_similarity", ml.multi_similarity, np_multi_similarity, {}),
    ("multi_similarity_alt", ml.multi_similarity, np_multi_similarity,
     {"alpha": 0.5, "beta": 5.0, "base": -0.2}),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, fn, np_fn, kwargs", PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_pair_losses_match_numpy(name, fn, np_fn, kwargs, seed):
    x, y = pair_batch(seed)
    got = fn(jnp.float32(x), jnp.asarray(y), **kwargs)
    assert got.shape == (N,) and got.dtype == jnp.float32
    _close(got, np_fn(x, y, **kwargs))


@pytest.mark.parametrize("name, fn, np_fn, kwargs", PAIR_CASES, ids=[c[0] for c in PAIR_CASES])
def test_pair_loss_gradients_match_finite_differences(name, fn, np_fn, kwargs):
    """Circle's alphas are detached: its gradient is that of the NumPy loss with the alphas
    frozen at the current embeddings."""
    x, y = pair_batch(3)
    weights = {"weight_at": x} if np_fn is np_circle else {}
    cotangent = _rng(4).uniform(0.5, 1.5, size=N)
    want = central_difference(lambda v: np_fn(v, y, **kwargs, **weights) @ cotangent, x)
    got = jax.jit(jax.grad(lambda v: fn(v, jnp.asarray(y), **kwargs) @ cotangent))(
        jnp.float32(x))
    _close(got, want, atol=1e-5)  # central differences of a loss of magnitude ~100


def test_circle_gradient_differs_with_differentiated_alphas():
    x, y = pair_batch(5)
    full = central_difference(lambda v: np_circle(v, y).sum(), x)
    got = jax.grad(lambda v: ml.circle(v, jnp.asarray(y)).sum())(jnp.float32(x))
    assert not np.allclose(got, full, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kwargs", [{}, {"margin": 0.0, "alpha": 8.0}])
@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_anchor_matches_numpy(kwargs, seed):
    x, _ = pair_batch(seed)
    proxies = _f64(_rng(seed + 10).normal(size=(K, D)))
    y = _rng(seed + 20).integers(0, K - 1, size=N)  # the last proxy has no positive
    got = ml.proxy_anchor(jnp.float32(x), jnp.asarray(y), jnp.float32(proxies), **kwargs)
    _close(got, np_proxy_anchor(x, y, proxies, **kwargs))
    gx, gp = jax.jit(jax.grad(lambda a, p: ml.proxy_anchor(a, jnp.asarray(y), p, **kwargs),
                              argnums=(0, 1)))(jnp.float32(x), jnp.float32(proxies))
    _close(gx, central_difference(lambda v: np_proxy_anchor(v, y, proxies, **kwargs), x),
           atol=1e-5)
    _close(gp, central_difference(lambda v: np_proxy_anchor(x, y, v, **kwargs), proxies),
           atol=1e-5)


HEAD_CASES = [
    ("cosface", ml.cosface, np_cosface, {}),
    ("cosface_insightface_m", ml.cosface, np_cosface, {"margin": 0.4}),
    ("am_softmax", ml.additive_margin_softmax, np_cosface, {"scale": 30.0, "margin": 0.35}),
    ("arcface", ml.arcface, np_arcface, {}),
    ("arcface_small", ml.arcface, np_arcface, {"scale": 8.0, "margin": 1.2}),
    ("arcface_easy", ml.arcface, np_arcface, {"easy_margin": True}),
]


def _fallback_batch(seed):
    """Features pointing near, across and away from their centres (both ArcFace branches)."""
    x, w, y = head_batch(seed)
    rng = _rng(seed + 100)
    for i in range(0, N, 3):
        x[i] = -w[y[i]] * rng.uniform(0.5, 2.0) + 0.05 * rng.normal(size=D)
    return _f64(x), w, y


@pytest.mark.parametrize("name, fn, np_fn, kwargs", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_margin_heads_match_numpy(name, fn, np_fn, kwargs):
    x, w, y = _fallback_batch(0)
    got = fn(jnp.float32(x), jnp.float32(w), jnp.asarray(y), **kwargs)
    assert got.shape == (N,) and got.dtype == jnp.float32
    _close(got, np_fn(x, w, y, **kwargs))
    cotangent = _rng(7).uniform(0.5, 1.5, size=N)
    gx, gw = jax.jit(jax.grad(lambda a, c: fn(a, c, jnp.asarray(y), **kwargs) @ cotangent,
                              argnums=(0, 1)))(jnp.float32(x), jnp.float32(w))
    _close(gx, central_difference(lambda v: np_fn(v, w, y, **kwargs) @ cotangent, x),
           atol=1e-5)
    _close(gw, central_difference(lambda v: np_fn(x, v, y, **kwargs) @ cotangent, w),
           atol=1e-5)


@pytest.mark.parametrize("kwargs, state", [
    ({}, (20.0, 100.0)),
    ({"margin": 0.5, "h": 0.333, "scale": 32.0, "t_alpha": 0.01}, (9.0, 2.0)),
    ({"margin": 0.3, "h": 1.0, "t_alpha": 0.5}, (4.0, 1.0)),
])
def test_adaface_matches_numpy(kwargs, state):
    x, w, y = head_batch(8, norms=(1.0, 30.0))
    want, want_state = np_adaface(x, w, y, state, **kwargs)
    got, got_state = ml.adaface(jnp.float32(x), jnp.float32(w), jnp.asarray(y),
                                ml.AdaFaceState(*map(jnp.float32, state)), **kwargs)
    _close(got, want)
    _close(got_state, want_state)
    # the norms (and so the margins and statistics) are detached
    cotangent = _rng(9).uniform(0.5, 1.5, size=N)
    gx = jax.grad(lambda a: ml.adaface(a, jnp.float32(w), jnp.asarray(y),
                                       ml.AdaFaceState(*map(jnp.float32, state)),
                                       **kwargs)[0] @ cotangent)(jnp.float32(x))
    _close(gx, central_difference(
        lambda v: np_adaface(v, w, y, state, norms_at=x, **kwargs)[0] @ cotangent, x),
        atol=1e-5)


@pytest.mark.parametrize("variant", ["softmax", "contrast"])
@pytest.mark.parametrize("shape, w, b", [((3, 4), 10.0, -5.0), ((4, 2), 2.5, 0.7)])
def test_ge2e_matches_numpy(variant, shape, w, b):
    x = speaker_batch(11, *shape)
    got = ml.ge2e(jnp.float32(x), w, b, variant=variant)
    assert got.shape == shape
    _close(got, np_ge2e(x, w, b, variant))
    if shape != (3, 4):
        return  # gradients on one shape (the NumPy loops are slow)
    gx, gw, gb = jax.jit(jax.grad(lambda *a: ml.ge2e(*a, variant=variant).sum(),
                                  argnums=(0, 1, 2)))(jnp.float32(x), jnp.float32(w),
                                                      jnp.float32(b))
    _close(gx, central_difference(lambda v: np_ge2e(v, w, b, variant).sum(), x), atol=1e-5)
    for got_g, position in ((gw, 1), (gb, 2)):
        args = [x, w, b]

        def scalar_loss(v, position=position, args=args):
            args = list(args)
            args[position] = float(v[0])
            return np_ge2e(*args, variant).sum()

        _close(got_g, central_difference(scalar_loss, np.array([args[position]]))[0],
               atol=1e-5)


# -- Properties and limiting cases --------------------------------------------------------------

@pytest.mark.parametrize("fn", [ml.circle, ml.multi_similarity])
def test_pair_losses_are_permutation_equivariant_and_label_blind(fn):
    x, y = pair_batch(12)
    perm = _rng(13).permutation(N)
    base = fn(jnp.float32(x), jnp.asarray(y))
    np.testing.assert_allclose(fn(jnp.float32(x[perm]), jnp.asarray(y[perm])), base[perm],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(jnp.float32(x), jnp.asarray(7 * y - 100)), base, rtol=1e-6)
    np.testing.assert_allclose(fn(jnp.float32(3.7 * x), jnp.asarray(y)), base, rtol=1e-5,
                               atol=1e-6)


def test_proxy_anchor_is_permutation_invariant():
    x, y = pair_batch(14, classes=K - 1)
    proxies = jnp.float32(_rng(15).normal(size=(K, D)))
    perm = _rng(16).permutation(N)
    np.testing.assert_allclose(
        ml.proxy_anchor(jnp.float32(x[perm]), jnp.asarray(y[perm]), proxies),
        ml.proxy_anchor(jnp.float32(x), jnp.asarray(y), proxies), rtol=1e-6)


@pytest.mark.parametrize("fn", [ml.circle, ml.multi_similarity])
def test_single_class_batch_gives_finite_values_and_gradients(fn):
    x = jnp.float32(_rng(17).normal(size=(N, D)))
    one_class, all_distinct = jnp.zeros(N, int), jnp.arange(N)
    for labels in (one_class, all_distinct):
        loss, grad = jax.value_and_grad(lambda v: fn(v, labels).sum())(x)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
    if fn is ml.circle:  # no negatives, or no positives: every anchor is 0
        np.testing.assert_array_equal(fn(x, one_class), 0.0)
        np.testing.assert_array_equal(fn(x, all_distinct), 0.0)
    else:  # no positives: only the negative term
        sim = np.asarray(ml._pairs(x, all_distinct, None)[0], np.float64)
        neg = [np_log1p_sum_exp([50 * (sim[i, j] - 0.5) for j in range(N) if j != i]) / 50
               for i in range(N)]
        _close(fn(x, all_distinct), neg)


def test_additive_margin_softmax_is_cosface_at_scale_30():
    x, w, y = head_batch(18)
    args = (jnp.float32(x), jnp.float32(w), jnp.asarray(y))
    np.testing.assert_array_equal(ml.additive_margin_softmax(*args),
                                  ml.cosface(*args, scale=30.0))


@pytest.mark.parametrize("head", [ml.cosface, ml.arcface])
def test_zero_margin_heads_are_scaled_cosine_cross_entropy(head):
    x, w, y = head_batch(19)
    cos = jnp.float32(np_unit(x) @ np_unit(w).T)
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(7.0 * cos, jnp.asarray(y))
    np.testing.assert_allclose(head(jnp.float32(x), jnp.float32(w), y, scale=7.0, margin=0.0),
                               ce, rtol=1e-5, atol=1e-6)


def test_adaface_without_adaptivity_is_cosface_on_clamped_cosines():
    x, w, y = head_batch(20, norms=(1.0, 30.0))
    args = (jnp.float32(x), jnp.float32(w), jnp.asarray(y))
    loss, _ = ml.adaface(*args, ml.adaface_init(), margin=0.3, h=0.0, scale=16.0)
    np.testing.assert_allclose(loss, ml.cosface(*args, scale=16.0, margin=0.3), rtol=1e-5)


def test_adaface_state_update():
    x, w, y = head_batch(21, norms=(1.0, 30.0))
    args = (jnp.float32(x), jnp.float32(w), jnp.asarray(y))
    norms = np.linalg.norm(x, axis=-1)
    old = ml.AdaFaceState(jnp.float32(3.0), jnp.float32(4.0))
    _, fresh = ml.adaface(*args, old, t_alpha=1.0)
    _close(fresh, (norms.mean(), norms.std(ddof=1)))
    _, kept = ml.adaface(*args, old, t_alpha=0.0)
    _close(kept, (3.0, 4.0))
    np.testing.assert_array_equal(ml.adaface_init(), (20.0, 100.0))
    assert ml.adaface_init().batch_mean.dtype == jnp.float32
    with jax.enable_x64(True):
        state = ml.adaface_init(jnp.float64)
        _, new = ml.adaface(x, w, y, state)
        assert new.batch_mean.dtype == new.batch_std.dtype == jnp.float64


def test_adaface_state_is_a_scan_carry():
    x, w, y = head_batch(22, norms=(1.0, 30.0))

    def step(state, scale):
        loss, state = ml.adaface(jnp.float32(x) * scale, jnp.float32(w), y, state,
                                 t_alpha=0.1)
        return state, loss.mean()

    state, losses = jax.lax.scan(step, ml.adaface_init(), jnp.float32([1.0, 2.0, 0.5]))
    assert losses.shape == (3,) and np.all(np.isfinite(losses))
    assert state.batch_mean.dtype == jnp.float32


def test_ge2e_softmax_ignores_the_bias_but_contrast_does_not():
    x = jnp.float32(speaker_batch(23))
    base = ml.ge2e(x, 10.0, -5.0)
    np.testing.assert_allclose(ml.ge2e(x, 10.0, 3.0), base, rtol=1e-5, atol=1e-6)
    assert jax.grad(lambda b: ml.ge2e(x, 10.0, b).sum())(jnp.float32(-5.0)) == pytest.approx(
        0.0, abs=1e-5)
    assert not np.allclose(ml.ge2e(x, 10.0, 3.0, variant="contrast"),
                           ml.ge2e(x, 10.0, -5.0, variant="contrast"))


def test_ge2e_is_invariant_to_the_embedding_norms():
    x = speaker_batch(24)
    scales = _rng(25).uniform(0.1, 10.0, size=x.shape[:2] + (1,))
    np.testing.assert_allclose(ml.ge2e(jnp.float32(x * scales), 10.0, -5.0),
                               ml.ge2e(jnp.float32(x), 10.0, -5.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["softmax", "contrast"])
def test_ge2e_weight_is_floored_with_a_straight_through_gradient(variant):
    x = jnp.float32(speaker_batch(26))

    def loss(w):
        return ml.ge2e(x, w, -1.0, variant=variant).sum()

    at_floor = jax.value_and_grad(loss)(jnp.float32(1e-6))
    for w in (0.0, -3.0, -1e4):
        value, grad = jax.value_and_grad(loss)(jnp.float32(w))
        np.testing.assert_allclose(value, at_floor[0], rtol=1e-6)
        np.testing.assert_allclose(grad, at_floor[1], rtol=1e-5)
        assert grad != 0


# -- jit, vmap over hyperparameters, float64 gradients -----------------------------------------

def _calls():
    """name -> (function of one traced hyperparameter, a value of it)."""
    x, y = pair_batch(30)
    x, y = jnp.float32(x), jnp.asarray(y)
    f, w, t = (jnp.float32(a) if a.dtype.kind == "f" else jnp.asarray(a)
               for a in head_batch(31, norms=(1.0, 30.0)))
    proxies = jnp.float32(_rng(32).normal(size=(K, D)))
    speakers = jnp.float32(speaker_batch(33))
    state = ml.adaface_init()
    return {
        "circle_gamma": (lambda g: ml.circle(x, y, gamma=g), 80.0),
        "multi_similarity_base": (lambda b: ml.multi_similarity(x, y, base=b), 0.5),
        "proxy_anchor_alpha": (lambda a: ml.proxy_anchor(x, y, proxies, alpha=a), 32.0),
        "cosface_margin": (lambda m: ml.cosface(f, w, t, margin=m), 0.35),
        "arcface_margin": (lambda m: ml.arcface(f, w, t, margin=m), 0.5),
        "adaface_h": (lambda h: ml.adaface(f, w, t, state, h=h), 0.333),
        "ge2e_w": (lambda v: ml.ge2e(speakers, v, -5.0), 10.0),
        "ge2e_contrast_b": (lambda b: ml.ge2e(speakers, 10.0, b, variant="contrast"), -5.0),
    }


@pytest.mark.parametrize("name", sorted(_calls()))
def test_jit_equals_eager_and_vmap_over_a_hyperparameter(name):
    fn, value = _calls()[name]
    eager = fn(value)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), jax.jit(fn)(value), eager)
    grid = jnp.float32([value, 0.5 * value, 0.9 * value])
    swept = jax.vmap(fn)(grid)
    for i, h in enumerate(grid):
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, **TOL), swept, fn(h))


def test_float64_gradients():
    """Circle (detached alphas) and AdaFace's features (detached norms) are checked against
    frozen finite differences above; here every other gradient, by ``check_grads`` (all at
    once, to compile once)."""
    with jax.enable_x64(True):
        x, y = pair_batch(34)
        f, w, t = _fallback_batch(36)
        inputs = (x, _rng(35).normal(size=(K, D)), f, w, speaker_batch(37))
        assert ml.multi_similarity(x, y).dtype == jnp.float64

        def every_loss(x, proxies, features, w, speakers):
            return (ml.multi_similarity(x, y), ml.proxy_anchor(x, y, proxies),
                    ml.cosface(features, w, t), ml.arcface(features, w, t, scale=8.0),
                    ml.arcface(features, w, t, scale=8.0, easy_margin=True),
                    ml.adaface(f, w, t, ml.adaface_init(), scale=8.0)[0],  # centres only
                    ml.ge2e(speakers, 3.0, -1.0), ml.ge2e(speakers, 3.0, -1.0,
                                                          variant="contrast"))

        check_grads(jax.jit(every_loss), inputs, order=1, modes=("rev",), atol=1e-5,
                    rtol=1e-4)


# -- Extreme and low-precision inputs ---------------------------------------------------------

@jax.jit
def _values_and_gradients(x, centers, y, proxies, speakers):
    """Every loss (one head per implementation), summed to a scalar, and its gradient in
    ``x`` (one compilation per dtype)."""
    losses = {
        "circle_overflow": lambda a: ml.circle(a, y, gamma=300.0).sum(),
        "multi_similarity": lambda a: ml.multi_similarity(a, y).sum(),
        "proxy_anchor": lambda a: ml.proxy_anchor(a, y, proxies),
        "cosface": lambda a: ml.cosface(a, centers, y).sum(),
        "arcface": lambda a: ml.arcface(a, centers, y).sum(),
        "arcface_easy": lambda a: ml.arcface(a, centers, y, easy_margin=True).sum(),
        "adaface": lambda a: ml.adaface(a, centers, y, ml.adaface_init())[0].sum(),
        "ge2e": lambda a: ml.ge2e(speakers * jnp.abs(a).sum(), 10.0, -5.0).sum(),
        "ge2e_contrast": lambda a: ml.ge2e(speakers * jnp.abs(a).sum(), 10.0, -5.0,
                                           variant="contrast").sum(),
    }
    return {name: jax.value_and_grad(loss)(x) for name, loss in losses.items()}


@pytest.mark.parametrize("case", ["huge", "cos_one", "bfloat16"])
def test_finite_values_and_gradients_at_extreme_inputs(case):
    rng = _rng(40)
    centers = rng.normal(size=(K, D))
    y = np.array([0, 0, 1, 1, 2, 3, 4, 4])
    x = rng.normal(size=(N, D)) * (1e4 if case == "huge" else 1.0)
    if case == "cos_one":  # features on their centres (and on their own duplicates)
        x = centers[y] * np.arange(1, N + 1)[:, None]
        x[1] = -centers[0]  # |cos| = 1 the other way
    dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
    x = jnp.asarray(x, dtype)
    centers, proxies = jnp.asarray(centers, dtype), jnp.asarray(centers, dtype)
    speakers = jnp.asarray(speaker_batch(41), dtype)
    results = _values_and_gradients(x, centers, jnp.asarray(y), proxies, speakers)
    for name, (value, grad) in results.items():
        assert value.dtype == jnp.float32, name
        assert np.isfinite(value), name
        assert np.all(np.isfinite(np.asarray(grad, np.float32))), name


def test_arcface_gradient_is_finite_exactly_at_cos_one():
    w = jnp.float32([[1.0, 0.0], [0.0, 1.0]])
    x = jnp.float32([[1.0, 0.0], [0.0, -1.0]])  # cos = 1 and cos = -1 with the labels
    y = jnp.array([0, 1])
    for kwargs in ({}, {"easy_margin": True}):
        value, grads = jax.jit(jax.value_and_grad(
            lambda a, c: ml.arcface(a, c, y, **kwargs).sum(), argnums=(0, 1)))(x, w)
        assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    target = np.array([math.cos(0.5), -1.0 - 0.5 * math.sin(0.5)])  # both branches at |cos|=1
    logits = 64.0 * np.array([[target[0], 0.0], [0.0, target[1]]])
    # the reference's lse - target is exact to ~1e-14 absolutely (it gives 0 for the first
    # row); ours is softplus(lse of the differences), exact relatively: exp(-64 cos 0.5)
    np.testing.assert_allclose(ml.arcface(x, w, y), np_cross_entropy(logits, [0, 1]),
                               rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ml.arcface(x, w, y)[0], np.exp(-64 * math.cos(0.5)), rtol=1e-5)


def test_circle_does_not_overflow_at_gamma_300():
    """PML's test_overflow: gamma = 300 on embeddings of norm ~1000."""
    x, y = pair_batch(42)
    got = ml.circle(jnp.float32(1000 * x), jnp.asarray(y), gamma=300.0)
    assert np.all(np.isfinite(got)) and np.max(got) > 100
    _close(got, np_circle(x, y, gamma=300.0))


# -- Errors -------------------------------------------------------------------------------------

def test_bad_inputs_raise_errors_naming_the_argument():
    x, y = jnp.ones((N, D)), jnp.arange(N) % 3
    centers = jnp.ones((K, D))
    cases = [
        (TypeError, "`labels`", lambda: ml.circle(x, jnp.float32(y))),
        (ValueError, "`labels`", lambda: ml.multi_similarity(x, y[:-1])),
        (ValueError, "`embeddings`", lambda: ml.circle(x[0], y)),
        (ValueError, "`gamma`", lambda: ml.circle(x, y, gamma=0.0)),
        (ValueError, "`alpha`", lambda: ml.multi_similarity(x, y, alpha=-1.0)),
        (ValueError, "`proxies`", lambda: ml.proxy_anchor(x, y, centers[:, :2])),
        (ValueError, "`labels`", lambda: ml.proxy_anchor(x, y + K, centers)),
        (ValueError, "`centers`", lambda: ml.cosface(x, centers[:, :2], y)),
        (ValueError, "`features`", lambda: ml.arcface(x[0], centers, y)),
        (ValueError, "`labels`", lambda: ml.arcface(x, centers, y - 1)),
        (ValueError, "`scale`", lambda: ml.additive_margin_softmax(x, centers, y, scale=0.0)),
        (ValueError, "`margin`", lambda: ml.arcface(x, centers, y, margin=-0.1)),
        (TypeError, "`easy_margin`", lambda: ml.arcface(x, centers, y, easy_margin=1)),
        (TypeError, "`state`", lambda: ml.adaface(x, centers, y, (20.0, 100.0))),
        (ValueError, "`features`", lambda: ml.adaface(x[:1], centers, y[:1], ml.adaface_init())),
        (ValueError, "`t_alpha`", lambda: ml.adaface(x, centers, y, ml.adaface_init(),
                                                     t_alpha=1.5)),
        (ValueError, "`embeddings`", lambda: ml.ge2e(x, 10.0, -5.0)),
        (ValueError, "`embeddings`", lambda: ml.ge2e(jnp.ones((3, 1, D)), 10.0, -5.0)),
        (ValueError, "`w`", lambda: ml.ge2e(jnp.ones((3, 2, D)), jnp.ones(2), -5.0)),
        (ValueError, "`variant`", lambda: ml.ge2e(jnp.ones((3, 2, D)), 10.0, -5.0,
                                                  variant="ce")),
    ]
    for error, match, call in cases:
        with pytest.raises(error, match=match):
            call()


def test_traced_out_of_range_labels_give_nan():
    x, y = jnp.float32(_rng(50).normal(size=(N, D))), jnp.arange(N) % K
    centers = jnp.float32(_rng(51).normal(size=(K, D)))
    bad = y.at[2].set(K)
    heads = jax.jit(lambda lab: ml.arcface(x, centers, lab))(bad)
    assert np.isnan(heads[2]) and np.all(np.isfinite(np.delete(np.asarray(heads), 2)))
    assert np.isnan(jax.jit(lambda lab: ml.proxy_anchor(x, lab, centers))(bad))
