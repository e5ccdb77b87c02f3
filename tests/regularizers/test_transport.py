"""The Monge gap against ott-jax's own function, against the exact assignment (unregularized OT
between two uniform n-point measures is a permutation), and its limiting cases."""

import importlib.util
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from scipy.optimize import linear_sum_assignment

from jaxreg.regularizers import transport

needs_ott = pytest.mark.skipif(importlib.util.find_spec("ott") is None,
                               reason="ott-jax (pip install jaxreg[transport]) not installed")
TIGHT = {"threshold": 1e-7, "max_iterations": 20000}


def _points(seed=0, n=7, d=2, shift=0.5, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    source = jax.random.normal(k1, (n, d), dtype)
    return source, source + shift * jax.random.normal(k2, (n, d), dtype)


@needs_ott
@pytest.mark.parametrize("epsilon", [None, 0.1])
def test_matches_ott_monge_gap_from_samples(epsilon):
    reference = pytest.importorskip("ott.neural.methods.monge_gap")  # ott.neural needs diffrax
    from ott.geometry import costs
    source, mapped = _points()
    for cost in (None, costs.Euclidean()):
        want = reference.monge_gap_from_samples(source, mapped, cost_fn=cost, epsilon=epsilon)
        got = transport.monge_gap(source, mapped, epsilon=epsilon, cost=cost)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@needs_ott
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_close_to_the_exact_assignment_gap(seed):
    # ott's entropic cost is min <P, C> - eps H(P) with H(P) in [log n, 2 log n] for couplings of
    # two uniform n-point measures, so gap_0 + eps log n <= gap_eps <= gap_0 + 2 eps log n.
    n, eps = 7, 0.01
    source, mapped = _points(seed, n=n, shift=1.0)
    x, y = np.asarray(source, np.float64), np.asarray(mapped, np.float64)
    cost = np.sum((x[:, None] - y[None]) ** 2, axis=-1)
    rows, cols = linear_sum_assignment(cost)
    exact = np.mean(np.diag(cost)) - cost[rows, cols].mean()
    assert exact > 0.01  # the shifted points are not an optimal assignment
    got = float(transport.monge_gap(source, mapped, epsilon=eps, **TIGHT))
    assert exact + eps * np.log(n) - 1e-4 <= got <= exact + 2 * eps * np.log(n) + 1e-4


@needs_ott
def test_identity_has_the_smallest_gap():
    n, eps = 7, 1e-3
    source, mapped = _points(n=n)
    identity = float(transport.monge_gap(source, source, epsilon=eps, **TIGHT))
    np.testing.assert_allclose(identity, eps * np.log(n), rtol=1e-3)  # gap_0 = 0, P = I / n
    for seed in range(4):
        source, mapped = _points(seed, n=n, shift=1.0)
        assert transport.monge_gap(source, mapped, epsilon=eps, **TIGHT) >= identity - 1e-6


@needs_ott
def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        source, mapped = _points(dtype=jnp.float64)
        # At epsilon 1 Sinkhorn converges to machine precision within TIGHT's budget (at 0.1
        # it stops near a 1e-5 marginal error, and the gradient is off by that much).
        f = jax.jit(lambda y: transport.monge_gap(source, y, epsilon=1.0, **TIGHT))
        grad = jax.grad(f)(mapped)
        assert np.all(np.isfinite(grad)) and np.any(grad != 0)
        check_grads(f, (mapped,), order=1, modes=("rev",), atol=1e-6, rtol=1e-5)


@needs_ott
def test_jit_and_vmap_over_strength_and_epsilon():
    source, mapped = _points()
    one = transport.monge_gap(source, mapped, epsilon=0.1)
    strengths = jnp.array([0.0, 0.5, 2.0])
    swept = jax.jit(jax.vmap(lambda s: transport.monge_gap(source, mapped, strength=s,
                                                           epsilon=0.1)))(strengths)
    np.testing.assert_allclose(swept, strengths * one, rtol=1e-5, atol=1e-8)
    epsilons = jnp.array([0.05, 0.1, 0.5])
    swept = jax.jit(jax.vmap(lambda e: transport.monge_gap(source, mapped, epsilon=e)))(epsilons)
    loop = [transport.monge_gap(source, mapped, epsilon=float(e)) for e in epsilons]
    np.testing.assert_allclose(swept, loop, rtol=1e-4, atol=1e-6)


@needs_ott
def test_bfloat16_and_large_inputs_stay_finite():
    source, mapped = _points(dtype=jnp.bfloat16)
    value, grad = jax.value_and_grad(lambda y: transport.monge_gap(source, y))(mapped)
    assert value.dtype == jnp.float32 and np.isfinite(value)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    source, mapped = _points(shift=1.0)
    value = transport.monge_gap(1e3 * source, 1e3 * mapped)
    assert np.isfinite(value) and value >= 0.0


@needs_ott
def test_bad_inputs_are_named():
    source, mapped = _points()
    with pytest.raises(ValueError, match="`mapped`"):
        transport.monge_gap(source, mapped[:-1])
    with pytest.raises(TypeError, match="`source`"):
        transport.monge_gap(source.astype(jnp.int32), mapped)
    with pytest.raises(ValueError, match="`source`"):
        transport.monge_gap(source[:, 0], mapped[:, 0])


def test_missing_ott_raises_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ott.geometry", None)
    source, mapped = _points()
    with pytest.raises(ImportError, match=r"pip install jaxreg\[transport\]"):
        transport.monge_gap(source, mapped)


def test_module_imports_without_ott():
    code = ("import sys; sys.modules['ott'] = None; "
            "import jaxreg.regularizers.transport as t; print(t.monge_gap.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "monge_gap" in out.stdout, out.stderr
