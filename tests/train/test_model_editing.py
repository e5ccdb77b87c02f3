"""Model editing: DARE against its definition (exact survivors, unbiasedness, drop fraction),
DAREx-q's q search against a NumPy brute force and a closed-form optimum, task arithmetic and
aTLAS coefficients learned with make_step against a least-squares solution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxreg._validate import kernels_only
from jaxreg.train import model_editing as me
from jaxreg.train.state import init_state
from jaxreg.train.step import make_step


def _pair(seed=0, dtype=jnp.float32, scale=1.0):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    base = {"dense": {"kernel": jax.random.normal(k[0], (6, 5)),
                      "bias": jax.random.normal(k[1], (5,))},
            "out": {"kernel": jax.random.normal(k[2], (5, 3))}}
    deltas = {"dense": {"kernel": jax.random.normal(k[3], (6, 5)),
                        "bias": jax.random.normal(k[4], (5,))},
              "out": {"kernel": jax.random.normal(k[5], (5, 3))}}
    finetuned = jax.tree.map(lambda b, d: b + scale * d, base, deltas)
    cast = lambda t: jax.tree.map(lambda x: x.astype(dtype), t)  # noqa: E731
    return cast(finetuned), cast(base)


def _wide_pair(seed, d=16, h=64, o=4, scale=0.3, shift=0.5):
    """A wider MLP's parameters (enough deltas for DARE's averaging) and fine-tuned ones whose
    deltas have a non-zero mean (``shift``), so that pruning biases positive activations."""
    k = jax.random.split(jax.random.PRNGKey(seed), 2)

    def draw(key, mean):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"dense": {"kernel": (jax.random.normal(k1, (d, h)) + mean) / np.sqrt(d),
                          "bias": 0.1 * jax.random.normal(k2, (h,))},
                "out": {"kernel": (jax.random.normal(k3, (h, o)) + mean) / np.sqrt(h)}}

    base = draw(k[0], 0.0)
    return jax.tree.map(lambda b, e: b + scale * e, base, draw(k[1], shift)), base


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _mlp(params, x):
    hidden = jax.nn.sigmoid(x @ params["dense"]["kernel"] + params["dense"]["bias"])
    return hidden @ params["out"]["kernel"]


def _mlp_np(params, x):
    z = x @ params["dense"]["kernel"] + params["dense"]["bias"]
    hidden = 1 / (1 + np.exp(-z))
    return hidden @ params["out"]["kernel"]


# ----------------------------------------------------------------------------- task vectors


def test_task_vector_is_the_difference():
    finetuned, base = _pair()
    tau = me.task_vector(finetuned, base)
    expected = jax.tree.map(lambda f, b: f - b, _np(finetuned), _np(base))
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6),
                 tau, expected)


# ----------------------------------------------------------------------------- DARE


@pytest.mark.parametrize("p", [0.3, 0.9])
def test_dare_drops_to_base_and_rescales_survivors_exactly(p):
    finetuned, base = _pair()
    out = _np(me.dare(jax.random.PRNGKey(1), finetuned, base, drop_rate=p))
    f, b = _np(finetuned), _np(base)
    for o, fi, bi in zip(jax.tree.leaves(out), jax.tree.leaves(f), jax.tree.leaves(b),
                         strict=True):
        dropped = o == bi
        survivor = bi + (fi - bi) / (1 - p)
        np.testing.assert_allclose(o[~dropped], survivor[~dropped], rtol=1e-5, atol=1e-5)
        assert dropped.any() and (~dropped).any()


def test_dare_without_rescale_keeps_finetuned_survivors():
    finetuned, base = _pair()
    out = me.dare(jax.random.PRNGKey(2), finetuned, base, drop_rate=0.5, rescale=False)
    for o, f, b in zip(jax.tree.leaves(out), jax.tree.leaves(finetuned), jax.tree.leaves(base),
                       strict=True):
        assert bool(jnp.all((o == f) | (o == b)))


def test_dare_with_q_rescales_by_one_over_q():
    finetuned, base = _pair()
    key = jax.random.PRNGKey(3)
    out = _np(me.dare(key, finetuned, base, drop_rate=0.8, q=0.5))
    kept = _np(me.dare(key, finetuned, base, drop_rate=0.8, rescale=False))  # same masks
    b = _np(base)
    jax.tree.map(lambda o, k, bi: np.testing.assert_allclose(o - bi, (k - bi) / 0.5,
                                                             rtol=1e-5, atol=1e-5), out, kept, b)


def test_dare_preserves_the_expectation():
    finetuned, base = _pair()
    p, n = 0.5, 4000
    keys = jax.random.split(jax.random.PRNGKey(4), n)
    draws = jax.vmap(lambda k: me.dare(k, finetuned, base, drop_rate=p))(keys)
    for d, f, b in zip(jax.tree.leaves(draws), jax.tree.leaves(_np(finetuned)),
                       jax.tree.leaves(_np(base)), strict=True):
        mean = np.asarray(d, np.float64).mean(axis=0)
        # each draw is b + delta * Bernoulli(1-p) / (1-p): std |delta| sqrt(p / (1-p))
        sigma = np.abs(f - b) * np.sqrt(p / (1 - p)) / np.sqrt(n)
        assert np.all(np.abs(mean - f) <= 5 * sigma + 1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_dare_drop_fraction(p):
    base = {"w": jnp.zeros((300, 400))}
    finetuned = {"w": jnp.ones((300, 400))}
    out = me.dare(jax.random.PRNGKey(5), finetuned, base, drop_rate=p)
    fraction = float(jnp.mean(out["w"] == 0.0))
    n = 300 * 400
    assert abs(fraction - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_dare_limits_are_identity_and_base():
    finetuned, base = _pair()
    key = jax.random.PRNGKey(6)
    same = me.dare(key, finetuned, base, drop_rate=0.0)
    jax.tree.map(lambda a, f: np.testing.assert_array_equal(a, f), same, finetuned)
    gone = me.dare(key, finetuned, base, drop_rate=1.0)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), gone, base)


def test_dare_is_deterministic_per_key():
    finetuned, base = _pair()
    a = me.dare(jax.random.PRNGKey(7), finetuned, base)
    b = me.dare(jax.random.PRNGKey(7), finetuned, base)
    c = me.dare(jax.random.PRNGKey(8), finetuned, base)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_dare_jit_and_vmap_over_drop_rate():
    finetuned, base = _pair()
    key = jax.random.PRNGKey(9)
    rates = jnp.array([0.0, 0.3, 0.9])
    fn = jax.jit(jax.vmap(lambda p: me.dare(key, finetuned, base, drop_rate=p)))
    batched = fn(rates)
    for i, p in enumerate([0.0, 0.3, 0.9]):
        single = me.dare(key, finetuned, base, drop_rate=p)
        jax.tree.map(lambda x, y, i=i: np.testing.assert_allclose(x[i], y, rtol=1e-6),
                     batched, single)


def test_dare_gradients():
    finetuned, base = _pair()
    key, p = jax.random.PRNGKey(10), 0.6
    weights = jax.tree.map(lambda x: jnp.linspace(-1.0, 1.0, x.size).reshape(x.shape),
                           finetuned)

    def total(f, rate):
        out = me.dare(key, f, base, drop_rate=rate)
        return sum(jnp.sum(w * o) for w, o in zip(jax.tree.leaves(weights),
                                                     jax.tree.leaves(out), strict=True))

    g_f, g_p = jax.grad(total, argnums=(0, 1))(finetuned, p)
    kept = me.dare(key, finetuned, base, drop_rate=p, rescale=False)
    expected_p = 0.0
    for g, k, f, b, w in zip(jax.tree.leaves(g_f), jax.tree.leaves(_np(kept)),
                             jax.tree.leaves(_np(finetuned)), jax.tree.leaves(_np(base)),
                             jax.tree.leaves(_np(weights)), strict=True):
        survived = k != b
        # d/d theta_F of b + keep (f - b) / (1 - p) is keep / (1 - p)
        np.testing.assert_allclose(g, w * survived / (1 - p), rtol=1e-5, atol=1e-6)
        expected_p += np.sum(w * survived * (f - b)) / (1 - p) ** 2
    np.testing.assert_allclose(float(g_p), expected_p, rtol=1e-4)


def test_dare_mask_kernels_only_and_head_exclusion():
    finetuned, base = _pair()
    key = jax.random.PRNGKey(11)
    out = me.dare(key, finetuned, base, drop_rate=0.9, mask=kernels_only)
    np.testing.assert_array_equal(out["dense"]["bias"], finetuned["dense"]["bias"])
    assert not np.array_equal(out["dense"]["kernel"], finetuned["dense"]["kernel"])
    no_head = {"dense": {"kernel": True, "bias": True}, "out": {"kernel": False}}
    out = me.dare(key, finetuned, base, drop_rate=0.9, mask=no_head)
    np.testing.assert_array_equal(out["out"]["kernel"], finetuned["out"]["kernel"])


def test_dare_bfloat16_and_extreme_deltas():
    finetuned, base = _pair(dtype=jnp.bfloat16)
    out = me.dare(jax.random.PRNGKey(12), finetuned, base, drop_rate=0.99)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))
    finetuned, base = _pair(scale=1e4)
    out = me.dare(jax.random.PRNGKey(12), finetuned, base, drop_rate=0.999)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out))


def test_malformed_trees_raise_naming_the_argument():
    finetuned, base = _pair()
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="base"):
        me.dare(key, finetuned, {"dense": base["dense"]})
    with pytest.raises(ValueError, match="base"):
        me.dare(key, finetuned, {**base, "out": {"kernel": jnp.zeros((5, 4))}})
    with pytest.raises(TypeError, match="finetuned"):
        me.dare(key, jax.tree.map(lambda x: x.astype(jnp.int32), finetuned), base)
    with pytest.raises(ValueError, match="mask"):
        me.dare(key, finetuned, base, mask={"dense": True})
    with pytest.raises(ValueError, match="base"):
        me.task_vector(finetuned, {"dense": base["dense"]})
    tau = me.task_vector(finetuned, base)
    with pytest.raises(ValueError, match=r"task_vectors\[1\]"):
        me.merge(base, [tau, {"dense": tau["dense"]}], jnp.ones(2))
    with pytest.raises(TypeError, match="task_vectors"):
        me.merge(base, tau, jnp.ones(1))
    with pytest.raises(ValueError, match="coefficients"):
        me.merge(base, [tau, tau], jnp.ones(3))
    with pytest.raises(ValueError, match="coefficients"):
        me.apply_coefficients(base, [tau, tau], me.init_coefficients(base, 3))


# ----------------------------------------------------------------------------- DAREx-q


def _bruteforce_q(finetuned, base, kept, x, low, high, num=2001):
    """The averaged output change of the sigmoid MLP on a dense grid of q, float64 NumPy."""
    f, b = _np(finetuned), _np(base)
    x = np.asarray(x, np.float64)
    reference = _mlp_np(f, x)
    qs = np.linspace(low, high, num)
    inverse = (1 / qs)[:, None, None]
    values = np.zeros(num)
    for k in kept:
        d = jax.tree.map(lambda ki, bi: ki - bi, _np(k), b)  # the surviving deltas
        z = (x @ b["dense"]["kernel"] + b["dense"]["bias"])[None] + inverse * (
            x @ d["dense"]["kernel"] + d["dense"]["bias"])[None]
        out_kernel = b["out"]["kernel"][None] + inverse * d["out"]["kernel"][None]
        outputs = (1 / (1 + np.exp(-z))) @ out_kernel
        values += np.mean(np.abs(reference[None] - outputs), axis=(1, 2)) / len(kept)
    return qs, values


def test_darex_q_search_matches_bruteforce():
    finetuned, base = _wide_pair(0)
    x = jax.random.uniform(jax.random.PRNGKey(20), (32, 16))
    key, p, draws = jax.random.PRNGKey(21), 0.9, 3
    q, value = jax.jit(lambda k: me.darex_q_search(k, _mlp, finetuned, base, x, drop_rate=p,
                                                   num_draws=draws))(key)
    kept = [me.dare(k, finetuned, base, drop_rate=p, rescale=False)
            for k in jax.random.split(key, draws)]
    qs, values = _bruteforce_q(finetuned, base, kept, x, 1 - p, 1.0)
    best = np.argmin(values)
    assert 0 < best < len(qs) - 1  # an interior optimum, so the test is informative
    _, at_q = _bruteforce_q(finetuned, base, kept, x, float(q), float(q), num=1)
    np.testing.assert_allclose(float(value), at_q[0], rtol=1e-4)
    assert at_q[0] <= values[best] * (1 + 1e-4)
    assert abs(float(q) - qs[best]) < 5e-3
    # DARE's own factor q = 1 - p is worse than the searched one
    assert values[best] < values[0]


def test_darex_q_search_linear_model_weighted_median():
    """For f = x W and one draw, mean |x delta - (x kept) / q| is minimised at 1/q equal to
    the weighted median of the ratios a_i / b_i with weights |b_i|."""
    k = jax.random.split(jax.random.PRNGKey(30), 3)
    base = {"w": jax.random.normal(k[0], (200, 4))}
    finetuned = {"w": base["w"] + 0.1 * jax.random.normal(k[1], (200, 4)) + 0.1}
    x = jax.random.uniform(k[2], (16, 200))
    linear = lambda params, inputs: inputs @ params["w"]  # noqa: E731
    key, p = jax.random.PRNGKey(31), 0.8
    q, _ = jax.jit(lambda k: me.darex_q_search(k, linear, finetuned, base, x, drop_rate=p,
                                               num_draws=1))(key)
    kept = me.dare(jax.random.split(key, 1)[0], finetuned, base, drop_rate=p, rescale=False)
    xs = np.asarray(x, np.float64)
    a = (xs @ (_np(finetuned)["w"] - _np(base)["w"])).ravel()
    b = (xs @ (_np(kept)["w"] - _np(base)["w"])).ravel()
    ratios, weights = a / b, np.abs(b)
    order = np.argsort(ratios)
    cumulative = np.cumsum(weights[order])
    s_star = ratios[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    q_star = 1 / s_star
    assert 1 - p < q_star < 1.0
    objective = lambda q: np.mean(np.abs(a - b / q))  # noqa: E731
    # float32 outputs resolve the (piecewise-linear, flat-bottomed) objective to ~1e-6
    assert objective(float(q)) <= objective(q_star) * (1 + 1e-5)
    np.testing.assert_allclose(float(q), q_star, rtol=1e-3)


def test_darex_q_search_jit_and_vmap_over_drop_rate():
    finetuned, base = _wide_pair(2)
    x = jax.random.uniform(jax.random.PRNGKey(40), (16, 16))
    key = jax.random.PRNGKey(41)
    search = lambda p: me.darex_q_search(key, _mlp, finetuned, base, x, drop_rate=p,  # noqa
                                         num_grid=8, num_refine=10)
    rates = jnp.array([0.5, 0.9])
    qs, values = jax.jit(jax.vmap(search))(rates)
    single = jax.jit(search)
    for i, p in enumerate([0.5, 0.9]):
        q, v = single(jnp.float32(p))
        np.testing.assert_allclose(qs[i], q, rtol=1e-5)
        np.testing.assert_allclose(values[i], v, rtol=1e-5)
        assert 1 - p - 1e-6 <= float(q) <= 1.0 + 1e-6
    assert bool(jnp.all(jnp.isfinite(values)))


def test_output_change_value():
    finetuned, base = _pair()
    x = jax.random.normal(jax.random.PRNGKey(42), (4, 6))
    value = me.output_change(_mlp, finetuned, base, x)
    xs = np.asarray(x, np.float64)
    expected = np.mean(np.abs(_mlp_np(_np(finetuned), xs) - _mlp_np(_np(base), xs)))
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


# ----------------------------------------------------------------------------- merging / aTLAS


def test_merge_one_task_with_coefficient_one_is_finetuned():
    finetuned, base = _pair()
    other, _ = _pair(seed=5)
    taus = [me.task_vector(finetuned, base), me.task_vector(other, base)]
    merged = me.merge(base, taus, jnp.array([1.0, 0.0]))
    jax.tree.map(lambda m, f: np.testing.assert_allclose(m, f, rtol=1e-6, atol=1e-6),
                 merged, finetuned)
    coefficients = jax.tree.map(lambda c: c.at[0].set(1.0), me.init_coefficients(base, 2))
    merged = me.apply_coefficients(base, taus, coefficients)
    jax.tree.map(lambda m, f: np.testing.assert_allclose(m, f, rtol=1e-6, atol=1e-6),
                 merged, finetuned)
    # zero coefficients (the aTLAS initialisation) give the pre-trained model
    merged = me.apply_coefficients(base, taus, me.init_coefficients(base, 2))
    jax.tree.map(lambda m, b: np.testing.assert_array_equal(m, b), merged, base)


def test_apply_coefficients_value_gradient_and_vmap():
    finetuned, base = _pair()
    other, _ = _pair(seed=5)
    taus = [me.task_vector(finetuned, base), me.task_vector(other, base)]
    coefficients = {"dense": {"kernel": jnp.array([0.3, -0.2]), "bias": jnp.array([1.0, 2.0])},
                    "out": {"kernel": jnp.array([-0.5, 0.7])}}
    merged = me.apply_coefficients(base, taus, coefficients)
    t0, t1 = _np(taus[0]), _np(taus[1])
    expected = jax.tree.map(lambda b, c, x, y: b + c[0] * x + c[1] * y, _np(base),
                            _np(coefficients), t0, t1)
    jax.tree.map(lambda m, e: np.testing.assert_allclose(m, e, rtol=1e-5, atol=1e-6),
                 merged, expected)
    # d/d lambda_t^(j) of sum(theta^(j)) = sum(tau_t^(j))
    grads = jax.grad(lambda c: sum(jnp.sum(x) for x in jax.tree.leaves(
        me.apply_coefficients(base, taus, c))))(coefficients)
    expected = jax.tree.map(lambda x, y: np.array([x.sum(), y.sum()]), t0, t1)
    jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5), grads, expected)
    # jit + vmap over the (isotropic) coefficients of merge
    lams = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    batched = jax.jit(jax.vmap(lambda lam: me.merge(base, taus, lam)))(lams)
    single = me.merge(base, taus, lams[1])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[1], y, rtol=1e-6), batched, single)
    # bfloat16 parameters stay bfloat16
    low = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    low_taus = [jax.tree.map(lambda x: x.astype(jnp.bfloat16), t) for t in taus]
    out = me.apply_coefficients(low, low_taus, coefficients)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


def _regression_tasks():
    """Two linear-regression tasks y = x1 k1 + x2 k2 + c (two outputs), each solved by its own
    fine-tuned parameters (base + tau_t)."""
    keys = jax.random.split(jax.random.PRNGKey(50), 10)
    base = {"k1": jax.random.normal(keys[0], (3, 2)), "k2": jax.random.normal(keys[1], (2, 2)),
            "c": jax.random.normal(keys[2], (2,))}
    taus = [jax.tree.map(lambda x, k: jax.random.normal(k, x.shape), base,
                         {"k1": keys[3 + 3 * t], "k2": keys[4 + 3 * t], "c": keys[5 + 3 * t]})
            for t in range(2)]
    xs = [jax.random.normal(keys[9], (2, 40, 5))[t] for t in range(2)]
    ys = [_linear(jax.tree.map(jnp.add, base, tau), x) for tau, x in zip(taus, xs, strict=True)]
    return base, taus, {"x": jnp.stack(xs), "y": jnp.stack(ys)}


def _linear(params, x):
    return x[:, :3] @ params["k1"] + x[:, 3:] @ params["k2"] + params["c"]


def _multitask_loss(params, batch):
    predictions = jax.vmap(lambda x: _linear(params, x))(batch["x"])
    return jnp.sum(jnp.mean((predictions - batch["y"]) ** 2, axis=(1, 2)))


def _closed_form(base, taus, batch):
    """The loss is quadratic in the 6 coefficients (3 tensors x 2 tasks): least squares."""
    names = ["c", "k1", "k2"]  # the flattening order of the coefficient tree
    rows, targets = [], []
    for x, y in zip(np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64),
                    strict=True):
        n = y.size  # the loss averages over examples and outputs
        zero = {k: np.zeros_like(v) for k, v in _np(base).items()}
        residual = y - np.asarray(_linear(_np(base), x))
        columns = []
        for name in names:
            for tau in taus:
                only = {**zero, name: _np(tau)[name]}
                columns.append(np.asarray(_linear(only, x)).ravel())
        rows.append(np.stack(columns, axis=1) / np.sqrt(n))
        targets.append(residual.ravel() / np.sqrt(n))
    design, target = np.concatenate(rows), np.concatenate(targets)
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    loss = float(np.sum((design @ solution - target) ** 2))
    return {name: solution[2 * i:2 * i + 2] for i, name in enumerate(names)}, loss


def test_learned_anisotropic_coefficients_reach_the_least_squares_optimum():
    base, taus, batch = _regression_tasks()
    optimum, best_loss = _closed_form(base, taus, batch)
    optimizer = optax.adam(0.05)
    # make_step with the coefficients as the trainable parameters
    objective = me.coefficient_objective(_multitask_loss, base, taus)
    step = jax.jit(make_step(objective, optimizer))
    state = init_state(me.init_coefficients(base, 2), optimizer, key=jax.random.PRNGKey(0))
    first = None
    for _ in range(1500):
        state, metrics = step(state, batch)
        first = metrics["loss"] if first is None else first
    learned = state.params
    for name, value in optimum.items():
        np.testing.assert_allclose(learned[name], value, atol=2e-3)
    final = float(_multitask_loss(me.apply_coefficients(base, taus, learned), batch))
    assert final < float(first)
    np.testing.assert_allclose(final, best_loss, rtol=1e-4)
    # the scan-based helper runs the same steps
    coefficients, losses = me.learn_coefficients(
        jax.random.PRNGKey(0), _multitask_loss, base, taus, batch, optimizer=optimizer,
        num_steps=1500)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), coefficients, learned)
    assert losses.shape == (1500,) and float(losses[-1]) < float(losses[0])
    # the isotropic (one scalar per task) optimum is worse than the anisotropic one here
    iso = jax.jit(lambda lam: _multitask_loss(me.merge(base, taus, lam), batch))
    grid = np.linspace(-1.0, 2.0, 61)
    iso_best = min(float(iso(jnp.array([a, b]))) for a in grid for b in grid)
    assert best_loss < iso_best
