"""PEGO's LoRA-group orthogonal regularization against a NumPy float64 re-implementation of the
official code's loop (PyTorch layout, ``W [out, in]``, ``A [r, in]``, ``B [out, r]``), a
hand-computed case, its zero set, invariances and scaling, and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric import central_difference

from jaxreg.regularizers import lora


def _numpy_pego(lora_a, lora_b, pretrained, strength=1e-3, preserve=1.0, diversify=1.0):
    """The reference's ``loss_o`` written over torch-layout matrices, summed over layers."""
    kept = diverse = 0.0
    for a, b, w in zip(lora_a, lora_b, pretrained):
        weight = np.asarray(w, np.float64).T                             # [out, in]
        updates = [np.asarray(b_i, np.float64).T @ np.asarray(a_i, np.float64).T  # B @ A
                   for a_i, b_i in zip(a, b)]
        for i, ab_i in enumerate(updates):
            kept += np.abs(weight @ ab_i.T).sum()
            for ab_j in updates[i + 1:]:
                diverse += np.abs(ab_i @ ab_j.T).sum()
    return strength * (preserve * kept + diversify * diverse)


def _group(rng, num_lora, d_in, r, d_out):
    return (rng.normal(size=(num_lora, d_in, r)), rng.normal(size=(num_lora, r, d_out)),
            rng.normal(size=(d_in, d_out)))


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    qa, qb, qw = _group(rng, 3, 6, 2, 5)
    va, vb, vw = _group(rng, 2, 6, 3, 4)
    lora_a = {"query": jnp.asarray(qa, jnp.float32), "value": jnp.asarray(va, jnp.float32)}
    lora_b = {"query": jnp.asarray(qb, jnp.float32), "value": jnp.asarray(vb, jnp.float32)}
    pretrained = {"query": jnp.asarray(qw, jnp.float32), "value": jnp.asarray(vw, jnp.float32)}
    return lora_a, lora_b, pretrained


def _as_lists(*trees):
    return [[np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(t)] for t in trees]


def test_value_matches_the_reference_loop():
    trees = _setup()
    for hp in ({}, {"strength": 0.5, "preserve": 2.0, "diversify": 0.25}):
        got = lora.lora_orthogonality(*trees, **hp)
        assert float(got) == pytest.approx(_numpy_pego(*_as_lists(*trees), **hp), rel=1e-5)


def test_hand_computed_case():
    # W_0 = e_1 (one output unit); dW_1 = [1, 1]^T * 2, dW_2 = [0, 1]^T * 3.
    # preserve: |<e_1, (2, 2)>| + |<e_1, (0, 3)>| = 2; diversify: |<(2, 2), (0, 3)>| = 6.
    a = jnp.array([[[1.0], [1.0]], [[0.0], [1.0]]])
    b = jnp.array([[[2.0]], [[3.0]]])
    w = jnp.array([[1.0], [0.0]])
    assert float(lora.lora_orthogonality(a, b, w, strength=1.0)) == pytest.approx(8.0)
    assert float(lora.lora_orthogonality(a, b, w, strength=1.0, diversify=0.0)) == 2.0
    assert float(lora.lora_orthogonality(a, b, w, strength=1.0, preserve=0.0)) == 6.0
    assert float(lora.lora_orthogonality(a, b, w)) == pytest.approx(8e-3)  # reference ld


def test_zero_when_orthogonal_to_the_pretrained_rows_and_to_each_other():
    rng = np.random.default_rng(1)
    d_in, d_out, k, r, n = 12, 5, 3, 2, 4
    basis, _ = np.linalg.qr(rng.normal(size=(d_in, d_in)))
    w = basis[:, :k] @ rng.normal(size=(k, d_out))                  # output units in span(Q_k)
    a = np.stack([basis[:, k + i * r: k + (i + 1) * r] @ rng.normal(size=(r, r))
                  for i in range(n)])                                # disjoint orthogonal spans
    b = rng.normal(size=(n, r, d_out))
    scale = float(lora.lora_orthogonality(jnp.asarray(rng.normal(size=a.shape)), b, w))
    assert scale > 1e-2
    assert float(lora.lora_orthogonality(a, b, w)) == pytest.approx(0.0, abs=1e-6 * scale)
    # Orthogonal to W_0 but sharing a subspace: only the diversify term remains.
    shared = np.stack([a[0]] * n)
    assert float(lora.lora_orthogonality(shared, b, w, diversify=0.0)) < 1e-6 * scale
    assert float(lora.lora_orthogonality(shared, b, w, preserve=0.0)) > 1e-2 * scale


def test_single_lora_has_no_diversify_term_and_zero_b_gives_zero():
    a, b, w = _group(np.random.default_rng(2), 1, 6, 2, 5)
    assert float(lora.lora_orthogonality(a, b, w, preserve=0.0)) == 0.0
    assert float(lora.lora_orthogonality(a, b, w)) == pytest.approx(
        _numpy_pego([a], [b], [w]), rel=1e-5)
    a, _, w = _group(np.random.default_rng(3), 3, 6, 2, 5)
    zero_b = jnp.zeros((3, 2, 5))
    assert float(lora.lora_orthogonality(a, zero_b, w)) == 0.0  # LoRA init: B = 0
    grads = jax.grad(lora.lora_orthogonality, argnums=(0, 1))(jnp.asarray(a), zero_b, w)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_invariant_to_the_order_of_the_loras():
    lora_a, lora_b, pretrained = _setup(4)
    order = jnp.array([2, 0, 1])
    permuted_a = {**lora_a, "query": lora_a["query"][order]}
    permuted_b = {**lora_b, "query": lora_b["query"][order]}
    np.testing.assert_allclose(lora.lora_orthogonality(permuted_a, permuted_b, pretrained),
                               lora.lora_orthogonality(lora_a, lora_b, pretrained), rtol=1e-6)


def test_scaling():
    trees = _setup(5)
    lora_a, lora_b, pretrained = trees
    scaled_a = jax.tree.map(lambda x: 3.0 * x, lora_a)
    scaled_w = jax.tree.map(lambda x: 3.0 * x, pretrained)
    kept = lora.lora_orthogonality(*trees, strength=1.0, diversify=0.0)
    diverse = lora.lora_orthogonality(*trees, strength=1.0, preserve=0.0)
    # preserve is linear in each factor; diversify quadratic in the LoRA scale.
    np.testing.assert_allclose(lora.lora_orthogonality(scaled_a, lora_b, pretrained,
                                                       strength=1.0),
                               3.0 * kept + 9.0 * diverse, rtol=1e-5)
    np.testing.assert_allclose(lora.lora_orthogonality(lora_a, lora_b, scaled_w, strength=1.0),
                               3.0 * kept + diverse, rtol=1e-5)
    np.testing.assert_allclose(lora.lora_orthogonality(*trees, strength=2.0),
                               2.0 * (kept + diverse), rtol=1e-6)


def test_torch_layout_by_transposition():
    """Inputs given as PyTorch weights and transposed equal the reference on those weights."""
    rng = np.random.default_rng(6)
    w_torch = rng.normal(size=(5, 6))                  # [out, in]
    a_torch = rng.normal(size=(3, 2, 6))               # [N, r, in]
    b_torch = rng.normal(size=(3, 5, 2))               # [N, out, r]
    expected = 1e-3 * (sum(np.abs(w_torch @ (b @ a).T).sum() for a, b in zip(a_torch, b_torch))
                       + sum(np.abs((b_torch[i] @ a_torch[i]) @ (b_torch[j] @ a_torch[j]).T).sum()
                             for i in range(3) for j in range(i + 1, 3)))
    got = lora.lora_orthogonality(a_torch.transpose(0, 2, 1), b_torch.transpose(0, 2, 1),
                                  w_torch.T)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_gradient_against_finite_differences():
    lora_a, lora_b, pretrained = _setup(7)
    a, b, w = _as_lists(lora_a, lora_b, pretrained)
    hp = {"strength": 1.0, "preserve": 1.5, "diversify": 0.5}
    grads = jax.grad(lora.lora_orthogonality, argnums=(0, 1, 2))(lora_a, lora_b, pretrained,
                                                                  **hp)
    for index, name in enumerate(("query", "value")):
        def f_a(x, index=index):
            return _numpy_pego([x if i == index else a[i] for i in range(2)], b, w, **hp)

        def f_b(x, index=index):
            return _numpy_pego(a, [x if i == index else b[i] for i in range(2)], w, **hp)

        def f_w(x, index=index):
            return _numpy_pego(a, b, [x if i == index else w[i] for i in range(2)], **hp)

        for got, f, x in ((grads[0], f_a, a), (grads[1], f_b, b), (grads[2], f_w, w)):
            np.testing.assert_allclose(got[name], central_difference(f, x[index]),
                                       rtol=1e-4, atol=1e-3)


def test_jit_and_vmap_over_each_hyperparameter():
    trees = _setup(8)
    fn = jax.jit(lambda s, p, d: lora.lora_orthogonality(*trees, strength=s, preserve=p,
                                                         diversify=d))
    kept = lora.lora_orthogonality(*trees, strength=1.0, diversify=0.0)
    diverse = lora.lora_orthogonality(*trees, strength=1.0, preserve=0.0)
    values = jnp.array([0.0, 1e-3, 2.0])
    np.testing.assert_allclose(jax.vmap(lambda s: fn(s, 1.0, 1.0))(values),
                               values * (kept + diverse), rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda p: fn(1.0, p, 1.0))(values),
                               values * kept + diverse, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda d: fn(1.0, 1.0, d))(values),
                               kept + values * diverse, rtol=1e-5)
    grad_s = jax.grad(lambda s: fn(s, 1.0, 1.0))(0.5)
    np.testing.assert_allclose(grad_s, kept + diverse, rtol=1e-5)


def test_extreme_and_bfloat16_inputs():
    trees = _setup(9)
    big = [jax.tree.map(lambda x: 1e4 * x, t) for t in trees]
    value = lora.lora_orthogonality(*big)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(
        jax.grad(lora.lora_orthogonality, argnums=(0, 1))(*big)))
    low = [jax.tree.map(lambda x: x.astype(jnp.bfloat16), t) for t in trees]
    value = lora.lora_orthogonality(*low)
    assert value.dtype == jnp.float32
    rounded = [jax.tree.map(lambda x: x.astype(jnp.float32), t) for t in low]
    np.testing.assert_allclose(value, lora.lora_orthogonality(*rounded), rtol=1e-5)
    np.testing.assert_allclose(value, lora.lora_orthogonality(*trees), rtol=3e-2)
    grads = jax.grad(lora.lora_orthogonality, argnums=(0, 1))(*low)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bad_inputs_name_the_argument():
    lora_a, lora_b, pretrained = _setup()
    with pytest.raises(ValueError, match="lora_b"):
        lora.lora_orthogonality(lora_a, {"query": lora_b["query"]}, pretrained)
    with pytest.raises(ValueError, match="pretrained"):
        lora.lora_orthogonality(lora_a, lora_b, [pretrained["query"], pretrained["value"]])
    with pytest.raises(ValueError, match="lora_b"):  # rank mismatch
        lora.lora_orthogonality(lora_a, {**lora_b, "query": lora_b["query"][:, :1]}, pretrained)
    with pytest.raises(ValueError, match="lora_b"):  # group size mismatch
        lora.lora_orthogonality(lora_a, {**lora_b, "query": lora_b["query"][:2]}, pretrained)
    with pytest.raises(ValueError, match="pretrained"):  # torch layout [out, in] by mistake
        lora.lora_orthogonality(lora_a, lora_b, {**pretrained, "query": pretrained["query"].T})
    with pytest.raises(ValueError, match="lora_a"):
        lora.lora_orthogonality(lora_a["query"][0], lora_b["query"][0], pretrained["query"])
    with pytest.raises(TypeError, match="lora_a"):
        lora.lora_orthogonality({**lora_a, "value": jnp.ones((2, 6, 3), jnp.int32)}, lora_b,
                                pretrained)
    with pytest.raises(ValueError, match="strength"):
        lora.lora_orthogonality(lora_a, lora_b, pretrained, strength=jnp.ones(2))
