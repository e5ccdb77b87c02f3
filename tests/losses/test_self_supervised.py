"""Tests for jaxreg.losses.self_supervised.

Each loss is checked against golden values and gradients of lightly 1.6.0 or of the official
code re-typed (``golden/self_supervised.json``), against an independent NumPy re-implementation
written from its formula (float64, loops where the formula has them) on random inputs, with
gradients by central differences where no stop-gradient is involved, and in its invariances,
limiting cases and error messages. The sharded checks are in
``tests/sharding/test_self_supervised_losses.py``.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numeric import central_difference

from jaxreg.losses import self_supervised as ss

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent / "golden" / "self_supervised.json").read_text())
GOLDEN_NAMES = sorted(k for k in GOLDEN if not k.startswith("_") and k != "sinkhorn_knopp")
TOL = {"rtol": 1e-5, "atol": 1e-6}


def _rng(seed):
    return np.random.default_rng(seed)


# -- Independent NumPy references (float64) ---------------------------------------------------

def np_off_diagonal_squares(c):
    return sum(c[i, j] ** 2 for i in range(len(c)) for j in range(len(c)) if i != j)


def np_standardize(z, ddof=0, eps=1e-5):
    return (z - z.mean(0)) / np.sqrt(z.var(0, ddof=ddof) + eps)


def np_barlow_twins(z0, z1, lambda_=0.0051, eps=1e-5):
    c = np_standardize(z0, eps=eps).T @ np_standardize(z1, eps=eps) / len(z0)
    return np.sum((np.diag(c) - 1) ** 2) + lambda_ * np_off_diagonal_squares(c)


def np_mixed_barlow_twins(z0, z1, zm, ratio, perm, lambda_=0.0078125, mixed_lambda=4.0):
    a, b, m = (np_standardize(z, ddof=1, eps=0.0) for z in (z0, z1, zm))
    n = len(z0)
    c = a.T @ b / n
    loss = np.sum((np.diag(c) - 1) ** 2) + lambda_ * np_off_diagonal_squares(c)
    for view in (a, b):
        target = (ratio * a.T @ view + (1 - ratio) * b[perm].T @ view) / n
        loss += mixed_lambda * lambda_ * np.sum((m.T @ view / n - target) ** 2)
    return loss


def np_vicreg(z0, z1, sim=25.0, std=25.0, cov=1.0, eps=1e-4):
    n, d = z0.shape
    total = sim * np.mean((z0 - z1) ** 2)
    for z in (z0, z1):
        centred = z - z.mean(0)
        total += std * np.mean(np.maximum(0, 1 - np.sqrt(centred.var(0, ddof=1) + eps))) / 2
        total += cov * np_off_diagonal_squares(centred.T @ centred / (n - 1)) / d
    return total


def np_whiten(x, eps=0.0):
    centred = x - x.mean(0)
    cov = centred.T @ centred / (len(x) - 1)
    chol = np.linalg.cholesky((1 - eps) * cov + eps * np.eye(x.shape[1]))
    return centred @ np.linalg.inv(chol).T


def np_w_mse(views, perms, w_size, eps=0.0, normalize=True):
    total, pairs = 0.0, 0
    for perm in perms:
        white = np.empty_like(views)
        for start in range(0, views.shape[1], w_size):
            idx = perm[start:start + w_size]
            for v in range(len(views)):
                white[v, idx] = np_whiten(views[v, idx], eps)
        for i in range(len(views)):
            for j in range(i + 1, len(views)):
                a, b = white[i], white[j]
                if normalize:
                    a = a / np.linalg.norm(a, axis=1, keepdims=True)
                    b = b / np.linalg.norm(b, axis=1, keepdims=True)
                    total += 2 - 2 * np.mean(np.sum(a * b, axis=1))
                else:
                    total += np.mean((a - b) ** 2)
                pairs += 1
    return total / pairs


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_dino(student, teacher, center, ts=0.1, tt=0.04, momentum=0.9):
    losses, pairs = np.zeros(student.shape[1]), 0
    for t in range(len(teacher)):
        for s in range(len(student)):
            if t != s:
                target = np_softmax((teacher[t] - center) / tt)
                losses -= np.sum(target * np.log(np_softmax(student[s] / ts)), axis=1)
                pairs += 1
    return losses / pairs, momentum * center + (1 - momentum) * teacher.mean((0, 1))


def np_sinkhorn(scores, epsilon=0.05, iterations=3):
    q = np.exp(scores / epsilon).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


def np_swav(scores, assign=(0, 1), temperature=0.1, **sinkhorn):
    losses = np.zeros(scores.shape[1])
    for a in assign:
        codes = np_sinkhorn(scores[a], **sinkhorn)
        for v in range(len(scores)):
            if v != a:
                log_p = np.log(np_softmax(scores[v] / temperature))
                losses -= np.sum(codes * log_p, axis=1)
    return losses / ((len(scores) - 1) * len(assign))


def np_koleo(x, eps=1e-8):
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    out = []
    for i in range(len(x)):
        j = min((k for k in range(len(x)) if k != i),
                key=lambda k: np.linalg.norm(unit[i] - unit[k]))
        out.append(-np.log(np.linalg.norm(unit[i] - unit[j] + eps) + eps))
    return np.array(out)


# -- Golden values from lightly and the official code -----------------------------------------

def _golden_loss(name):
    """(our loss of the golden entry's differentiated inputs as keywords, scalar)."""
    entry = GOLDEN[name]
    call = dict(entry["call"])
    if "crops_for_assign" in call:
        call["crops_for_assign"] = tuple(call["crops_for_assign"])
    f32 = lambda key: jnp.float32(entry[key])  # noqa: E731
    if name.startswith("w_mse"):
        return lambda views: ss.w_mse(views, jax.random.key(entry["key"]), **call)
    if name.startswith("dino"):
        return lambda student: ss.dino(student, f32("teacher"), f32("center"), **call)[0].mean()
    if name.startswith("swav"):
        queue = f32("queue") if "queue" in entry else None
        return lambda scores: ss.swav(scores, queue=queue, **call).mean()
    if name.startswith("koleo"):
        return lambda x: ss.koleo(x, **call).mean()
    if name == "negative_cosine":
        return lambda predictions, targets: ss.negative_cosine(predictions, targets,
                                                               **call).mean()
    if name == "mixed_barlow_twins":
        perm = jnp.asarray(entry["permutation"])
        return lambda z0, z1, z_mixed: ss.mixed_barlow_twins(z0, z1, z_mixed, entry["ratio"],
                                                             perm, **call)
    fn = ss.barlow_twins if name.startswith("barlow") else ss.vicreg
    return lambda z0, z1: fn(z0, z1, **call)


def test_golden_file_covers_the_references():
    assert {"barlow_twins_lightly", "barlow_twins_official", "mixed_barlow_twins", "vicreg",
            "vicreg_official", "w_mse", "w_mse_official_no_norm", "negative_cosine", "dino",
            "swav", "swav_queue", "koleo", "koleo_duplicate"} <= set(GOLDEN_NAMES)
    for name in GOLDEN_NAMES:
        assert "@" in GOLDEN[name]["source"], name


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_matches_reference_implementation(name):
    entry = GOLDEN[name]
    loss = _golden_loss(name)
    names = list(entry["grad"])
    inputs = {k: jnp.float32(v) for k, v in entry["inputs"].items()}
    value, grads = jax.jit(jax.value_and_grad(lambda args: loss(**args)))(inputs)
    np.testing.assert_allclose(value, entry["loss"], **TOL)
    for key in names:
        np.testing.assert_allclose(grads[key], np.asarray(entry["grad"][key]), **TOL)


def test_w_mse_golden_permutations_are_those_of_the_key():
    """The golden W-MSE entries replay the permutations that ``w_mse`` draws from its key."""
    for name in ("w_mse", "w_mse_official_no_norm"):
        entry = GOLDEN[name]
        keys = jax.random.split(jax.random.key(entry["key"]), entry["call"]["w_iter"])
        drawn = [jax.random.permutation(k, 16).tolist() for k in keys]
        assert drawn == entry["permutations"]


@pytest.mark.parametrize("name", ["dino", "dino_more_teacher_views"])
def test_dino_center_update_matches_lightly(name):
    entry = GOLDEN[name]
    _, center = ss.dino(jnp.float32(entry["inputs"]["student"]), jnp.float32(entry["teacher"]),
                        jnp.float32(entry["center"]), **entry["call"])
    np.testing.assert_allclose(center, entry["new_center"], **TOL)


def test_sinkhorn_matches_lightly():
    entry = GOLDEN["sinkhorn_knopp"]
    codes = ss.sinkhorn_knopp(jnp.float32(entry["inputs"]["scores"]), **entry["call"])
    np.testing.assert_allclose(codes, np.asarray(entry["codes"]), **TOL)


def test_negative_cosine_stops_the_target_gradient_unlike_lightly():
    entry = GOLDEN["negative_cosine"]
    p, z = (jnp.float32(entry["inputs"][k]) for k in ("predictions", "targets"))
    grad_p, grad_z = jax.grad(lambda p, z: ss.negative_cosine(p, z).mean(), (0, 1))(p, z)
    np.testing.assert_allclose(grad_p, np.asarray(entry["grad"]["predictions"]), **TOL)
    assert not np.any(grad_z)


# -- Independent NumPy references on random inputs --------------------------------------------

def _pair(seed, n=7, d=4):
    rng = _rng(seed)
    return rng.normal(1.0, 2.0, (n, d)), rng.normal(0.0, 0.7, (n, d))


@pytest.mark.parametrize("seed", [1, 2])
def test_barlow_twins_and_vicreg_match_numpy(seed):
    z0, z1 = _pair(seed)
    args = jnp.float32(z0), jnp.float32(z1)
    np.testing.assert_allclose(ss.barlow_twins(*args, lambda_=0.3),
                               np_barlow_twins(z0, z1, 0.3), **TOL)
    np.testing.assert_allclose(ss.barlow_twins(*args, eps=0.0), np_barlow_twins(z0, z1, eps=0),
                               **TOL)
    np.testing.assert_allclose(ss.vicreg(*args, sim_coeff=2.0, std_coeff=3.0, cov_coeff=4.0),
                               np_vicreg(z0, z1, 2.0, 3.0, 4.0), **TOL)


@pytest.mark.parametrize("seed", [1, 2])
def test_mixed_barlow_twins_matches_numpy(seed):
    z0, z1 = _pair(seed)
    zm = _rng(seed + 10).normal(size=z0.shape)
    perm = _rng(seed).permutation(len(z0))
    got = ss.mixed_barlow_twins(jnp.float32(z0), jnp.float32(z1), jnp.float32(zm), 0.6, perm,
                                lambda_=0.1, mixed_lambda=2.0)
    np.testing.assert_allclose(got, np_mixed_barlow_twins(z0, z1, zm, 0.6, perm, 0.1, 2.0),
                               **TOL)


@pytest.mark.parametrize("name, fn, np_fn", [
    ("barlow_twins", lambda a, b: ss.barlow_twins(a, b, lambda_=0.2),
     lambda a, b: np_barlow_twins(a, b, 0.2)),
    ("vicreg", ss.vicreg, np_vicreg),
    ("mixed_barlow_twins",
     lambda a, b: ss.mixed_barlow_twins(a, b, a[::-1] * 0.5 + b, 0.3, np.arange(7)[::-1]),
     lambda a, b: np_mixed_barlow_twins(a, b, a[::-1] * 0.5 + b, 0.3, np.arange(7)[::-1])),
])
def test_gradient_matches_finite_differences(name, fn, np_fn):
    z0, z1 = _pair(3)
    for argnum in (0, 1):
        def np_loss(x, argnum=argnum):
            return np_fn(x, z1) if argnum == 0 else np_fn(z0, x)
        expected = central_difference(np_loss, (z0, z1)[argnum])
        got = jax.grad(fn, argnum)(jnp.float32(z0), jnp.float32(z1))
        np.testing.assert_allclose(got, expected, rtol=1e-4,
                                   atol=1e-5 * max(1, abs(expected).max()))


@pytest.mark.parametrize("normalize, eps", [(True, 0.0), (False, 0.2)])
def test_w_mse_matches_numpy(normalize, eps):
    views = _rng(4).normal(size=(3, 12, 3))
    key = jax.random.key(7)
    perms = [np.asarray(jax.random.permutation(k, 12)) for k in jax.random.split(key, 2)]
    loss = jax.jit(lambda v: ss.w_mse(v, key, w_size=6, w_iter=2, eps=eps, normalize=normalize))
    got = loss(jnp.float32(views))
    np.testing.assert_allclose(got, np_w_mse(views, perms, 6, eps, normalize), **TOL)
    assert loss(list(jnp.float32(views))) == got


def test_whitened_sub_batches_have_identity_covariance():
    x = _rng(5).normal(2.0, 3.0, (2, 16, 4)) @ _rng(6).normal(size=(4, 4))
    white = np.asarray(ss.whiten(jnp.float32(x)), np.float64)
    for sub in white:
        np.testing.assert_allclose(sub.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(np.cov(sub, rowvar=False), np.eye(4), atol=1e-4)
    np.testing.assert_allclose(white[0], np_whiten(x[0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_student, num_teacher", [(4, 2), (2, 2), (1, 3)])
def test_dino_matches_numpy(num_student, num_teacher):
    rng = _rng(num_student)
    student, teacher = rng.normal(size=(num_student, 5, 6)), rng.normal(size=(num_teacher, 5, 6))
    center = rng.normal(size=6)
    loss, new_center = ss.dino(jnp.float32(student), jnp.float32(teacher), jnp.float32(center),
                               student_temperature=0.3, center_momentum=0.7)
    want_loss, want_center = np_dino(student, teacher, center, ts=0.3, momentum=0.7)
    assert loss.shape == (5,)
    np.testing.assert_allclose(loss, want_loss, **TOL)
    np.testing.assert_allclose(new_center, want_center, **TOL)


@pytest.mark.parametrize("assign", [(0, 1), (2,), (0, 1, 3)])
def test_swav_matches_numpy(assign):
    scores = np.tanh(_rng(8).normal(size=(4, 6, 5)))
    got = jax.jit(lambda s: ss.swav(s, crops_for_assign=assign, temperature=0.2,
                                    sinkhorn_iterations=4, sinkhorn_epsilon=0.1))(
        jnp.float32(scores))
    want = np_swav(scores, assign, 0.2, epsilon=0.1, iterations=4)
    np.testing.assert_allclose(got, want, **TOL)


def test_koleo_matches_numpy():
    x = _rng(9).normal(size=(9, 3))
    np.testing.assert_allclose(ss.koleo(jnp.float32(x)), np_koleo(x), **TOL)


def test_negative_cosine_matches_numpy():
    p, z = _pair(10)
    want = -np.sum(p * z, 1) / np.linalg.norm(p, axis=1) / np.linalg.norm(z, axis=1)
    np.testing.assert_allclose(ss.negative_cosine(jnp.float32(p), jnp.float32(z)), want, **TOL)


# -- Invariances and limiting cases -----------------------------------------------------------

def test_barlow_twins_is_affine_invariant_per_feature():
    """lightly's test: ``loss(x, x) == loss(x, 2x + 4)``; also per-feature scales (eps=0)."""
    x = jnp.float32(_rng(11).normal(size=(8, 5)))
    np.testing.assert_allclose(ss.barlow_twins(x, x), ss.barlow_twins(x, 2 * x + 4), **TOL)
    scale = jnp.float32([0.5, 2.0, 3.0, 1.0, 7.0])
    np.testing.assert_allclose(ss.barlow_twins(x, x, eps=0.0),
                               ss.barlow_twins(x, x * scale - 1, eps=0.0), **TOL)
    np.testing.assert_allclose(ss.barlow_twins(x, x, eps=0.0, lambda_=0.0), 0.0, atol=1e-5)


def test_batch_losses_are_invariant_to_permuting_the_batch():
    z0, z1 = (jnp.float32(z) for z in _pair(12))
    perm = _rng(12).permutation(len(z0))
    for fn in (ss.barlow_twins, ss.vicreg):
        np.testing.assert_allclose(fn(z0, z1), fn(z0[perm], z1[perm]), **TOL)


def test_vicreg_is_symmetric():
    z0, z1 = (jnp.float32(z) for z in _pair(13))
    np.testing.assert_allclose(ss.vicreg(z0, z1), ss.vicreg(z1, z0), **TOL)


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_mixed_regulariser_vanishes_on_a_pure_view(ratio):
    """ratio 1 with z_mixed = z0, or ratio 0 with z_mixed = z1[perm]: the mix is exact."""
    z0, z1 = (jnp.float32(z) for z in _pair(14))
    perm = _rng(14).permutation(len(z0))
    mixed = z0 if ratio == 1.0 else z1[perm]
    got = ss.mixed_barlow_twins(z0, z1, mixed, ratio, perm)
    np.testing.assert_allclose(got, ss.mixed_barlow_twins(z0, z1, mixed, ratio, perm,
                                                          mixed_lambda=0.0), **TOL)
    assert ss.mixed_barlow_twins(z0, z1, z1, ratio, perm) > got


def test_mixup_views_mixes_with_the_returned_ratio_and_permutation():
    x0, x1 = (jnp.float32(x) for x in _pair(15))
    mixed, ratio, perm = jax.jit(ss.mixup_views)(jax.random.key(3), x0, x1, alpha=2.0)
    assert 0 <= ratio <= 1 and sorted(perm.tolist()) == list(range(len(x0)))
    np.testing.assert_allclose(mixed, ratio * x0 + (1 - ratio) * x1[perm], **TOL)


def test_w_mse_is_invariant_to_translating_each_view():
    views = jnp.float32(_rng(16).normal(size=(2, 8, 2)))
    key = jax.random.key(0)
    shifted = views + jnp.float32([[[3.0, -1.0]], [[-5.0, 2.0]]])
    loss = jax.jit(lambda v: ss.w_mse(v, key, w_size=4))
    np.testing.assert_allclose(loss(views), loss(shifted), rtol=1e-4, atol=1e-5)


def test_negative_cosine_limits():
    p = jnp.float32(_rng(17).normal(size=(4, 3)))
    np.testing.assert_allclose(ss.negative_cosine(p, 3 * p), -1.0, **TOL)
    np.testing.assert_allclose(ss.negative_cosine(p, -p), 1.0, **TOL)
    grad_lightly = jax.grad(lambda z: ss.negative_cosine(p, z, stop_gradient=False).sum())(-p)
    assert np.all(np.isfinite(grad_lightly))


def test_dino_ignores_gradients_into_teacher_and_center():
    rng = _rng(18)
    student, teacher = jnp.float32(rng.normal(size=(3, 4, 5))), jnp.float32(
        rng.normal(size=(2, 4, 5)))
    grads = jax.grad(lambda t, c: ss.dino(student, t, c)[0].sum(), (0, 1))(teacher,
                                                                          jnp.zeros(5))
    assert not any(np.any(g) for g in grads)


def test_sinkhorn_codes_are_an_equipartition():
    scores = jnp.float32(np.tanh(_rng(19).normal(size=(12, 4))))
    codes = ss.sinkhorn_knopp(scores, iterations=50)
    np.testing.assert_allclose(codes.sum(1), 1.0, **TOL)  # each example: a distribution
    np.testing.assert_allclose(codes.sum(0), 12 / 4, rtol=1e-3)  # prototypes used equally
    assert not np.any(jax.grad(lambda s: ss.sinkhorn_knopp(s)[:, 0].sum())(scores))


def test_swav_codes_are_detached_and_queue_changes_them():
    scores = jnp.float32(np.tanh(_rng(20).normal(size=(2, 5, 4))))
    queue = jnp.float32(np.tanh(_rng(21).normal(size=(2, 9, 4))))
    assert not np.allclose(ss.swav(scores), ss.swav(scores, queue=queue))
    np_fn = lambda s: np_swav(s, (0, 1), 0.1).sum()  # noqa: E731
    # The gradient with the codes held fixed is that of the cross-entropy alone.
    fixed = np.stack([np_sinkhorn(np.asarray(scores[a], np.float64)) for a in (0, 1)])

    def ce_with_fixed_codes(s):
        return sum(-np.sum(fixed[1 - v] * np.log(np_softmax(s[v] / 0.1))) for v in (0, 1)) / 2
    expected = central_difference(ce_with_fixed_codes, np.asarray(scores, np.float64))
    got = jax.jit(jax.grad(lambda s: ss.swav(s).sum()))(scores)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, central_difference(np_fn, np.asarray(scores, np.float64)),
                           atol=1e-3)


def test_koleo_is_permutation_equivariant_and_finite_on_duplicates():
    x = jnp.float32(_rng(22).normal(size=(6, 3)))
    perm = _rng(22).permutation(6)
    np.testing.assert_allclose(ss.koleo(x)[perm], ss.koleo(x[perm]), **TOL)
    dup = x.at[2].set(x[4]).at[5].set(0.0)
    value, grad = jax.value_and_grad(lambda x: ss.koleo(x).sum())(dup)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


# -- jit, vmap over hyperparameters, float64 gradients ----------------------------------------

def _calls():
    rng = _rng(23)
    z0, z1 = (jnp.float32(z) for z in _pair(23))
    views = jnp.float32(rng.normal(size=(2, 8, 3)))
    scores = jnp.float32(np.tanh(rng.normal(size=(3, 7, 4))))
    perm = jnp.asarray(rng.permutation(7))
    key = jax.random.key(1)
    return {
        "barlow_twins": (lambda h: ss.barlow_twins(z0, z1, lambda_=h), 0.1),
        "mixed_barlow_twins": (lambda h: ss.mixed_barlow_twins(z0, z1, z0 + z1, h, perm), 0.4),
        "vicreg": (lambda h: ss.vicreg(z0, z1, std_coeff=h), 5.0),
        "w_mse": (lambda h: ss.w_mse(views, key, w_size=8, eps=h), 0.1),
        "negative_cosine": (lambda h: ss.negative_cosine(z0 * 1e-3, z1, eps=h), 2e-3),
        "dino": (lambda h: ss.dino(scores, scores[:2], jnp.ones(4),
                                   teacher_temperature=h), 0.05),
        "swav": (lambda h: ss.swav(scores, sinkhorn_epsilon=h), 0.1),
        "sinkhorn_knopp": (lambda h: ss.sinkhorn_knopp(scores[0], epsilon=h), 0.1),
        "koleo": (lambda h: ss.koleo(z0, eps=h), 1e-3),
    }


@pytest.mark.parametrize("name", sorted(_calls()))
def test_jit_equals_eager_and_vmap_over_a_hyperparameter(name):
    fn, value = _calls()[name]
    jitted = jax.jit(fn)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), jitted(value), fn(value))
    grid = jnp.float32([value, 2 * value, 0.5 * value])
    swept = jax.vmap(fn)(grid)
    for i, h in enumerate(grid):
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, **TOL), swept,
                     jitted(h))
    assert not np.allclose(jax.tree.leaves(swept)[0][0], jax.tree.leaves(swept)[0][1])


def test_float64_gradients():
    """Barlow Twins, DINO's student and W-MSE (the others are checked against finite
    differences in float32 above; SwaV's detached codes in their own test)."""
    with jax.enable_x64(True):
        rng = _rng(24)
        z0, z1 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
        views = rng.normal(size=(2, 6, 2))
        assert ss.barlow_twins(z0, z1).dtype == jnp.float64
        for fn in (lambda a: ss.barlow_twins(a, z1),
                   lambda a: ss.dino(jnp.stack([a, z1]), z1[None], jnp.zeros(3))[0].sum()):
            check_grads(jax.jit(fn), (z0,), order=1, modes=("rev",), atol=1e-5, rtol=1e-4)
        check_grads(jax.jit(lambda v: ss.w_mse(v, jax.random.key(0), w_size=6)), (views,), order=1,
                    modes=("rev",), atol=1e-5, rtol=1e-4)


# -- Extreme and low-precision inputs ---------------------------------------------------------

def _losses():
    perm = np.arange(8)[::-1].copy()
    key = jax.random.key(2)
    return {
        "barlow_twins": lambda a, b: ss.barlow_twins(a, b),
        "mixed_barlow_twins": lambda a, b: ss.mixed_barlow_twins(a, b, a - b, 0.5, perm),
        "vicreg": lambda a, b: ss.vicreg(a, b),
        "w_mse": lambda a, b: ss.w_mse(jnp.stack([a, b]), key, w_size=8),
        "negative_cosine": lambda a, b: ss.negative_cosine(a, b).sum(),
        "dino": lambda a, b: ss.dino(jnp.stack([a, b]), b[None], jnp.zeros(3))[0].sum(),
        "swav": lambda a, b: ss.swav(jnp.stack([a, b, a + b])).sum(),
        "koleo": lambda a, b: ss.koleo(a).sum(),
    }


@pytest.mark.parametrize("name", sorted(_losses()))
def test_finite_values_and_gradients(name):
    """Magnitude 1e4 of either sign (with a constant feature, except for W-MSE, whose
    whitening of a rank-deficient batch needs eps > 0: below), |cos| = 1, bfloat16."""
    rng = _rng(25)
    a, b = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
    cases = {"cos_one": (a, 2 * a), "bfloat16": (a, b)}
    for sign in (1.0, -1.0):
        big = sign * 1e4 * a
        if name != "w_mse":
            big[:, 0] = sign * 1e4
        cases[f"{sign:+}e4"] = (big, sign * 1e4 * b)
    value_and_grad = jax.jit(jax.value_and_grad(_losses()[name], (0, 1)))
    for case, (x, y) in cases.items():
        dtype = jnp.bfloat16 if case == "bfloat16" else jnp.float32
        value, grads = value_and_grad(jnp.asarray(x, dtype), jnp.asarray(y, dtype))
        assert value.dtype == jnp.float32, case
        assert np.isfinite(value), (case, value)
        assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads), case


def test_w_mse_with_shrinkage_is_finite_on_a_constant_feature():
    views = _rng(26).normal(size=(2, 8, 3)) * 1e4
    views[:, :, 0] = 1e4
    loss = jax.jit(jax.value_and_grad(
        lambda v, eps: ss.w_mse(v, jax.random.key(0), w_size=8, eps=eps)))
    value, grad = loss(jnp.float32(views), 0.1)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert np.isnan(loss(jnp.float32(views), 0.0)[0])  # as the reference


# -- Bad input ---------------------------------------------------------------------------------

def test_errors_name_the_argument():
    z = jnp.ones((6, 4))
    with pytest.raises(ValueError, match="`z1`"):
        ss.barlow_twins(z, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="`z0`.*at least 2"):
        ss.vicreg(z[:1], z[:1])
    with pytest.raises(ValueError, match="`z0`"):
        ss.barlow_twins(jnp.ones(4), jnp.ones(4))
    with pytest.raises(TypeError, match="`z0`"):
        ss.vicreg(jnp.ones((6, 4), int), z)
    with pytest.raises(ValueError, match="`lambda_`"):
        ss.barlow_twins(z, z, lambda_=-1.0)
    with pytest.raises(ValueError, match="`permutation`"):
        ss.mixed_barlow_twins(z, z, z, 0.5, jnp.arange(5))
    with pytest.raises(ValueError, match="`ratio`"):
        ss.mixed_barlow_twins(z, z, z, 1.5, jnp.arange(6))
    views = jnp.ones((2, 16, 4))
    with pytest.raises(ValueError, match="`w_size`.*twice"):
        ss.w_mse(views, jax.random.key(0), w_size=4)
    with pytest.raises(ValueError, match="`w_size`.*divide"):
        ss.w_mse(views, jax.random.key(0), w_size=12)
    with pytest.raises(ValueError, match="`views`.*2 views"):
        ss.w_mse(views[:1], jax.random.key(0), w_size=8)
    with pytest.raises(TypeError, match="`w_iter`"):
        ss.w_mse(views, jax.random.key(0), w_size=8, w_iter=1.5)
    with pytest.raises(ValueError, match="`targets`"):
        ss.negative_cosine(z, z[:3])
    s = jnp.ones((2, 6, 5))
    with pytest.raises(ValueError, match="`teacher`"):
        ss.dino(s, jnp.ones((2, 6, 4)), jnp.zeros(5))
    with pytest.raises(ValueError, match="`center`"):
        ss.dino(s, s, jnp.zeros(4))
    with pytest.raises(ValueError, match="`student` and `teacher`"):
        ss.dino(s[:1], s[:1], jnp.zeros(5))
    with pytest.raises(ValueError, match="`teacher_temperature`"):
        ss.dino(s, s, jnp.zeros(5), teacher_temperature=0.0)
    with pytest.raises(ValueError, match="`crops_for_assign`"):
        ss.swav(s, crops_for_assign=(0, 2))
    with pytest.raises(ValueError, match="`queue`"):
        ss.swav(s, queue=jnp.ones((1, 3, 5)))
    with pytest.raises(ValueError, match="`temperature`"):
        ss.swav(s, temperature=-0.1)
    with pytest.raises(ValueError, match="`iterations`"):
        ss.sinkhorn_knopp(s[0], iterations=-1)
    with pytest.raises(ValueError, match="`x`.*at least 2"):
        ss.koleo(z[:1])
