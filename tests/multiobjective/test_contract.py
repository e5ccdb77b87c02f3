"""The contract every aggregator in the catalog passes (torchjd's property suite, in JAX).

On the zoo of Jacobians: output structure and finiteness (also for zero Jacobians and for
Jacobians scaled from 1e-10 to 1e15), jit, use inside ``optax.chain``, vmap over each numeric
hyperparameter, bfloat16 Jacobians (bfloat16 update, float32 state, close to the float32
update), and the properties each entry claims in ``jaxreg.catalog`` (non-conflicting,
permutation invariance, linearity under scaling), with torchjd's tolerances. Float64 under
``jax_enable_x64``: ``tests/test_x64.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from zoo import as_tree, flat, matrices, scaled_matrices, zero_matrices

from jaxreg import catalog

ENTRIES = [e for e in catalog.ENTRIES if e.inputs.startswith("jacobian")]
IDS = [e.name for e in ENTRIES]


# Fewest objectives an entry is defined for with its default arguments (as in torchjd).
_MIN_OBJECTIVES = {"krum": 3,  # n_byzantine + 3
                   "trimmed_mean": 3}  # 2 trim_number + 1


def _supports(entry, m):
    if entry.name == "bloop":
        return m == 2  # main + one auxiliary, as the official code
    return m >= _MIN_OBJECTIVES.get(entry.name, 1)


def _extra_args(entry, m):
    """The objectives' values, for the aggregators that take them (as make_step passes)."""
    return {"values": jnp.linspace(1.0, 2.0, m)} if entry.inputs == "jacobian, values" else {}


def _update(name, jac, hparams):
    m = jax.tree.leaves(jac)[0].shape[0]
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), jac)
    agg = catalog.get(name).fn(num_objectives=m, **hparams)
    update, _ = agg.update(jac, agg.init(params), params, **_extra_args(catalog.get(name), m))
    return update


_jitted_update = jax.jit(_update, static_argnums=0)  # one compilation per entry and shape


def _aggregate_tree(entry, jac, **hparams):
    return _jitted_update(entry.name, jac, hparams)


def _aggregate(entry, matrix, **hparams):
    return _aggregate_tree(entry, as_tree(matrix), **hparams)


def _vector(update):
    return flat(jax.tree.map(lambda x: np.asarray(x)[None], update))[0]


def _cases(entry, cases):
    return [(name, m) for name, m in cases if _supports(entry, len(m))]


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_structure_finite_and_jit(entry):
    for name, matrix in _cases(entry, matrices() + zero_matrices() + scaled_matrices()):
        update = _aggregate(entry, matrix)
        out = _vector(update)
        assert out.shape == (matrix.shape[1],), (entry.name, name)
        assert np.all(np.isfinite(out)), (entry.name, name, out)
    name, matrix = _cases(entry, matrices())[-1]
    jac = as_tree(matrix)
    eager = _update(entry.name, jac, {})  # the transformation outside jit
    np.testing.assert_allclose(_vector(eager), _vector(_aggregate(entry, matrix)), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_chains_with_an_optimizer_under_jit(entry):
    name, matrix = _cases(entry, matrices())[-1]
    jac = as_tree(matrix)
    params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), jac)
    chain = optax.chain(entry.fn(num_objectives=len(matrix)), optax.sgd(0.1))
    state = chain.init(params)
    for _ in range(3):  # state round-trips with a stable structure
        update, state = jax.jit(chain.update)(jac, state, params,
                                              **_extra_args(entry, len(matrix)))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(update))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_bfloat16_jacobians(entry):
    """A bfloat16 model: the update is bfloat16, the state (weights, moments of the
    aggregator's own) keeps its float32 accumulators through steps under jit, and the update
    is the float32 one up to bfloat16's 8 bits of mantissa."""
    name, matrix = _cases(entry, matrices())[-1]
    m = len(matrix)

    def run(dtype):
        jac = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(dtype), as_tree(matrix))
        params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], dtype), jac)
        agg = entry.fn(num_objectives=m)
        extra = ({"values": jnp.linspace(1.0, 2.0, m, dtype=dtype)}
                 if entry.inputs == "jacobian, values" else {})
        state = agg.init(params)
        step = jax.jit(lambda j, s, p: agg.update(j, s, p, **extra))
        for _ in range(2):
            update, new_state = step(jac, state, params)
            assert jax.tree.structure(new_state) == jax.tree.structure(state), entry.name
            assert [x.dtype for x in jax.tree.leaves(new_state)] == [
                x.dtype for x in jax.tree.leaves(state)], entry.name
            state = new_state
        return update, state

    update16, state16 = run(jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(update16)} == {jnp.dtype(jnp.bfloat16)}, entry.name
    assert state16.weights.dtype == jnp.float32, entry.name
    out16 = _vector(jax.tree.map(lambda x: x.astype(jnp.float32), update16))
    assert np.all(np.isfinite(out16)), (entry.name, out16)
    out32 = _vector(run(jnp.float32)[0])
    scale = max(1.0, np.abs(out32).max())
    np.testing.assert_allclose(out16, out32, rtol=5e-2, atol=5e-2 * scale, err_msg=entry.name)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.hparams],
                         ids=[e.name for e in ENTRIES if e.hparams])
def test_vmap_over_each_hyperparameter(entry):
    name, matrix = _cases(entry, matrices())[-1]
    for hp, default in entry.hparams.items():
        values = [default, 0.5 * default] if default else [0.0, 0.5]
        jac = as_tree(matrix)
        swept = jax.vmap(lambda v: _update(entry.name, jac, {hp: v}))(jnp.asarray(values))
        for i, v in enumerate(values):
            one = jax.tree.map(lambda x: x[i], swept)
            np.testing.assert_allclose(_vector(one), _vector(_aggregate(entry, matrix, **{hp: v})),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{entry.name} {hp}={v}")


def _claiming(claim):
    chosen = [e for e in ENTRIES if claim in e.claims]
    return pytest.mark.parametrize("entry", chosen, ids=[e.name for e in chosen])


@_claiming("non_conflicting")
def test_non_conflicting(entry):
    # torchjd _asserts.assert_non_conflicting: ||(J a)_+|| close to ||J a||, atol = rtol = 4e-4
    for name, matrix in _cases(entry, matrices()):
        projections = matrix @ _vector(_aggregate(entry, matrix))
        np.testing.assert_allclose(np.linalg.norm(np.maximum(projections, 0)),
                                   np.linalg.norm(projections), atol=4e-4, rtol=4e-4,
                                   err_msg=f"{entry.name} on {name}")


@_claiming("permutation_invariant")
def test_permutation_invariant(entry):
    rng = np.random.default_rng(0)
    for name, matrix in _cases(entry, matrices()):
        for _ in range(3):
            permuted = matrix[rng.permutation(len(matrix))]
            np.testing.assert_allclose(
                _vector(_aggregate(entry, permuted)), _vector(_aggregate(entry, matrix)),
                rtol=1e-3, atol=1e-4 * max(1.0, np.abs(matrix).max()),
                err_msg=f"{entry.name} on {name}")


@_claiming("linear_under_scaling")
def test_linear_under_scaling(entry):
    # torchjd _asserts.assert_linear_under_scaling (its tolerance for UPGrad is 6e-2)
    rng = np.random.default_rng(1)
    for name, matrix in _cases(entry, matrices()):
        c1, c2 = rng.uniform(0.5, 2.0, (2, len(matrix)))
        alpha, beta = rng.uniform(0.5, 2.0, 2)
        left = _vector(_aggregate(entry, (alpha * c1 + beta * c2)[:, None] * matrix))
        right = (alpha * _vector(_aggregate(entry, c1[:, None] * matrix))
                 + beta * _vector(_aggregate(entry, c2[:, None] * matrix)))
        np.testing.assert_allclose(left, right, rtol=6e-2, atol=6e-2,
                                   err_msg=f"{entry.name} on {name}")
