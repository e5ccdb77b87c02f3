"""Implicit hypergradients against the exact derivative through a closed-form ridge optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxreg import catalog
from jaxreg.train import hypergradient

RNG = np.random.default_rng(0)
X_TRAIN, X_VAL = RNG.normal(size=(40, 5)), RNG.normal(size=(30, 5))
W_TRUE = RNG.normal(size=5)
Y_TRAIN = X_TRAIN @ W_TRUE + 0.5 * RNG.normal(size=40)
Y_VAL = X_VAL @ W_TRUE + 0.5 * RNG.normal(size=30)


def train_loss(w, log_decay):
    """Least squares plus one weight decay per weight, exp(log_decay_j) / 2 w_j^2."""
    residual = X_TRAIN @ w - Y_TRAIN
    return 0.5 * jnp.mean(residual**2) + 0.5 * jnp.sum(jnp.exp(log_decay) * w**2)


def val_loss(w, log_decay):
    return 0.5 * jnp.mean((X_VAL @ w - Y_VAL) ** 2)


def optimum(log_decay):
    hessian = X_TRAIN.T @ X_TRAIN / 40 + jnp.diag(jnp.exp(log_decay))
    return jnp.linalg.solve(hessian, X_TRAIN.T @ Y_TRAIN / 40)


LOG_DECAY = jnp.asarray(np.log([0.01, 0.1, 1.0, 0.05, 0.3]))


def test_many_neumann_terms_reach_the_exact_hypergradient():
    exact = jax.grad(lambda h: val_loss(optimum(h), h))(LOG_DECAY)
    w = optimum(LOG_DECAY)
    h_max = np.linalg.eigvalsh(np.asarray(jax.hessian(train_loss)(w, LOG_DECAY))).max()
    got = jax.jit(lambda w, h: hypergradient.implicit_hypergradient(
        train_loss, val_loss, w, h, num_terms=3000, learning_rate=1.0 / h_max))(w, LOG_DECAY)
    np.testing.assert_allclose(got, exact, rtol=2e-3, atol=1e-6)


def test_a_finite_series_is_the_matrix_polynomial():
    w = optimum(LOG_DECAY)
    hessian = np.asarray(jax.hessian(train_loss)(w, LOG_DECAY), np.float64)
    v = RNG.normal(size=5)
    alpha = 0.3
    for terms in (0, 1, 4):
        expected = alpha * sum(np.linalg.matrix_power(np.eye(5) - alpha * hessian, j) @ v
                               for j in range(terms + 1))
        got = hypergradient.neumann_inverse_hvp(train_loss, w, LOG_DECAY, jnp.asarray(v),
                                                num_terms=terms, learning_rate=alpha)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_the_direct_term_keeps_its_sign():
    def penalized_val(w, h):
        return val_loss(w, h) + jnp.sum(h**2)

    w = optimum(LOG_DECAY)
    with_direct = hypergradient.implicit_hypergradient(train_loss, penalized_val, w, LOG_DECAY,
                                                       num_terms=2, learning_rate=0.1)
    without = hypergradient.implicit_hypergradient(train_loss, val_loss, w, LOG_DECAY,
                                                   num_terms=2, learning_rate=0.1)
    np.testing.assert_allclose(with_direct - without, 2 * LOG_DECAY, rtol=1e-5)


def test_descending_the_hypergradient_lowers_the_validation_loss():
    h, w = LOG_DECAY, optimum(LOG_DECAY)
    before = val_loss(optimum(h), h)
    for _ in range(20):
        w = optimum(h)
        h = h - 1.0 * hypergradient.implicit_hypergradient(train_loss, val_loss, w, h,
                                                           num_terms=50, learning_rate=0.2)
    assert float(val_loss(optimum(h), h)) < float(before) - 1e-4


def test_registered_and_vmappable_over_its_step():
    entry = next(e for e in catalog.ENTRIES if e.name == "implicit_hypergradient")
    assert entry.fn is hypergradient.implicit_hypergradient and entry.arxiv == "1911.02590"
    w, alphas = optimum(LOG_DECAY), jnp.asarray([0.05, 0.2])
    swept = jax.vmap(lambda a: entry.fn(train_loss, val_loss, w, LOG_DECAY, num_terms=3,
                                        learning_rate=a))(alphas)
    for row, alpha in zip(swept, alphas):
        np.testing.assert_allclose(row, entry.fn(train_loss, val_loss, w, LOG_DECAY, num_terms=3,
                                                 learning_rate=float(alpha)), rtol=1e-5)


def test_num_terms_is_checked():
    with pytest.raises(ValueError, match="`num_terms`"):
        hypergradient.implicit_hypergradient(train_loss, val_loss, optimum(LOG_DECAY), LOG_DECAY,
                                             num_terms=-1)
