"""One rule for integer class labels, and the domains of the losses' hyperparameters.

Driven by ``jaxreg.catalog``: every loss entry that takes integer labels (``inputs`` naming
``labels``). With ``K`` classes, a label outside ``[0, K)`` (``K``, ``1000``, ``-1``) gives a
NaN loss (and gradient) under ``jit``, never a finite value, and raises a ``ValueError``
naming ``labels`` when the labels are concrete; ``ignore_index`` gives exactly 0 with a zero
gradient and leaves the other examples alone; under ``jaxreg.checks.debug_checks`` the range
check is a ``checkify`` check. Logits need a batch axis and at least one example. A
hyperparameter outside its domain raises a ``ValueError`` naming it when it is concrete.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxreg import catalog
from jaxreg.checks import debug_checks, debug_checks_enabled
from jaxreg.losses import classification as cl
from jaxreg.losses import noisy_labels as nl
from jaxreg.losses import self_distillation as sd

B, K, D = 6, 5, 4
LABELLED = tuple(e for e in catalog.entries() if e.family in ("classification", "noisy_labels")
                 and "labels" in e.inputs.split(", "))
IDS = [e.name for e in LABELLED]
BAD = [K, 1000, -1]


def test_every_integer_label_loss_is_enumerated():
    names = set(IDS)
    assert {"cross_entropy", "poly1_cross_entropy", "softmax_focal", "generalized_cross_entropy",
            "symmetric_cross_entropy", "reverse_cross_entropy", "mae", "normalized_cross_entropy",
            "normalized_focal", "normalized_generalized_cross_entropy", "active_passive",
            "squentropy", "label_distributionally_robust", "ldam", "logit_adjusted", "harmonic",
            "stablemax_cross_entropy", "comp_sum", "encouraging", "elr",
            "progressive_self_distillation", "spherical_z_loss"} <= names
    assert [e.name for e in LABELLED if e.inputs == "logits, labels"]  # the plain kind is there


def _call(entry, x, labels, **kwargs):
    """``(per-example loss, fn)`` of ``entry`` at differentiable input ``x`` and ``labels``."""
    key = jax.random.PRNGKey(7)
    if entry.inputs == "features, centers, labels":
        out = entry.fn(x, jax.random.normal(key, (K, D)), labels, **kwargs)
    elif entry.inputs == "logits, labels":
        out = entry.fn(x, labels, **kwargs)
    elif entry.inputs == "logits, labels, class_counts":
        out = entry.fn(x, labels, jnp.asarray([50.0, 20.0, 10.0, 5.0, 2.0]), **kwargs)
    elif entry.inputs == "logits, labels, example_state":
        out = entry.fn(x, labels, jax.nn.softmax(jax.random.normal(key, (B, K))), **kwargs)[0]
    else:
        raise AssertionError(f"no input builder for {entry.inputs!r}")
    return out


def _inputs(entry, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    width = D if entry.inputs == "features, centers, labels" else K
    return 2.0 * jax.random.normal(k1, (B, width)), jax.random.randint(k2, (B,), 0, K)


def _value_and_grad(entry, x, labels, **kwargs):
    loss = jax.jit(lambda z, y: _call(entry, z, y, **kwargs))(x, labels)
    grad = jax.jit(jax.grad(lambda z, y: jnp.sum(_call(entry, z, y, **kwargs))))(x, labels)
    return np.asarray(loss), np.asarray(grad)


# -- labels out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_traced_out_of_range_label_gives_nan_for_that_example_only(entry, bad):
    x, labels = _inputs(entry)
    good_loss, good_grad = _value_and_grad(entry, x, labels)
    assert np.all(np.isfinite(good_loss))
    loss, grad = _value_and_grad(entry, x, labels.at[2].set(bad))
    assert np.isnan(loss[2]), f"{entry.name}: label {bad} gave {loss[2]}"
    assert np.all(np.isnan(grad[2])), f"{entry.name}: label {bad} gave a finite gradient"
    others = np.arange(B) != 2
    np.testing.assert_allclose(loss[others], good_loss[others], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad[others], good_grad[others], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_concrete_out_of_range_label_raises_naming_labels(entry, bad):
    x, labels = _inputs(entry)
    labels = np.array(labels)
    labels[[1, 3]] = bad
    pattern = rf"`labels` must hold class indices in \[0, {K}\) \(K = {K} classes\), got {bad} "
    with pytest.raises(ValueError, match=pattern + r"\(2 of 6 examples\)"):
        _call(entry, x, labels)
    with pytest.raises(ValueError, match=pattern):  # a concrete JAX array too
        _call(entry, x, jnp.asarray(labels))


def test_concrete_check_lists_several_offending_values():
    x, labels = _inputs(catalog.get("cross_entropy"))
    with pytest.raises(ValueError, match=r"got -3, 7, 1000 \(3 of 6"):
        cl.cross_entropy(x, np.array([0, 7, -3, 1000, 1, 2]))


# -- ignore_index -------------------------------------------------------------------------------

@pytest.mark.parametrize("ignore_index", [-100, K, 0])
@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_ignore_index_gives_zero_loss_and_gradient(entry, ignore_index):
    x, labels = _inputs(entry, seed=1)
    labels = jnp.where(labels == 0, 2, labels) if ignore_index == 0 else labels
    plain_loss, plain_grad = _value_and_grad(entry, x, labels)
    ignored = labels.at[jnp.asarray([1, 4])].set(ignore_index)
    loss, grad = _value_and_grad(entry, x, ignored, ignore_index=ignore_index)
    assert np.all(loss[[1, 4]] == 0.0), f"{entry.name}: {loss[[1, 4]]}"
    assert np.all(grad[[1, 4]] == 0.0), f"{entry.name}: gradient leaks from ignored examples"
    kept = np.array([0, 2, 3, 5])
    np.testing.assert_allclose(loss[kept], plain_loss[kept], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grad[kept], plain_grad[kept], rtol=1e-6, atol=1e-7)
    eager = _call(entry, x, np.asarray(ignored), ignore_index=ignore_index)  # no ValueError
    np.testing.assert_allclose(eager, loss, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_ignore_index_does_not_excuse_other_labels(entry):
    x, labels = _inputs(entry)
    with pytest.raises(ValueError, match=r"or ignore_index=-100, got -1 "):
        _call(entry, x, np.asarray(labels.at[0].set(-1)), ignore_index=-100)
    loss = jax.jit(lambda y: _call(entry, x, y, ignore_index=-100))(labels.at[0].set(-1))
    assert np.isnan(loss[0])


@pytest.mark.parametrize("value", [1.5, True, "0"])
def test_ignore_index_must_be_an_int(value):
    x, labels = _inputs(catalog.get("mae"))
    with pytest.raises(TypeError, match="`ignore_index` must be an int or None"):
        nl.mae(x, labels, ignore_index=value)


# -- debug mode ---------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_debug_checks_report_a_traced_label_out_of_range(entry):
    x, labels = _inputs(entry)

    def f(z, y):
        return _call(entry, z, y)

    assert not debug_checks_enabled()
    with debug_checks():
        assert debug_checks_enabled()
        checked = checkify.checkify(jax.jit(f))
        error, _ = checked(x, labels.at[3].set(1000))
        message = error.get()
        assert message is not None and "`labels`" in message and "got 1000" in message, message
        assert f"[0, {K})" in message
        error, _ = checked(x, labels)
        assert error.get() is None
    assert not debug_checks_enabled()


def test_without_debug_mode_no_check_is_emitted():
    x, labels = _inputs(catalog.get("cross_entropy"))
    jaxpr = str(jax.make_jaxpr(cl.cross_entropy)(x, labels))
    assert "check" not in jaxpr
    with debug_checks():
        assert "check" in str(jax.make_jaxpr(cl.cross_entropy)(x, labels))
    # Leaving debug mode clears the caches: the same jitted function runs again without checks.
    f = jax.jit(cl.cross_entropy)
    with debug_checks():
        checkify.checkify(f)(x, labels)
    np.testing.assert_allclose(f(x, labels), cl.cross_entropy(x, np.asarray(labels)), rtol=1e-6)


def test_debug_mode_retraces_functions_jitted_before():
    x, labels = _inputs(catalog.get("cross_entropy"))
    f = jax.jit(nl.mae)
    f(x, labels)  # traced (and cached) outside debug mode
    with debug_checks():
        error, _ = checkify.checkify(f)(x, labels.at[0].set(-1))
    assert error.get() is not None and "got -1" in error.get()


# -- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_logits_without_a_batch_axis_are_rejected(entry):
    x, labels = _inputs(entry)
    name = "features" if entry.inputs == "features, centers, labels" else "logits"
    with pytest.raises(ValueError, match=rf"`{name}` must have a batch axis and a class axis"):
        if entry.inputs == "logits, labels, example_state":
            entry.fn(x[0], labels[0], jax.nn.softmax(x[0]))
        elif entry.inputs == "features, centers, labels":
            entry.fn(x[0], jnp.ones((K, D)), labels[0])
        elif entry.inputs == "logits, labels, class_counts":
            entry.fn(x[0], labels[0], jnp.ones(K))
        else:
            entry.fn(x[0], labels[0])


@pytest.mark.parametrize("entry", LABELLED, ids=IDS)
def test_empty_batch_is_rejected(entry):
    x, labels = _inputs(entry)
    name = "features" if entry.inputs == "features, centers, labels" else "logits"
    with pytest.raises(ValueError, match=rf"`{name}` is an empty batch"):
        if entry.inputs == "logits, labels, example_state":
            entry.fn(x[:0], labels[:0], jax.nn.softmax(x[:0]))
        else:
            _call(entry, x[:0], labels[:0])


def test_leading_axes_are_still_accepted():
    z = jax.random.normal(jax.random.PRNGKey(0), (2, 3, K))
    y = jnp.asarray([[0, 1, 4], [2, 3, 0]])
    assert cl.cross_entropy(z, y).shape == (2, 3)
    assert nl.active_passive(z, y.at[1, 1].set(-100), ignore_index=-100)[1, 1] == 0.0


# -- GCE at q = 0 -------------------------------------------------------------------------------

def test_generalized_cross_entropy_at_q_zero_is_cross_entropy():
    x, labels = _inputs(catalog.get("cross_entropy"), seed=3)
    ce, ce_grad = jax.value_and_grad(lambda z: jnp.sum(cl.cross_entropy(z, labels)))(x)
    for gce in (lambda z: nl.generalized_cross_entropy(z, labels, q=0.0),
                lambda z: jax.jit(lambda z, q: nl.generalized_cross_entropy(z, labels, q=q))(
                    z, jnp.float32(0.0))):
        np.testing.assert_allclose(gce(x), cl.cross_entropy(x, labels), rtol=1e-6)
        value, grad = jax.value_and_grad(lambda z, gce=gce: jnp.sum(gce(z)))(x)
        np.testing.assert_allclose(value, ce, rtol=1e-6)
        np.testing.assert_allclose(grad, ce_grad, rtol=1e-5, atol=1e-7)
    # Smooth in q through 0: finite derivative, equal to the one-sided difference quotient.
    dq = jax.grad(lambda q: jnp.sum(nl.generalized_cross_entropy(x, labels, q=q)))(0.0)
    assert np.isfinite(dq)
    np.testing.assert_allclose(
        dq, (jnp.sum(nl.generalized_cross_entropy(x, labels, q=1e-3)) - ce) / 1e-3, rtol=2e-2)
    # And it is continuous: q = 1e-6 and q = 0 agree.
    np.testing.assert_allclose(nl.generalized_cross_entropy(x, labels, q=1e-6),
                               nl.generalized_cross_entropy(x, labels, q=0.0), rtol=1e-5)


def test_normalized_generalized_cross_entropy_at_q_zero_is_nce():
    x, labels = _inputs(catalog.get("cross_entropy"), seed=4)
    np.testing.assert_allclose(nl.normalized_generalized_cross_entropy(x, labels, q=0.0),
                               nl.normalized_cross_entropy(x, labels), rtol=1e-5)
    grad = jax.grad(lambda q: jnp.sum(nl.normalized_generalized_cross_entropy(x, labels, q=q)))(
        0.0)
    assert np.isfinite(grad)


# -- hyperparameter domains ---------------------------------------------------------------------

# (loss name, rejected hyperparameters, the message)
REJECTED = [
    ("poly1_cross_entropy", {"epsilon": -1.5}, r"`epsilon` must be >= -1, got -1.5"),
    ("poly1_focal", {"epsilon": -2.0}, r"`epsilon` must be >= -1, got -2.0"),
    ("poly1_focal", {"gamma": -1.0}, r"`gamma` must be >= 0, got -1.0"),
    ("poly1_focal", {"alpha": 1.5}, r"`alpha` must be in \[0, 1\], got 1.5"),
    ("softmax_focal", {"gamma": -0.5}, r"`gamma` must be >= 0, got -0.5"),
    ("sigmoid_focal", {"gamma": -1.0}, r"`gamma` must be >= 0"),
    ("sigmoid_focal", {"alpha": -0.25}, r"`alpha` must be in \[0, 1\], got -0.25"),
    ("comp_sum", {"tau": -1.0}, r"`tau` must be >= 0, got -1.0"),
    ("squentropy", {"weight": -1.0}, r"`weight` must be >= 0"),
    ("spherical_z_loss", {"a": 0.0}, r"`a` must be > 0, got 0.0"),
    ("encouraging", {"log_end": 0.0}, r"`log_end` must be in \(0, 1\], got 0.0"),
    ("encouraging", {"log_end": 1.5}, r"`log_end` must be in \(0, 1\], got 1.5"),
    ("harmonic", {"exponent": 0.0}, r"`exponent` must be > 0"),
    ("harmonic", {"eps": -1e-4}, r"`eps` must be >= 0"),
    ("ldam", {"max_margin": -0.5}, r"`max_margin` must be >= 0"),
    ("ldam", {"scale": 0.0}, r"`scale` must be > 0"),
    ("logit_adjusted", {"tau": -1.0}, r"`tau` must be >= 0"),
    ("asymmetric", {"gamma_neg": -4.0}, r"`gamma_neg` must be >= 0"),
    ("asymmetric", {"gamma_pos": -1.0}, r"`gamma_pos` must be >= 0"),
    ("asymmetric", {"clip": 1.5}, r"`clip` must be in \[0, 1\], got 1.5"),
    ("asymmetric", {"eps": 0.0}, r"`eps` must be > 0"),
    ("label_distributionally_robust", {"lam": 0.0}, r"`lam` must be > 0, got 0.0"),
    ("label_distributionally_robust", {"margin": -0.1}, r"`margin` must be >= 0"),
    ("generalized_cross_entropy", {"q": 1.5}, r"`q` must be in \[0, 1\], got 1.5"),
    ("generalized_cross_entropy", {"q": -0.1}, r"`q` must be in \[0, 1\], got -0.1"),
    ("generalized_cross_entropy", {"q": float("nan")}, r"`q` must be in \[0, 1\], got nan"),
    ("symmetric_cross_entropy", {"alpha": -0.1}, r"`alpha` must be >= 0, got -0.1"),
    ("symmetric_cross_entropy", {"beta": -1.0}, r"`beta` must be >= 0, got -1.0"),
    ("normalized_focal", {"gamma": -0.5}, r"`gamma` must be >= 0"),
    ("normalized_generalized_cross_entropy", {"q": 2.0}, r"`q` must be in \[0, 1\]"),
    ("active_passive", {"alpha": -1.0}, r"`alpha` must be >= 0"),
    ("active_passive", {"beta": -1.0}, r"`beta` must be >= 0"),
    ("active_passive", {"gamma": -1.0}, r"`gamma` must be >= 0"),
    ("active_passive", {"q": 1.1}, r"`q` must be in \[0, 1\]"),
    ("elr", {"beta": 1.2}, r"`beta` must be in \[0, 1\], got 1.2"),
    ("elr", {"lam": -3.0}, r"`lam` must be >= 0"),
    ("progressive_self_distillation", {"alpha": -0.2}, r"`alpha` must be in \[0, 1\]"),
]


def _any_call(entry, **kwargs):
    if entry.inputs == "logits, targets":
        x = jax.random.normal(jax.random.PRNGKey(0), (B, K))
        return entry.fn(x, jnp.zeros((B, K)), **kwargs)
    x, labels = _inputs(entry)
    return _call(entry, x, labels, **kwargs)


@pytest.mark.parametrize("name, kwargs, message", REJECTED,
                         ids=[f"{n}-{next(iter(k))}={next(iter(k.values()))}"
                              for n, k, _ in REJECTED])
def test_hyperparameter_outside_its_domain_is_named(name, kwargs, message):
    entry = catalog.get(name)
    with pytest.raises(ValueError, match=message):
        _any_call(entry, **kwargs)
    # A concrete JAX scalar is checked too; a traced one is not (documented), and runs.
    (key, value), = kwargs.items()
    with pytest.raises(ValueError, match=message.split(" must")[0]):
        _any_call(entry, **{key: jnp.float32(value)})
    jax.jit(lambda v: _any_call(entry, **{key: v}))(jnp.float32(value))


def test_every_loss_hyperparameter_in_the_catalog_is_checked():
    checked = {(name, next(iter(kwargs))) for name, kwargs, _ in REJECTED}
    unchecked = {("spherical_z_loss", "b")}  # any real value is in its domain
    for entry in catalog.entries():
        if entry.family not in ("classification", "noisy_labels"):
            continue
        for hparam in entry.hparams:
            assert (entry.name, hparam) in checked | unchecked, (entry.name, hparam)


@pytest.mark.parametrize("name, kwargs", [
    ("generalized_cross_entropy", {"q": 0.0}), ("generalized_cross_entropy", {"q": 1.0}),
    ("softmax_focal", {"gamma": 0.0}), ("poly1_cross_entropy", {"epsilon": -1.0}),
    ("encouraging", {"log_end": 1.0}), ("comp_sum", {"tau": 0.0}),
    ("label_distributionally_robust", {"margin": 0.0}), ("asymmetric", {"clip": 0.0}),
    ("elr", {"beta": 0.0}), ("progressive_self_distillation", {"alpha": 1.0}),
])
def test_domain_boundaries_are_accepted(name, kwargs):
    assert np.all(np.isfinite(np.asarray(_any_call(catalog.get(name), **kwargs))))


def test_class_counts_must_be_positive():
    x, labels = _inputs(catalog.get("ldam"))
    with pytest.raises(ValueError, match=r"`class_counts` must be > 0, got \[0.0\]"):
        cl.ldam(x, labels, jnp.asarray([5.0, 4.0, 0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"`class_counts` must be > 0, got \[-1.0\]"):
        cl.logit_adjusted(x, labels, np.array([5.0, 4.0, 3.0, 2.0, -1.0]))


def test_pskd_schedule_and_buffer_are_checked():
    with pytest.raises(ValueError, match="`num_epochs` must be > 0, got 0"):
        sd.pskd_alpha(0, num_epochs=0)
    with pytest.raises(ValueError, match=r"`alpha_final` must be in \[0, 1\], got 1.5"):
        sd.pskd_alpha(0, alpha_final=1.5, num_epochs=10)
    with pytest.raises(ValueError, match=r"`labels` must hold class indices in \[0, 3\)"):
        sd.initial_predictions(np.array([0, 3]), 3)
    rows = jax.jit(lambda y: sd.initial_predictions(y, 3))(jnp.asarray([0, 3, -1]))
    np.testing.assert_array_equal(rows[0], [1.0, 0.0, 0.0])
    assert np.all(np.isnan(rows[1:]))
