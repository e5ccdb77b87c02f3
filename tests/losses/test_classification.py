"""Tests for jaxreg.losses.classification.

Each loss is checked against an independent NumPy re-implementation written from its formula
(float64), for values and for gradients (central finite differences of the NumPy version);
against golden values and gradients of the reference implementations
(``golden/classification.json``, computed once with the official PyTorch code); and in its
limiting cases and invariances.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numeric import central_difference

from jaxreg.losses import classification as cl

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "classification.json").read_text())
B, K, D = 7, 5, 3
COUNTS = np.array([300.0, 80.0, 20.0, 6.0, 1.0])


# -- Independent NumPy references (float64) ---------------------------------------------------

def np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_pick(values, labels):
    return values[np.arange(len(labels)), labels]


def np_cross_entropy(z, y):
    return -np_pick(np_log_softmax(z), y)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_focal_parts(z, t, alpha, gamma):
    p = np_sigmoid(z)
    p_t = t * p + (1 - t) * (1 - p)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return alpha_t * (1 - p_t) ** gamma * bce, 1 - p_t


def np_poly1_cross_entropy(z, y, epsilon=1.0):
    return np_cross_entropy(z, y) + epsilon * (1 - np.exp(-np_cross_entropy(z, y)))


def np_poly1_focal(z, t, epsilon=1.0, gamma=2.0, alpha=0.25):
    focal, one_minus_pt = np_focal_parts(z, t, alpha, gamma)
    return (focal + epsilon * one_minus_pt ** (gamma + 1)).sum(-1)


def np_softmax_focal(z, y, gamma=2.0, weight_at=None):
    """``weight_at``: logits at which the (detached) weight is evaluated; default ``z``."""
    p_w = np.exp(-np_cross_entropy(z if weight_at is None else weight_at, y))
    return (1 - p_w) ** gamma * np_cross_entropy(z, y)


def np_sigmoid_focal(z, t, alpha=0.25, gamma=2.0):
    return np_focal_parts(z, t, alpha, gamma)[0].sum(-1)


def np_comp_sum(z, y, tau=1.5):
    s = np.exp(z - np_pick(z, y)[:, None]).sum(-1)
    return np.log(s) if tau == 1 else (s ** (1 - tau) - 1) / (1 - tau)


def np_squentropy(z, y, weight=1.0):
    off_label = np.ones_like(z, dtype=bool)
    off_label[np.arange(len(y)), y] = False
    return np_cross_entropy(z, y) + weight * (z ** 2 * off_label).sum(-1) / (z.shape[-1] - 1)


def np_z_loss(z, y, a=0.1, b=20.0):
    zn = (z - z.mean(-1, keepdims=True)) / z.std(-1, keepdims=True)
    return np.log1p(np.exp(a * (b - np_pick(zn, y)))) / a


def np_encouraging(z, y, log_end=0.75):
    p = np.exp(-np_cross_entropy(z, y))
    bonus = np.log(np.maximum(1 - p, 1e-5))
    if log_end != 1.0:
        tangent = (p - log_end) / (log_end - 1) + np.log(1 - log_end)
        bonus = np.where(p > log_end, tangent, bonus)
    return np_cross_entropy(z, y) + bonus


def np_harmonic(x, w, y, exponent=1.0, eps=1e-4):
    d2 = ((x[:, None, :] - w[None, :, :]) ** 2).sum(-1) + eps
    unnormalised = d2 ** -exponent
    return -np.log(np_pick(unnormalised, y) / unnormalised.sum(-1))


def np_stablemax(z, y):
    s = np.where(z >= 0, z + 1, 1 / (1 - np.minimum(z, 0)))
    return -np.log(np_pick(s, y) / s.sum(-1))


def np_ldam(z, y, counts, max_margin=0.5, scale=30.0):
    m = counts ** -0.25
    m = m * max_margin / m.max()
    adjusted = z.copy()
    adjusted[np.arange(len(y)), y] -= m[y]
    return np_cross_entropy(scale * adjusted, y)


def np_logit_adjusted(z, y, counts, tau=1.0):
    return np_cross_entropy(z + tau * np.log(counts / counts.sum()), y)


def np_asymmetric(z, t, gamma_pos=0.0, gamma_neg=4.0, clip=0.05, eps=1e-8, weight_at=None):
    def probs(logits):
        p = np_sigmoid(logits)
        return p, np.minimum(1 - p + clip, 1)
    p, p_neg = probs(z)
    pw, pw_neg = probs(z if weight_at is None else weight_at)
    p_t = t * pw + (1 - t) * pw_neg
    weight = (1 - p_t) ** (gamma_pos * t + gamma_neg * (1 - t))
    loglik = t * np.log(np.maximum(p, eps)) + (1 - t) * np.log(np.maximum(p_neg, eps))
    return -(loglik * weight).sum(-1)


def np_ldr(z, y, lam=1.0, margin=0.1, normalize_logits=True):
    f = np.log1p(np.exp(z)) if normalize_logits else z
    if normalize_logits:
        f = f / f.mean(-1, keepdims=True)
    margins = margin * np.ones_like(z)
    margins[np.arange(len(y)), y] = 0.0
    gaps = margins + f - np_pick(f, y)[:, None]
    return lam * np.log(np.exp(gaps / lam).mean(-1))


# -- Inputs ------------------------------------------------------------------------------------

def _rng(seed):
    return np.random.default_rng(seed)


def logits_labels(seed, scale=2.0):
    rng = _rng(seed)
    z = rng.normal(size=(B, K)) * scale
    y = rng.integers(0, K, size=B)
    return z.astype(np.float32).astype(np.float64), y


def logits_targets(seed, scale=2.0):
    rng = _rng(seed)
    z = rng.normal(size=(B, K)) * scale
    t = (rng.random((B, K)) < 0.4).astype(np.float64)
    return z.astype(np.float32).astype(np.float64), t


def features_centers_labels(seed):
    rng = _rng(seed)
    return (rng.normal(size=(B, D)).astype(np.float32).astype(np.float64),
            rng.normal(size=(K, D)).astype(np.float32).astype(np.float64),
            rng.integers(0, K, size=B))


# (name, jax fn, numpy fn, input kind, hyperparameters other than the defaults)
CASES = [
    ("poly1_cross_entropy", cl.poly1_cross_entropy, np_poly1_cross_entropy, "labels",
     {"epsilon": 2.0}),
    ("poly1_focal", cl.poly1_focal, np_poly1_focal, "targets", {}),
    ("poly1_focal_neg", cl.poly1_focal, np_poly1_focal, "targets",
     {"epsilon": -1.0, "gamma": 1.5, "alpha": 0.6}),
    ("softmax_focal", cl.softmax_focal, np_softmax_focal, "labels", {}),
    ("softmax_focal_half", cl.softmax_focal, np_softmax_focal, "labels", {"gamma": 0.5}),
    ("sigmoid_focal", cl.sigmoid_focal, np_sigmoid_focal, "targets", {}),
    ("sigmoid_focal_alpha", cl.sigmoid_focal, np_sigmoid_focal, "targets",
     {"alpha": 0.7, "gamma": 1.0}),
    ("comp_sum", cl.comp_sum, np_comp_sum, "labels", {}),
    ("comp_sum_0", cl.comp_sum, np_comp_sum, "labels", {"tau": 0.0}),
    ("comp_sum_0.5", cl.comp_sum, np_comp_sum, "labels", {"tau": 0.5}),
    ("comp_sum_3", cl.comp_sum, np_comp_sum, "labels", {"tau": 3.0}),
    ("squentropy", cl.squentropy, np_squentropy, "labels", {"weight": 0.3}),
    ("spherical_z_loss", cl.spherical_z_loss, np_z_loss, "labels", {}),
    ("spherical_z_loss_ab", cl.spherical_z_loss, np_z_loss, "labels", {"a": 2.0, "b": 1.0}),
    ("encouraging", cl.encouraging, np_encouraging, "labels", {}),
    ("encouraging_half", cl.encouraging, np_encouraging, "labels", {"log_end": 0.5}),
    ("encouraging_plain", cl.encouraging, np_encouraging, "labels", {"log_end": 1.0}),
    ("harmonic", cl.harmonic, np_harmonic, "centers", {}),
    ("harmonic_n3", cl.harmonic, np_harmonic, "centers", {"exponent": 3.0, "eps": 0.01}),
    ("stablemax_cross_entropy", cl.stablemax_cross_entropy, np_stablemax, "labels", {}),
    ("ldam", cl.ldam, np_ldam, "counts", {}),
    ("ldam_small", cl.ldam, np_ldam, "counts", {"max_margin": 0.3, "scale": 4.0}),
    ("logit_adjusted", cl.logit_adjusted, np_logit_adjusted, "counts", {}),
    ("logit_adjusted_tau", cl.logit_adjusted, np_logit_adjusted, "counts", {"tau": 1.7}),
    ("asymmetric", cl.asymmetric, np_asymmetric, "targets", {"stop_gradient_weight": False}),
    ("asymmetric_pos", cl.asymmetric, np_asymmetric, "targets",
     {"gamma_pos": 1.0, "gamma_neg": 2.0, "clip": 0.2, "stop_gradient_weight": False}),
    ("label_distributionally_robust", cl.label_distributionally_robust, np_ldr, "labels", {}),
    ("ldr_raw", cl.label_distributionally_robust, np_ldr, "labels",
     {"lam": 0.5, "margin": 1.0, "normalize_logits": False}),
]


def _inputs(kind, seed):
    """(NumPy inputs, JAX inputs); the first of each is the differentiated one."""
    if kind == "labels":
        z, y = logits_labels(seed)
        return (z, y), (jnp.float32(z), jnp.asarray(y))
    if kind == "targets":
        z, t = logits_targets(seed)
        return (z, t), (jnp.float32(z), jnp.float32(t))
    if kind == "counts":
        z, y = logits_labels(seed)
        return (z, y, COUNTS), (jnp.float32(z), jnp.asarray(y), jnp.float32(COUNTS))
    x, w, y = features_centers_labels(seed)
    return (x, w, y), (jnp.float32(x), jnp.float32(w), jnp.asarray(y))


def _numpy_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k != "stop_gradient_weight"}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name, fn, np_fn, kind, kwargs", CASES, ids=[c[0] for c in CASES])
def test_value_matches_numpy(name, fn, np_fn, kind, kwargs, seed):
    np_args, jax_args = _inputs(kind, seed)
    got = fn(*jax_args, **kwargs)
    assert got.shape == (B,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_fn(*np_args, **_numpy_kwargs(kwargs)), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("name, fn, np_fn, kind, kwargs", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(name, fn, np_fn, kind, kwargs):
    np_args, jax_args = _inputs(kind, seed=3)
    cotangent = _rng(4).uniform(0.5, 1.5, size=B)
    np_kwargs = _numpy_kwargs(kwargs)
    expected = central_difference(
        lambda x: (np_fn(x, *np_args[1:], **np_kwargs) * cotangent).sum(), np_args[0])
    got = jax.grad(lambda x: (fn(x, *jax_args[1:], **kwargs) * cotangent).sum())(jax_args[0])
    # float32 rounding is relative to the largest entry, so atol scales with it.
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * max(1, abs(expected).max()))


@pytest.mark.parametrize("fn, np_fn, kind, kwargs", [
    (cl.softmax_focal, np_softmax_focal, "labels", {"gamma": 2.0}),
    (cl.softmax_focal, np_softmax_focal, "labels", {"gamma": 0.5}),
    (cl.asymmetric, np_asymmetric, "targets", {}),
    (cl.asymmetric, np_asymmetric, "targets", {"gamma_pos": 1.0, "clip": 0.1}),
])
def test_detached_weight_gradient(fn, np_fn, kind, kwargs):
    """With the weight detached, the gradient is that of the loss with the weight frozen."""
    np_args, jax_args = _inputs(kind, seed=5)
    z0 = np_args[0]
    expected = central_difference(
        lambda x: np_fn(x, *np_args[1:], weight_at=z0, **kwargs).sum(), z0)
    got = jax.grad(lambda x: fn(x, *jax_args[1:], stop_gradient_weight=True, **kwargs).sum())(
        jax_args[0])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    differentiated = jax.grad(
        lambda x: fn(x, *jax_args[1:], stop_gradient_weight=False, **kwargs).sum())(jax_args[0])
    assert not np.allclose(got, differentiated, rtol=1e-3, atol=1e-3)


# -- Golden values from the reference implementations ------------------------------------------

def _golden_call(entry):
    """Our loss for a golden entry: (differentiated inputs, function of them -> per-example)."""
    labels = jnp.asarray(entry.get("labels", []))
    call = dict(entry["call"])
    name = entry["name"]
    if name.startswith("asymmetric"):
        targets = jnp.float32(entry["targets"])
        return (jnp.float32(entry["logits"]),), lambda z: cl.asymmetric(z, targets, **call)
    if name == "ldam":
        counts = jnp.float32(entry["class_counts"])
        return (jnp.float32(entry["logits"]),), lambda z: cl.ldam(z, labels, counts, **call)
    if name.startswith("harmonic"):
        return ((jnp.float32(entry["features"]), jnp.float32(entry["centers"])),
                lambda x, w: cl.harmonic(x, w, labels, **call))
    prefixes = {"softmax_focal": cl.softmax_focal, "encouraging": cl.encouraging,
                "ldr": cl.label_distributionally_robust,
                "stablemax_cross_entropy": cl.stablemax_cross_entropy,
                "squentropy": cl.squentropy}
    (fn,) = [fn for prefix, fn in prefixes.items() if name.startswith(prefix)]
    return (jnp.float32(entry["logits"]),), lambda z: fn(z, labels, **call)


GOLDEN_NAMES = sorted(k for k in GOLDEN if not k.startswith("_"))


def test_golden_file_covers_the_references():
    assert {"asymmetric", "ldam", "squentropy", "stablemax_cross_entropy"} <= set(GOLDEN_NAMES)
    for name in GOLDEN_NAMES:
        assert "@" in GOLDEN[name]["source"], name  # repository@commit


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_matches_reference_implementation(name):
    entry = dict(GOLDEN[name], name=name)
    inputs, loss_fn = _golden_call(entry)
    reduce = jnp.sum if entry["reduction"] == "sum" else jnp.mean
    total = lambda *args: reduce(loss_fn(*args))  # noqa: E731
    value, grads = jax.value_and_grad(total, argnums=tuple(range(len(inputs))))(*inputs)
    np.testing.assert_allclose(value, entry["loss"], rtol=1e-5, atol=1e-6)
    expected = entry["grad"] if len(inputs) > 1 else [entry["grad"]]
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-6)


# -- Limiting cases and invariances ------------------------------------------------------------

def _ce(z, y):
    return optax.losses.softmax_cross_entropy_with_integer_labels(z, y)


@pytest.fixture
def zy():
    z, y = logits_labels(11)
    return jnp.float32(z), jnp.asarray(y)


@pytest.fixture
def zt():
    z, t = logits_targets(12)
    return jnp.float32(z), jnp.float32(t)


def test_poly1_cross_entropy_at_zero_epsilon_is_cross_entropy(zy):
    np.testing.assert_allclose(cl.poly1_cross_entropy(*zy, epsilon=0.0), _ce(*zy), rtol=1e-6)


def test_poly1_cross_entropy_adds_epsilon_times_one_minus_p(zy):
    p_y = jnp.exp(-_ce(*zy))
    np.testing.assert_allclose(cl.poly1_cross_entropy(*zy, epsilon=3.0),
                               _ce(*zy) + 3.0 * (1 - p_y), rtol=1e-6)


def test_poly1_focal_at_zero_epsilon_is_sigmoid_focal(zt):
    np.testing.assert_allclose(cl.poly1_focal(*zt, epsilon=0.0), cl.sigmoid_focal(*zt),
                               rtol=1e-6)


def test_poly1_focal_does_not_weight_the_polynomial_by_alpha(zt):
    """Changing alpha changes only the focal term (as in the paper's snippet)."""
    z, t = zt
    diff = cl.poly1_focal(z, t, alpha=0.9) - cl.poly1_focal(z, t, alpha=0.1)
    np.testing.assert_allclose(diff, cl.sigmoid_focal(z, t, alpha=0.9)
                               - cl.sigmoid_focal(z, t, alpha=0.1), rtol=1e-5, atol=1e-6)


def test_sigmoid_focal_at_gamma_zero_is_weighted_bce(zt):
    z, t = zt
    bce = optax.losses.sigmoid_binary_cross_entropy(z, t)
    np.testing.assert_allclose(cl.sigmoid_focal(z, t, alpha=0.5, gamma=0.0),
                               0.5 * bce.sum(-1), rtol=1e-6)


@pytest.mark.parametrize("stop_gradient_weight", [False, True])
def test_softmax_focal_at_gamma_zero_is_cross_entropy(zy, stop_gradient_weight):
    loss = lambda z: cl.softmax_focal(  # noqa: E731
        z, zy[1], gamma=0.0, stop_gradient_weight=stop_gradient_weight).sum()
    np.testing.assert_allclose(loss(zy[0]), _ce(*zy).sum(), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(zy[0]),
                               jax.grad(lambda z: _ce(z, zy[1]).sum())(zy[0]), atol=1e-6)


def test_comp_sum_at_tau_one_is_cross_entropy(zy):
    np.testing.assert_allclose(cl.comp_sum(*zy, tau=1.0), _ce(*zy), rtol=1e-6)


def test_comp_sum_at_tau_two_is_mae(zy):
    np.testing.assert_allclose(cl.comp_sum(*zy, tau=2.0), 1 - jnp.exp(-_ce(*zy)), rtol=1e-5)


@pytest.mark.parametrize("tau", [1.05, 1.3, 1.7, 1.95])
def test_comp_sum_between_one_and_two_is_gce(zy, tau):
    q = tau - 1
    gce = (1 - jnp.exp(-_ce(*zy)) ** q) / q
    np.testing.assert_allclose(cl.comp_sum(*zy, tau=tau), gce, rtol=1e-5)


@pytest.mark.parametrize("delta", [1e-7, 1e-4, 3e-3])
def test_comp_sum_is_smooth_through_tau_one(zy, delta):
    """Near tau = 1, with L = log S and u = (1 - tau) L, the loss is L (1 + u/2 + O(u^2)) and
    its tau-derivative -L^2 (1/2 + u/3 + O(u^2)): no jump, no NaN at tau = 1."""
    z, y = zy
    ce = _ce(z, y)
    for tau in (1.0 - delta, 1.0, 1.0 + delta):
        u = (1.0 - tau) * ce
        value, d_tau = jax.jvp(lambda t: cl.comp_sum(z, y, tau=t), (jnp.float32(tau),),
                               (jnp.float32(1.0),))
        np.testing.assert_allclose(value, ce * (1 + u / 2), rtol=1e-5,
                                   atol=ce.max() * delta ** 2 * 20)
        np.testing.assert_allclose(d_tau, -ce ** 2 * (0.5 + u / 3), rtol=1e-5,
                                   atol=ce.max() ** 2 * delta ** 2 * 20 + 1e-6)


def test_squentropy_at_zero_weight_is_cross_entropy(zy):
    np.testing.assert_allclose(cl.squentropy(*zy, weight=0.0), _ce(*zy), rtol=1e-6)


@pytest.mark.parametrize("scale, shift", [(3.0, 5.0), (0.2, -40.0)])
def test_z_loss_is_shift_and_scale_invariant(zy, scale, shift):
    z, y = zy
    np.testing.assert_allclose(cl.spherical_z_loss(scale * z + shift, y),
                               cl.spherical_z_loss(z, y), rtol=1e-5)


def test_z_loss_constant_logits_are_finite():
    z = jnp.full((2, K), 3.0)
    y = jnp.array([0, 4])
    loss, grad = jax.value_and_grad(lambda z: cl.spherical_z_loss(z, y).sum())(z)
    np.testing.assert_allclose(loss, 2 * jax.nn.softplus(0.1 * 20.0) / 0.1, rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("log_end", [0.5, 0.75, 1.0])
def test_encouraging_is_cross_entropy_plus_bonus(log_end):
    z, y = logits_labels(13, scale=4.0)  # a spread of p_y on both sides of log_end
    z, y = jnp.float32(z), jnp.asarray(y)
    p = jnp.exp(-_ce(z, y))
    bonus = jnp.where(p > log_end,
                      (p - log_end) / (log_end - 1) + jnp.log(1 - log_end) if log_end < 1
                      else 0.0,
                      jnp.log(jnp.maximum(1 - p, 1e-5)))
    assert np.any(p > 0.75) and np.any(p < 0.5)
    np.testing.assert_allclose(cl.encouraging(z, y, log_end=log_end), _ce(z, y) + bonus,
                               rtol=1e-5, atol=1e-6)


def test_encouraging_tangent_is_continuous_at_log_end():
    """The conservative bonus meets the log curve at p = log_end (value and slope)."""
    z = jnp.array([[jnp.log(3.0), 0.0]])  # p_0 = 0.75
    y = jnp.array([0])
    below = cl.encouraging(z - 1e-3, y, log_end=0.75) + cl.encouraging(z + 1e-3, y,
                                                                       log_end=0.75)
    np.testing.assert_allclose(below / 2, cl.encouraging(z, y, log_end=0.75), atol=1e-5)
    np.testing.assert_allclose(cl.encouraging(z, y, log_end=0.75),
                               cl.encouraging(z, y, log_end=1.0), atol=1e-5)


def test_harmonic_is_invariant_to_translating_features_and_centers():
    x, w, y = features_centers_labels(14)
    shift = np.array([4.0, -7.0, 2.5])
    np.testing.assert_allclose(cl.harmonic(jnp.float32(x + shift), jnp.float32(w + shift), y),
                               cl.harmonic(jnp.float32(x), jnp.float32(w), y), rtol=1e-5)


def test_harmonic_gradient_is_finite_on_a_center():
    _, w, y = features_centers_labels(15)
    x = jnp.float32(w[y])  # every feature sits exactly on its class centre
    grads = jax.grad(lambda x, w: cl.harmonic(x, w, y).sum(), argnums=(0, 1))(x, jnp.float32(w))
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_harmonic_rejects_mismatched_centers():
    x, w, y = features_centers_labels(16)
    with pytest.raises(ValueError, match="`centers`"):
        cl.harmonic(jnp.float32(x), jnp.float32(w[:, :2]), y)


def test_stablemax_on_nonnegative_logits_is_linear_normalisation():
    z = jnp.array([[0.0, 1.0, 5.0], [2.0, 2.0, 0.5]])
    y = jnp.array([2, 0])
    np.testing.assert_allclose(cl.stablemax_cross_entropy(z, y),
                               -jnp.log(jnp.array([6.0 / 9.0, 3.0 / 7.5])), rtol=1e-6)


def test_ldam_without_margin_and_scale_is_cross_entropy(zy):
    np.testing.assert_allclose(cl.ldam(*zy, COUNTS, max_margin=0.0, scale=1.0), _ce(*zy),
                               rtol=1e-6)


def test_ldam_rarest_class_gets_max_margin():
    z = jnp.zeros((K, K))
    y = jnp.arange(K)
    # With zero logits, CE(scale * (-m_y e_y)) is increasing in m_y; the rarest class is last.
    loss = cl.ldam(z, y, COUNTS, max_margin=0.5, scale=1.0)
    expected = -jax.nn.log_softmax(jnp.array([-0.5, 0, 0, 0, 0]))[0]
    np.testing.assert_allclose(loss[-1], expected, rtol=1e-6)
    assert np.all(np.diff(loss) > 0)


def test_ldam_rejects_wrong_counts(zy):
    with pytest.raises(ValueError, match="`class_counts`"):
        cl.ldam(*zy, COUNTS[:3])


def test_logit_adjusted_with_uniform_counts_is_cross_entropy(zy):
    np.testing.assert_allclose(cl.logit_adjusted(*zy, jnp.full(K, 7.0)), _ce(*zy), rtol=1e-6)


def test_asymmetric_without_focusing_or_clipping_is_bce(zt):
    z, t = zt
    p = jax.nn.sigmoid(z)
    bce = -(t * jnp.log(jnp.maximum(p, 1e-8)) + (1 - t) * jnp.log(jnp.maximum(1 - p, 1e-8)))
    np.testing.assert_allclose(
        cl.asymmetric(z, t, gamma_pos=0.0, gamma_neg=0.0, clip=0.0), bce.sum(-1), rtol=1e-5)


def test_asymmetric_eps_floor_bounds_saturated_terms():
    z = jnp.array([[-1e4, 1e4]])
    t = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(cl.asymmetric(z, t, gamma_pos=0.0, gamma_neg=0.0, clip=0.0),
                               [-2 * np.log(1e-8)], rtol=1e-6)


def test_ldr_without_normalisation_margin_and_temperature_one_is_ce_minus_log_k(zy):
    np.testing.assert_allclose(
        cl.label_distributionally_robust(*zy, lam=1.0, margin=0.0, normalize_logits=False),
        _ce(*zy) - np.log(K), rtol=1e-5, atol=1e-6)


def test_ldr_small_temperature_tends_to_crammer_singer_hinge(zy):
    z, y = zy
    scores = np.asarray(z)
    margins = 0.3 * (1 - np.eye(K)[np.asarray(y)])
    hinge = (margins + scores - np_pick(scores, np.asarray(y))[:, None]).max(-1)
    np.testing.assert_allclose(
        cl.label_distributionally_robust(z, y, lam=1e-3, margin=0.3, normalize_logits=False),
        hinge - 1e-3 * np.log(K), atol=5e-3)


def test_ldr_normalisation_is_finite_where_softplus_underflows():
    z = jnp.array([[-200.0, -201.0, -199.0], [-1e4, -1e4, -1e4]])
    y = jnp.array([2, 0])
    loss, grad = jax.value_and_grad(lambda z: cl.label_distributionally_robust(z, y).sum())(z)
    # Far below zero softplus(z) ~ exp(z): the scores are K * softmax(z).
    scores = 3 * jax.nn.softmax(z[0])
    gaps = 0.1 * (1 - jnp.eye(3)[2]) + scores - scores[2]
    np.testing.assert_allclose(cl.label_distributionally_robust(z, y)[0],
                               jnp.log(jnp.mean(jnp.exp(gaps))), rtol=1e-5)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
