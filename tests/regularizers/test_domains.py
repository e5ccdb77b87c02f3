"""Hyperparameters outside their domain and integer labels out of range, for regularizers.

Each concrete hyperparameter outside its domain raises a ``ValueError`` naming it (traced ones
are not checked); integer labels, targets and group codes out of range raise naming the
argument when concrete, and give NaN (never a finite value) when traced.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg.regularizers import domain_generalization as dg
from jaxreg.regularizers import fairness, lora, outputs, smoothness

B, D, K = 8, 3, 4


def _mlp(params, inputs):
    return inputs @ params["kernel"]


def _batch():
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"kernel": jax.random.normal(key1, (D, K))}
    inputs = jax.random.normal(key2, (B, D))
    labels = jnp.arange(B) % K
    environments = jnp.arange(B) % 2
    return params, inputs, labels, environments


def _logits():
    return jax.random.normal(jax.random.PRNGKey(1), (B, K))


CASES = [
    ("flooding level", lambda: outputs.flooding(jnp.ones(B), level=-0.1),
     r"`level` must be >= 0, got -0.1"),
    ("distillation temperature",
     lambda: outputs.knowledge_distillation(_logits(), _logits(), temperature=0.0),
     r"`temperature` must be > 0, got 0.0"),
    ("z-loss strength", lambda: outputs.logit_z_loss(_logits(), strength=-1e-4),
     r"`strength` must be >= 0, got -0.0001"),
    ("VAT epsilon", lambda: smoothness.virtual_adversarial(
        _mlp, _batch()[0], _batch()[1], jax.random.PRNGKey(2), epsilon=-8.0),
     r"`epsilon` must be >= 0, got -8.0"),
    ("VAT xi", lambda: smoothness.virtual_adversarial(
        _mlp, _batch()[0], _batch()[1], jax.random.PRNGKey(2), xi=0.0),
     r"`xi` must be > 0, got 0.0"),
    ("JdCov c", lambda: fairness.joint_distance_covariance(
        jnp.arange(6.0), jnp.asarray([0.0, 1, 0, 1, 1, 0]), c=0.0),
     r"`c` must be > 0, got 0.0"),
    ("JSD bandwidth", lambda: fairness.jensen_shannon_divergence(
        jnp.arange(6.0), jnp.asarray([0, 1, 0, 1, 1, 0]), num_groups=2, bandwidth=-0.15),
     r"`bandwidth` must be > 0, got -0.15"),
    ("LoRA preserve", lambda: lora.lora_orthogonality(
        jnp.ones((2, 3, 1)), jnp.ones((2, 1, 4)), jnp.ones((3, 4)), preserve=-1.0),
     r"`preserve` must be >= 0, got -1.0"),
    ("LoRA diversify", lambda: lora.lora_orthogonality(
        jnp.ones((2, 3, 1)), jnp.ones((2, 1, 4)), jnp.ones((3, 4)), diversify=-1.0),
     r"`diversify` must be >= 0, got -1.0"),
    ("Hessian alignment alpha", lambda: dg.hessian_alignment(
        _mlp, *_batch(), num_environments=2, alpha=-1e-4),
     r"`alpha` must be >= 0, got -0.0001"),
    ("Hessian alignment beta", lambda: dg.hessian_alignment(
        _mlp, *_batch(), num_environments=2, beta=-5e-3),
     r"`beta` must be >= 0, got -0.005"),
    ("equivariance strength per group", lambda: __import__(
        "jaxreg.regularizers.equivariance", fromlist=["x"]).soft_equivariance(
        {"w": jnp.ones((2, 2))}, {"w": jnp.stack([jnp.eye(4), jnp.eye(4)])},
        strength=jnp.asarray([1.0, -2.0])),
     r"`strength` must be >= 0, got \[-2.0\]"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hyperparameter_outside_its_domain_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_monge_gap_epsilon_is_checked():
    pytest.importorskip("ott")
    from jaxreg.regularizers import transport
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    with pytest.raises(ValueError, match=r"`epsilon` must be > 0, got -0.05"):
        transport.monge_gap(x, x + 1.0, epsilon=-0.05)


def test_traced_hyperparameters_are_not_checked():
    flooded = jax.jit(lambda level: outputs.flooding(jnp.ones(B), level=level))(-0.1)
    np.testing.assert_allclose(flooded, 1.0, rtol=1e-6)  # |1 + 0.1| - 0.1


@pytest.mark.parametrize("penalty", [dg.irm_penalty, dg.vrex_penalty, dg.fishr_penalty,
                                     dg.hessian_alignment])
@pytest.mark.parametrize("bad", [K, 1000, -1])
def test_domain_generalization_labels_out_of_range(penalty, bad):
    params, inputs, labels, environments = _batch()
    bad_labels = labels.at[3].set(bad)
    with pytest.raises(ValueError, match=rf"`labels` must hold class indices in \[0, {K}\)"):
        penalty(_mlp, params, inputs, np.asarray(bad_labels), environments, num_environments=2)
    traced = jax.jit(lambda y: penalty(_mlp, params, inputs, y, environments,
                                       num_environments=2))(bad_labels)
    assert np.isnan(traced), f"label {bad} gave a finite penalty {traced}"
    good = jax.jit(lambda y: penalty(_mlp, params, inputs, y, environments,
                                     num_environments=2))(labels)
    assert np.isfinite(good)


def test_mixup_integer_targets_out_of_range():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    with pytest.raises(ValueError, match=r"`targets` must hold class indices in \[0, 3\)"):
        smoothness.mixup(x, np.array([0, 1, 3, 2]), jax.random.PRNGKey(1), num_classes=3)
    _, mixed = jax.jit(lambda t: smoothness.mixup(x, t, jax.random.PRNGKey(1), alpha=0.0,
                                                  num_classes=3))(jnp.asarray([0, 1, -1, 2]))
    # lam = 1 (alpha = 0): the bad row stays NaN (its partner gets 0 * NaN = NaN too).
    assert np.all(np.isnan(np.asarray(mixed)[2]))
    _, good = jax.jit(lambda t: smoothness.mixup(x, t, jax.random.PRNGKey(1), alpha=0.0,
                                                 num_classes=3))(jnp.asarray([0, 1, 0, 2]))
    assert np.all(np.isfinite(good))


def test_jensen_shannon_groups_out_of_range():
    with pytest.raises(ValueError, match=r"`groups` must hold class indices in \[0, 2\)"):
        fairness.jensen_shannon_divergence(jnp.arange(4.0), np.array([0, 1, 2, 1]),
                                           num_groups=2)
