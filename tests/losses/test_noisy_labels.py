"""Tests for jaxreg.losses.noisy_labels.

Three independent oracles: a float64 NumPy re-implementation of each formula, central finite
differences of it for gradients, and golden numbers produced by the official PyTorch code
(``golden/noisy_labels.json``; re-typed reference classes, see each entry's ``source``).
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric import central_difference

from jaxreg.losses import noisy_labels as nl

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "noisy_labels.json").read_text())
A = -math.log(1e-4)


def assert_close(actual, expected, rtol=1e-5):
    """float32 against a float64 oracle: relative 1e-5, absolute 1e-6 of the oracle's scale."""
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * 0.1 * scale)


# ---- NumPy float64 reference (the formulas as written, probabilities first) ----------------

def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_pick(x, y):
    return np.take_along_axis(x, y[..., None], -1)[..., 0]


def np_ce(z, y):
    return -np_pick(np_log_softmax(z), y)


def np_gce(z, y, q=0.7):
    return (1 - np.maximum(np_pick(np_softmax(z), y), 1e-7) ** q) / q


def np_rce(z, y):
    p = np.maximum(np_softmax(z), 1e-7)
    onehot = np.maximum(np.eye(z.shape[-1])[y], 1e-4)
    return -np.sum(p * np.log(onehot), -1)


def np_sce(z, y, alpha=0.1, beta=1.0):
    return alpha * np_ce(z, y) + beta * np_rce(z, y)


def np_mae(z, y):
    return 1 - np_pick(np_softmax(z), y)


def np_nce(z, y):
    lp = np_log_softmax(z)
    return np_pick(lp, y) / lp.sum(-1)


def np_nfl(z, y, gamma=0.5, weights_from=None):
    """NFL; the modulating weights are computed at ``weights_from`` (default: ``z``)."""
    lp = np_log_softmax(z)
    w = (1 - np_softmax(z if weights_from is None else weights_from)) ** gamma
    return np_pick(w * lp, y) / np.sum(w * lp, -1)


def np_ngce(z, y, q=0.7):
    p = np.maximum(np_softmax(z), 1e-7)
    return (1 - np_pick(p, y) ** q) / (z.shape[-1] - np.sum(p ** q, -1))


NP_ACTIVE = {"ce": lambda z, y, gamma, q: np_ce(z, y),
             "gce": lambda z, y, gamma, q: np_gce(z, y, q),
             "nce": lambda z, y, gamma, q: np_nce(z, y),
             "nfl": lambda z, y, gamma, q: np_nfl(z, y, gamma),
             "ngce": lambda z, y, gamma, q: np_ngce(z, y, q)}
NP_PASSIVE = {"mae": np_mae, "rce": np_rce}


def np_active_passive(z, y, active="nce", passive="rce", alpha=1.0, beta=1.0, gamma=0.5, q=0.7):
    return alpha * NP_ACTIVE[active](z, y, gamma, q) + beta * NP_PASSIVE[passive](z, y)


def np_elr_targets(z, targets, beta):
    p = np.clip(np_softmax(z), 1e-4, 1 - 1e-4)
    return beta * targets + (1 - beta) * p / p.sum(-1, keepdims=True)


def np_elr(z, y, targets, beta=0.7, lam=3.0, frozen_targets=None):
    """ELR loss; the updated target is taken as given when ``frozen_targets`` is passed."""
    p = np.clip(np_softmax(z), 1e-4, 1 - 1e-4)
    t = np_elr_targets(z, targets, beta) if frozen_targets is None else frozen_targets
    return np_ce(z, y) + lam * np.log(1 - np.sum(t * p, -1))


# (jaxreg function, NumPy reference, hyperparameters to use in place of the defaults)
LOSSES = [
    (nl.generalized_cross_entropy, np_gce, {"q": 0.4}),
    (nl.reverse_cross_entropy, np_rce, {}),
    (nl.symmetric_cross_entropy, np_sce, {"alpha": 6.0, "beta": 0.1}),
    (nl.mae, np_mae, {}),
    (nl.normalized_cross_entropy, np_nce, {}),
    (nl.normalized_focal, np_nfl, {"gamma": 2.0}),
    (nl.normalized_generalized_cross_entropy, np_ngce, {"q": 0.1}),
    (nl.active_passive, np_active_passive, {"alpha": 10.0, "beta": 0.1}),
]
IDS = [fn.__name__ for fn, _, _ in LOSSES]
NUMERIC_HPARAMS = {nl.generalized_cross_entropy: {"q": [0.1, 0.7, 1.0]},
                   nl.symmetric_cross_entropy: {"alpha": [0.1, 6.0], "beta": [1.0, 0.1]},
                   nl.normalized_focal: {"gamma": [0.0, 0.5, 2.0]},
                   nl.normalized_generalized_cross_entropy: {"q": [0.1, 0.7, 1.0]},
                   nl.active_passive: {"alpha": [1.0, 10.0], "beta": [1.0, 0.1],
                                       "gamma": [0.5, 2.0], "q": [0.7, 0.1]}}


def random_batch(seed, shape=(16,), num_classes=7, scale=3.0):
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal(shape + (num_classes,))).astype(np.float32)
    return z, rng.integers(0, num_classes, shape)


# ---- values against NumPy ---------------------------------------------------------------

@pytest.mark.parametrize("fn,ref,hparams", LOSSES, ids=IDS)
@pytest.mark.parametrize("seed,shape,num_classes", [(0, (16,), 7), (1, (3, 5), 10), (2, (4,), 100)])
def test_matches_numpy(fn, ref, hparams, seed, shape, num_classes):
    z, y = random_batch(seed, shape, num_classes)
    for kwargs in ({}, hparams):
        out = fn(z, y, **kwargs)
        assert out.shape == y.shape and out.dtype == jnp.float32
        assert_close(out, ref(z.astype(np.float64), y, **kwargs))


@pytest.mark.parametrize("active", ["ce", "gce", "nce", "nfl", "ngce"])
@pytest.mark.parametrize("passive", ["mae", "rce"])
def test_active_passive_combinations_match_numpy(active, passive):
    z, y = random_batch(3)
    kwargs = dict(active=active, passive=passive, alpha=2.0, beta=0.5, gamma=1.5, q=0.3)
    assert_close(nl.active_passive(z, y, **kwargs),
                 np_active_passive(z.astype(np.float64), y, **kwargs))


# ---- gradients: finite differences of the NumPy reference --------------------------------

@pytest.mark.parametrize("fn,ref,hparams", [c for c in LOSSES if c[0] is not nl.normalized_focal],
                         ids=[i for i in IDS if i != "normalized_focal"])
def test_gradient_matches_finite_differences(fn, ref, hparams):
    z, y = random_batch(4, (5,), 6, scale=2.0)
    grad = jax.grad(lambda x: jnp.sum(fn(x, y, **hparams)))(z)
    expected = central_difference(lambda x: np.sum(ref(x, y, **hparams)), z.astype(np.float64))
    assert_close(grad, expected)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_normalized_focal_gradient_detaches_every_weight(gamma):
    z, y = random_batch(5, (5,), 6, scale=2.0)
    z64 = z.astype(np.float64)
    grad = jax.grad(lambda x: jnp.sum(nl.normalized_focal(x, y, gamma=gamma)))(z)
    detached = central_difference(lambda x: np.sum(np_nfl(x, y, gamma, weights_from=z64)), z64)
    assert_close(grad, detached)
    # The detachment matters: the gradient through the weights is a different one.
    full = central_difference(lambda x: np.sum(np_nfl(x, y, gamma)), z64)
    assert not np.allclose(grad, full, rtol=1e-3, atol=1e-4)


# ---- golden numbers from the official PyTorch code --------------------------------------

def _case_id(case):
    return f"{case['function']}-{case['reference']}-{case['input']}"


@pytest.mark.parametrize("case", GOLDEN["apl"], ids=_case_id)
def test_matches_official_active_passive_losses_code(case):
    inputs = GOLDEN["inputs"][case["input"]]
    z = np.asarray(inputs["logits"], np.float32)
    y = np.asarray(inputs["labels"], np.int32)
    fn = getattr(nl, case["function"])
    out = fn(z, y, **case["kwargs"])
    assert_close(out, case["loss_per_example"])
    assert_close(jnp.mean(out), case["loss_mean"])
    assert_close(jax.grad(lambda x: jnp.mean(fn(x, y, **case["kwargs"])))(z), case["grad_of_mean"])


@pytest.mark.parametrize("case", GOLDEN["elr"], ids=_case_id)
def test_matches_official_elr_code(case):
    # Two consecutive steps; the buffer rows the second step reads were written by the first.
    for step in case["steps"]:
        z = np.asarray(step["logits"], np.float32)
        y = np.asarray(step["labels"], np.int32)
        targets = np.asarray(step["targets"], np.float32)
        loss, new_targets = nl.elr(z, y, targets, **case["kwargs"])
        assert_close(loss, step["loss_per_example"])
        assert_close(jnp.mean(loss), step["loss_mean"])
        assert_close(new_targets, step["new_targets"])
        grad = jax.grad(lambda x: jnp.mean(nl.elr(x, y, targets, **case["kwargs"])[0]))(z)
        assert_close(grad, step["grad_of_mean"])
    assert any(np.any(np.asarray(s["targets"]) != 0) for s in case["steps"])


# ---- properties ---------------------------------------------------------------------------

def _extreme_batch():
    inputs = GOLDEN["inputs"]["extreme_k5"]
    return np.asarray(inputs["logits"], np.float32), np.asarray(inputs["labels"], np.int32)


@pytest.mark.parametrize("fn", [nl.normalized_cross_entropy, nl.normalized_focal,
                                nl.normalized_generalized_cross_entropy])
@pytest.mark.parametrize("batch", ["random", "extreme"])
def test_normalized_losses_lie_in_unit_interval_and_sum_to_one_over_labels(fn, batch):
    z, _ = random_batch(6, (12,), 5, scale=6.0) if batch == "random" else _extreme_batch()
    per_label = np.stack([fn(z, np.full(len(z), k)) for k in range(z.shape[-1])], -1)
    assert np.all(per_label >= 0) and np.all(per_label <= 1)
    assert_close(per_label.sum(-1), np.ones(len(z)))


def test_active_passive_is_the_weighted_sum_of_its_parts():
    z, y = random_batch(7)
    parts = {"nce": nl.normalized_cross_entropy(z, y), "nfl": nl.normalized_focal(z, y, gamma=2.0),
             "ngce": nl.normalized_generalized_cross_entropy(z, y, q=0.2),
             "gce": nl.generalized_cross_entropy(z, y, q=0.2), "mae": nl.mae(z, y),
             "rce": nl.reverse_cross_entropy(z, y)}
    for active in ("nce", "nfl", "ngce", "gce"):
        for passive in ("mae", "rce"):
            out = nl.active_passive(z, y, active=active, passive=passive, alpha=3.0, beta=0.25,
                                    gamma=2.0, q=0.2)
            np.testing.assert_allclose(out, 3.0 * parts[active] + 0.25 * parts[passive], rtol=1e-6)
    np.testing.assert_allclose(nl.active_passive(z, y, active="ce", passive="rce", alpha=0.1),
                               nl.symmetric_cross_entropy(z, y), rtol=1e-6)


def test_active_passive_defaults_are_nce_plus_rce():
    z, y = random_batch(8)
    np.testing.assert_allclose(
        nl.active_passive(z, y),
        nl.normalized_cross_entropy(z, y) + nl.reverse_cross_entropy(z, y), rtol=1e-6)


def test_generalized_cross_entropy_limits():
    z, y = random_batch(9, scale=1.0)
    ce = np_ce(z.astype(np.float64), y)
    # GCE(q) = CE - q CE^2 / 2 + O(q^2): at q = 1e-4 it is CE to within about 5e-5 CE^2.
    np.testing.assert_allclose(nl.generalized_cross_entropy(z, y, q=1e-4), ce,
                               rtol=1e-4 * np.max(ce), atol=0)
    assert np.all(np.asarray(nl.generalized_cross_entropy(z, y, q=1e-4)) < ce)
    assert_close(nl.generalized_cross_entropy(z, y, q=1.0), nl.mae(z, y))


def test_reverse_cross_entropy_is_scaled_mae_away_from_the_floor():
    z, y = random_batch(10, scale=1.0)
    assert np.min(np_softmax(z.astype(np.float64))) > 1e-7
    assert_close(nl.reverse_cross_entropy(z, y), A * nl.mae(z, y))
    assert_close(A, 9.210340371976184)


def test_reverse_cross_entropy_floor_below_1e_7():
    z = np.array([[50.0, 0.0, 0.0]], np.float32)  # p_1 = p_2 = e^-50 < 1e-7
    assert_close(nl.reverse_cross_entropy(z, np.array([0])), [2 * 1e-7 * A])


def test_mae_is_half_the_true_absolute_error():
    z, y = random_batch(11)
    p = np_softmax(z.astype(np.float64))
    true_mae = np.abs(p - np.eye(z.shape[-1])[y]).sum(-1)
    assert_close(nl.mae(z, y), true_mae / 2)


def test_elr_without_regularizer_is_cross_entropy_and_targets_are_an_ema():
    z, y = random_batch(12)
    rng = np.random.default_rng(0)
    targets = np_softmax(rng.standard_normal(z.shape)).astype(np.float32)
    loss, new_targets = nl.elr(z, y, targets, beta=0.6, lam=0.0)
    assert_close(loss, np_ce(z.astype(np.float64), y))
    p = np.clip(np_softmax(z.astype(np.float64)), 1e-4, 1 - 1e-4)
    assert_close(new_targets, 0.6 * targets + 0.4 * p / p.sum(-1, keepdims=True))
    # From the zero buffer the first target is (1 - beta) times the normalised prediction.
    _, first = nl.elr(z, y, np.zeros_like(z), beta=0.7)
    assert_close(first, 0.3 * p / p.sum(-1, keepdims=True))


def test_elr_matches_numpy_values_and_frozen_target_gradient():
    z, y = random_batch(13, (6,), 5, scale=2.0)
    z64 = z.astype(np.float64)
    other_logits = np.random.default_rng(1).standard_normal(z.shape)
    targets = np_elr_targets(other_logits, np.zeros(z.shape), 0.7)
    loss, new_targets = nl.elr(z, y, targets.astype(np.float32), beta=0.9, lam=7.0)
    assert_close(loss, np_elr(z64, y, targets, beta=0.9, lam=7.0))
    assert_close(new_targets, np_elr_targets(z64, targets, 0.9))
    # No gradient flows through the target update: the gradient is that of the loss with the
    # updated target held fixed, not that of the loss with the target a function of the logits.
    grad = jax.grad(lambda x: jnp.sum(nl.elr(x, y, targets, beta=0.9, lam=7.0)[0]))(z)
    frozen = np_elr_targets(z64, targets, 0.9)
    expected = central_difference(lambda x: np.sum(np_elr(x, y, targets, 0.9, 7.0, frozen)), z64)
    assert_close(grad, expected)
    through = central_difference(lambda x: np.sum(np_elr(x, y, targets, 0.9, 7.0)), z64)
    assert not np.allclose(grad, through, rtol=1e-3, atol=1e-4)


def test_elr_returns_targets_without_gradient():
    z, y = random_batch(14)
    jac = jax.jacobian(lambda x: nl.elr(x, y, np.zeros_like(z))[1])(z)
    assert not np.any(jac)


# ---- traced hyperparameters, jit, extreme and low-precision inputs ------------------------

@pytest.mark.parametrize("fn", list(NUMERIC_HPARAMS), ids=lambda f: f.__name__)
def test_hyperparameters_can_be_traced_and_vmapped(fn):
    z, y = random_batch(15)
    grid = {k: jnp.asarray(v, jnp.float32) for k, v in NUMERIC_HPARAMS[fn].items()}
    swept = jax.jit(jax.vmap(lambda h: fn(z, y, **h)))(grid)
    for i in range(len(next(iter(grid.values())))):
        point = {k: float(v[i]) for k, v in grid.items()}
        np.testing.assert_allclose(swept[i], fn(z, y, **point), rtol=1e-6, atol=1e-7)


def test_elr_hyperparameters_can_be_traced_and_vmapped():
    z, y = random_batch(16)
    targets = np.full(z.shape, 0.1, np.float32)
    betas, lams = jnp.array([0.7, 0.9]), jnp.array([3.0, 7.0])
    sweep = jax.jit(jax.vmap(lambda b, l: nl.elr(z, y, targets, beta=b, lam=l)))
    losses, new_targets = sweep(betas, lams)
    for i in range(2):
        loss_i, targets_i = nl.elr(z, y, targets, beta=float(betas[i]), lam=float(lams[i]))
        np.testing.assert_allclose(losses[i], loss_i, rtol=1e-6)
        np.testing.assert_allclose(new_targets[i], targets_i, rtol=1e-6)


def _all_losses():
    yield from ((fn.__name__, fn) for fn, _, _ in LOSSES)
    for active in ("ce", "gce", "nfl", "ngce"):
        for passive in ("mae", "rce"):
            yield (f"{active}+{passive}",
                   lambda z, y, a=active, p=passive: nl.active_passive(z, y, active=a, passive=p))
    yield "elr", lambda z, y: nl.elr(z, y, jnp.full(z.shape, 0.2))[0]


@pytest.mark.parametrize("name,fn", list(_all_losses()), ids=[n for n, _ in _all_losses()])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_extreme_logits_give_finite_values_and_gradients(name, fn, dtype):
    z = jnp.array([[1e4, -1e4, 0.0, 5.0], [1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 1e4, 0.0],
                   [0.0, 0.0, 0.0, 0.0]], jnp.float32)
    if dtype == jnp.float16:
        z = jnp.clip(z, -6e4, 6e4)
    z = z.astype(dtype)
    y = jnp.array([0, 1, 3, 2])
    out = fn(z, y)
    grad = jax.grad(lambda x: jnp.sum(fn(x, y)))(z)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out)), out
    assert np.all(np.isfinite(np.asarray(grad, np.float32))), grad


def test_low_precision_input_is_computed_in_float32():
    z, y = random_batch(17, scale=2.0)
    z16 = jnp.asarray(z, jnp.bfloat16)
    for fn, ref, _ in LOSSES:
        assert_close(fn(z16, y), ref(np.asarray(z16, np.float64), y))


# ---- errors -----------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    z, y = random_batch(18)
    with pytest.raises(TypeError, match="`labels` must hold integer"):
        nl.normalized_cross_entropy(z, y.astype(np.float32))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        nl.mae(z, y[:-1])
    with pytest.raises(TypeError, match="`logits` must be a floating"):
        nl.generalized_cross_entropy(y[:, None].repeat(3, 1), y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        nl.reverse_cross_entropy(z[:, :1], np.zeros(len(z), np.int32))
    with pytest.raises(ValueError, match="`targets` must have the shape of `logits`"):
        nl.elr(z, y, np.zeros((len(z), z.shape[-1] + 1), np.float32))
    with pytest.raises(TypeError, match="`targets` must be a floating"):
        nl.elr(z, y, np.zeros(z.shape, np.int32))


def test_unknown_active_or_passive_lists_the_choices():
    z, y = random_batch(19)
    choices = r"\['ce', 'gce', 'nce', 'nfl', 'ngce'\]"
    with pytest.raises(ValueError, match=r"`active` must be one of " + choices):
        nl.active_passive(z, y, active="nrce")
    with pytest.raises(ValueError, match=r"`passive` must be one of \['mae', 'rce'\], got 'nmae'"):
        nl.active_passive(z, y, passive="nmae")
