"""Weight penalties against NumPy float64 re-implementations and their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numeric import central_difference

from jaxreg.regularizers import weights as w


def _params(key=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(key), 4)
    return {"conv": {"kernel": jax.random.normal(ks[0], (3, 3, 2, 4), dtype),
                     "bias": jax.random.normal(ks[1], (4,), dtype)},
            "dense": {"kernel": jax.random.normal(ks[2], (6, 3), dtype),
                      "bias": jax.random.normal(ks[3], (3,), dtype)}}


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _kernels(params):
    p = _np(params)
    return [p["conv"]["kernel"], p["dense"]["kernel"]]


def test_l1_l2_group_lasso_match_numpy_on_kernels_only():
    params = _params()
    ks = _kernels(params)
    np.testing.assert_allclose(w.l1(params, strength=0.3), 0.3 * sum(np.abs(k).sum() for k in ks),
                               rtol=1e-6)
    np.testing.assert_allclose(w.l2(params, strength=0.3),
                               0.15 * sum((k**2).sum() for k in ks), rtol=1e-6)
    groups = sum(np.sqrt((k**2).reshape(-1, k.shape[-1]).sum(0)).sum() for k in ks)
    np.testing.assert_allclose(w.group_lasso(params, strength=0.3), 0.3 * groups, rtol=1e-6)
    rows = sum(np.sqrt((k**2).sum(-1)).sum() for k in [ks[1]])
    only_dense = {"conv": {"kernel": False, "bias": False}, "dense": {"kernel": True,
                                                                      "bias": False}}
    np.testing.assert_allclose(w.group_lasso(params, mask=only_dense, axis=0), rows, rtol=1e-6)


def test_mask_selects_biases_only_when_asked():
    params = _params()
    everything = w.l2(params, mask=lambda p: jax.tree.map(lambda _: True, p))
    total = 0.5 * sum((x**2).sum() for x in jax.tree.leaves(_np(params)))
    np.testing.assert_allclose(everything, total, rtol=1e-6)
    grad = jax.grad(w.l1)(params)
    assert not np.any(grad["conv"]["bias"]) and not np.any(grad["dense"]["bias"])
    np.testing.assert_array_equal(grad["dense"]["kernel"], np.sign(params["dense"]["kernel"]))


def test_l2_gradient_is_strength_times_weights():
    params = _params()
    grad = jax.grad(lambda p: w.l2(p, strength=0.7))(params)
    np.testing.assert_allclose(grad["conv"]["kernel"], 0.7 * params["conv"]["kernel"], rtol=1e-6)


def test_group_lasso_gradient_is_finite_at_a_zero_group():
    params = {"k": jnp.zeros((4, 3)).at[:, 0].set(1.0)}
    grad = jax.grad(w.group_lasso)(params)["k"]
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[:, 0], 0.5)  # d||v||/dv = v / ||v|| for v = (1, 1, 1, 1)
    np.testing.assert_array_equal(grad[:, 1:], 0.0)


def _np_conv_orthogonality(k, stride):
    """``||conv(K, K, padding P, stride S) - I_r0||^2 - max(0, M - S^2 C)`` by explicit loops."""
    kh, kw, c, m = k.shape
    ph, pw = ((kh - 1) // stride) * stride, ((kw - 1) // stride) * stride
    filters = np.zeros((m, kh + 2 * ph, kw + 2 * pw, c))
    filters[:, ph:ph + kh, pw:pw + kw, :] = np.moveaxis(k, -1, 0)
    oh, ow = (2 * ph) // stride + 1, (2 * pw) // stride + 1
    out = np.zeros((m, oh, ow, m))
    for i in range(m):
        for a in range(oh):
            for b in range(ow):
                patch = filters[i, a * stride:a * stride + kh, b * stride:b * stride + kw, :]
                out[i, a, b, :] = np.einsum("uvc,uvcj->j", patch, k)
    target = np.zeros_like(out)
    target[:, oh // 2, ow // 2, :] = np.eye(m)
    return ((out - target)**2).sum() - max(0, m - stride**2 * c)


@pytest.mark.parametrize("shape,stride", [((3, 3, 2, 4), 1), ((3, 3, 2, 8), 2),
                                          ((5, 3, 3, 2), 1), ((3, 5, 4, 4), 2)])
def test_conv_orthogonality_matches_loops(shape, stride):
    kernel = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape) / 3
    value = w.orthogonality({"k": kernel}, stride=stride)
    np.testing.assert_allclose(value, _np_conv_orthogonality(np.asarray(kernel, np.float64),
                                                             stride), rtol=1e-5, atol=1e-5)


def test_dense_orthogonality_uses_the_smaller_gram():
    m = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 3)), np.float64)
    for mat in (m, m.T):
        gram = mat.T @ mat if mat.shape[0] >= mat.shape[1] else mat @ mat.T
        np.testing.assert_allclose(w.orthogonality({"k": jnp.asarray(mat, jnp.float32)}),
                                   ((gram - np.eye(3))**2).sum(), rtol=1e-5)


def test_orthogonal_kernels_have_zero_penalty():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 6)))
    dense = {"k": jnp.asarray(q[:, :4], jnp.float32)}  # orthonormal columns
    assert abs(float(w.orthogonality(dense))) < 1e-5
    centre = np.zeros((3, 3, 4, 4))
    centre[1, 1] = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0]
    assert abs(float(w.orthogonality({"k": jnp.asarray(centre, jnp.float32)}))) < 1e-5
    # Invertible downsampling (stride 2, M = 4C): each output channel reads one input pixel
    # of the 2x2 block; as a 3x3 kernel it is an orthogonal convolution (RO case, delta 0).
    shuffle = np.zeros((3, 3, 2, 8))
    for u in range(2):
        for v in range(2):
            for c in range(2):
                shuffle[u, v, c, 4 * c + 2 * u + v] = 1.0
    assert abs(float(w.orthogonality({"k": jnp.asarray(shuffle, jnp.float32)}, stride=2))) < 1e-5
    assert float(w.orthogonality({"k": jnp.asarray(2 * shuffle, jnp.float32)}, stride=2)) > 1.0


def test_conv_orthogonality_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        kernel = jax.random.normal(jax.random.PRNGKey(4), (3, 3, 2, 3), jnp.float64) / 3
        check_grads(lambda k: w.orthogonality({"k": k}, stride=2), (kernel,), order=2,
                    modes=("rev",))


def test_spectral_norm_matches_svd_and_its_gradient_is_u_v():
    params = _params(5)
    ks = _kernels(params)
    sigmas = [np.linalg.svd(k.reshape(-1, k.shape[-1]), compute_uv=False)[0] for k in ks]
    np.testing.assert_allclose(w.spectral_norm(params, strength=2.0, num_iterations=100),
                               sum(s**2 for s in sigmas), rtol=1e-4)
    with jax.enable_x64(True):
        m = jax.random.normal(jax.random.PRNGKey(6), (5, 4), jnp.float64)

        def f(x):
            return w.spectral_norm({"k": x}, num_iterations=200)

        np.testing.assert_allclose(jax.grad(f)(m), central_difference(f, m), rtol=1e-5,
                                   atol=1e-7)


def test_l2_to_anchor_and_ewc_match_numpy():
    params, anchor, fisher = _params(1), _params(2), jax.tree.map(jnp.abs, _params(3))
    p, a, f = _kernels(params), _kernels(anchor), _kernels(fisher)
    np.testing.assert_allclose(w.l2_to_anchor(params, anchor, strength=0.4),
                               0.2 * sum(((x - y)**2).sum() for x, y in zip(p, a)), rtol=1e-6)
    np.testing.assert_allclose(w.ewc(params, anchor, fisher, strength=0.4),
                               0.2 * sum((z * (x - y)**2).sum() for x, y, z in zip(p, a, f)),
                               rtol=1e-6)
    ones = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(w.ewc(params, anchor, ones), w.l2_to_anchor(params, anchor),
                               rtol=1e-6)
    assert float(w.l2_to_anchor(params, params)) == 0.0


def _logistic(params, x):
    return x @ params["kernel"] + params["bias"]


def test_diagonal_fisher_matches_the_softmax_regression_formula():
    """For logits ``x W + b``, d log p_y / dW = x (e_y - p)^T: the empirical Fisher is the mean
    of its squares; the expectation over y ~ p of it is the true Fisher."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3))
    params = {"kernel": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "bias": jnp.asarray(rng.normal(size=4), jnp.float32)}
    y = rng.integers(0, 4, 6)
    logits = x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    residual = np.eye(4)[y] - p
    empirical = w.diagonal_fisher(_logistic, params, jnp.asarray(x, jnp.float32), y)
    np.testing.assert_allclose(empirical["kernel"],
                               np.mean(np.einsum("bi,bk->bik", x, residual)**2, 0), rtol=1e-5)
    np.testing.assert_allclose(empirical["bias"], np.mean(residual**2, 0), rtol=1e-5)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    sampled = jax.vmap(lambda k: w.diagonal_fisher(_logistic, params, jnp.asarray(
        x, jnp.float32), key=k)["bias"])(keys)
    true_bias = np.mean(np.einsum("by,byj->bj", p, (np.eye(4)[None, :, :] - p[:, None, :])**2),
                        0)
    sigma = np.asarray(sampled).std(0) / np.sqrt(len(keys))
    assert np.all(np.abs(np.asarray(sampled).mean(0) - true_bias) < 5 * sigma + 1e-6)


def test_diagonal_fisher_needs_labels_or_key():
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    with pytest.raises(ValueError, match="`labels`"):
        w.diagonal_fisher(_logistic, params, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match="`labels`"):
        w.diagonal_fisher(_logistic, params, jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        w.diagonal_fisher(_logistic, params, jnp.ones((2, 3)), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("bad", [2, -1, 1000])
def test_diagonal_fisher_follows_the_label_rule(bad):
    """Concrete labels outside [0, K) raise naming them; traced ones give NaN, never the
    finite Fisher of a clamped or wrapped label."""
    params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    x, labels = jnp.ones((2, 3)), jnp.asarray([0, bad])
    with pytest.raises(ValueError, match=r"`labels` must hold class indices in \[0, 2\)"):
        w.diagonal_fisher(_logistic, params, x, labels)
    traced = jax.jit(lambda y: w.diagonal_fisher(_logistic, params, x, y))(labels)
    assert all(np.all(np.isnan(leaf)) for leaf in jax.tree.leaves(traced))
    fine = jax.jit(lambda y: w.diagonal_fisher(_logistic, params, x, y))(jnp.asarray([0, 1]))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(fine))


def test_orthogonality_rejects_bad_kernels_and_strides():
    with pytest.raises(ValueError, match="odd"):
        w.orthogonality({"k": jnp.ones((2, 2, 3, 3))})
    with pytest.raises(ValueError, match="`stride`"):
        w.orthogonality({"k": jnp.ones((3, 3))}, stride=0)
