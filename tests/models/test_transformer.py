import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxreg.models.transformer import (
    LOGICAL_AXIS_NAMES,
    TransformerConfig,
    flops_per_token,
    parameter_count,
    rotary,
    transformer,
)

SMALL = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, max_length=16)
is_spec = lambda x: isinstance(x, PartitionSpec)


def _model(**kw):
    return transformer(TransformerConfig(**{**SMALL, **kw}))


def _tokens(shape=(2, 16), seed=0, vocab=64):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, vocab)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_causal(positions):
    model = _model(positions=positions)
    params = model.init(jax.random.PRNGKey(0))
    tokens = _tokens()
    changed = tokens.at[:, 9:].set((tokens[:, 9:] + 7) % 64)
    a, b = model.apply(params, tokens), model.apply(params, changed)
    np.testing.assert_allclose(a[:, :9], b[:, :9], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 9:], b[:, 9:])


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    yield from _equations(getattr(sub, "jaxpr", sub))


def test_shapes_dtypes_and_bfloat16_compute():
    f32, bf16 = _model(), _model(dtype=jnp.bfloat16)
    assert bf16.config.dtype == jnp.dtype("bfloat16") and _model(dtype="bfloat16").config == \
        bf16.config
    params = f32.init(jax.random.PRNGKey(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert all(leaf.dtype == jnp.float32
               for leaf in jax.tree.leaves(bf16.init(jax.random.PRNGKey(0))))
    tokens = _tokens()
    logits = f32.apply(params, tokens)
    low = bf16.apply(params, tokens)  # the same float32 master weights
    assert logits.shape == low.shape == (2, 16, 64)
    assert logits.dtype == low.dtype == jnp.float32
    # bfloat16 has an 8-bit mantissa (relative rounding 2^-9 ~ 0.2%) and the logits pass
    # through ~10 bfloat16 matmuls: a relative error of ~0.5% is measured; 3% is the bound,
    # far below what a wrong weight or a missing layer would give.
    centred = logits - logits.mean(-1, keepdims=True)
    error = float(jnp.linalg.norm(low - logits) / jnp.linalg.norm(centred))
    assert 0 < error < 0.03, error
    # The matmuls run in bfloat16, the softmax (the only `exp`) in float32.
    equations = list(_equations(jax.make_jaxpr(bf16.apply)(params, tokens).jaxpr))
    dots = [e for e in equations if e.primitive.name == "dot_general"]
    exps = [e for e in equations if e.primitive.name == "exp"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    assert len(exps) == SMALL["num_layers"]
    assert all(e.invars[0].aval.dtype == jnp.float32 for e in exps)


EXPECTED_AXES = {  # the last key of a parameter's path -> its logical axis names
    "embedding": ("vocab", "embed"), "position": ("length", "embed"),
    "unembedding": ("embed", "vocab"), "query": ("embed", "heads", "head_dim"),
    "key": ("embed", "heads", "head_dim"), "value": ("embed", "heads", "head_dim"),
    "out": ("heads", "head_dim", "embed"), "mlp_in": ("embed", "mlp"),
    "mlp_out": ("mlp", "embed"), "scale": ("norm",), "bias": ("norm",)}


@pytest.mark.parametrize("kw", [{}, {"positions": "learned", "norm": "rmsnorm"},
                                {"tie_embeddings": True, "mlp_dim": 48}])
def test_logical_axes_and_parameter_count(kw):
    model = _model(**kw)
    params = model.init(jax.random.PRNGKey(0))
    assert jax.tree.structure(params) == jax.tree.structure(model.logical_axes, is_leaf=is_spec)
    pairs = zip(jax.tree_util.tree_leaves_with_path(params),
                jax.tree.leaves(model.logical_axes, is_leaf=is_spec))
    for (path, leaf), spec in pairs:
        keys = [k.key for k in path if k.key != "kernel"]
        assert len(spec) == leaf.ndim and set(spec) <= set(LOGICAL_AXIS_NAMES)
        assert tuple(spec) == EXPECTED_AXES[keys[-1]], (keys, spec)
    count = parameter_count(model.config)
    assert count["total"] == sum(leaf.size for leaf in jax.tree.leaves(params))
    blocks = {k: v for k, v in params["params"].items() if k.startswith("block_")}
    norm = params["params"]["final_norm"]
    assert count["non_embedding"] == sum(leaf.size for leaf in jax.tree.leaves((blocks, norm)))


def test_parameter_count_by_hand():
    # d 32, 2 layers, MLP 128, vocab 64, LayerNorm:
    # per layer q, k, v, out 4 * 32 * 32 = 4096, MLP 2 * 32 * 128 = 8192, norms 2 * 2 * 32 = 128;
    # final norm 64; embedding 64 * 32 = 2048, the same again untied; positions 16 * 32 = 512
    layers = 2 * (4096 + 8192 + 128) + 64
    assert parameter_count(_model().config) == {
        "total": layers + 2 * 2048, "non_embedding": layers, "matmul": 2 * (4096 + 8192) + 2048}
    assert parameter_count(_model(tie_embeddings=True, positions="learned").config) == {
        "total": layers + 2048 + 512, "non_embedding": layers, "matmul": 2 * (4096 + 8192) + 2048}
    rms = 2 * (4096 + 8192 + 64) + 32  # RMSNorm: a scale only
    assert parameter_count(_model(norm="rmsnorm").config)["total"] == rms + 2 * 2048


def _xla_flops(fn, *args):
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_flops_per_token_against_xlas_count():
    """The model FLOPs against XLA's cost analysis of the compiled program.

    The dense implementation computes all T x T attention scores (it masks, it does not skip
    the upper triangle), so XLA counts the non-causal attention: forward ``4 L T d`` per token,
    twice the causal ``flops.attention / 3``. T = 256 with d = 128 makes attention 24% of the
    forward FLOPs, so counting it as causal would be 16% off. XLA also counts elementwise
    operations (norms, GELU, softmax), which the model FLOPs leave out: ~2% here.
    """
    config = TransformerConfig(vocab_size=256, d_model=128, num_layers=2, num_heads=2,
                               max_length=256)
    model, batch, length = transformer(config), 1, 256
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.zeros((batch, length), jnp.int32)
    flops = flops_per_token(config, length)
    n = 2 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 256  # by hand: layers and unembedding
    assert flops.matmul == 6 * n and flops.attention == 6 * 2 * length * 128  # 6 L T d
    assert flops.total == flops.matmul + flops.attention

    forward = _xla_flops(model.apply, params, tokens)
    expected = batch * length * (2 * n + 4 * 2 * length * 128)
    assert 1.0 <= forward / expected < 1.04, forward / expected
    # Forward and backward: 3 times the forward matmuls (the 6N of Kaplan et al.).
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, tokens), tokens).mean()
    training = _xla_flops(jax.value_and_grad(loss), params)
    expected = batch * length * (flops.matmul + 2 * flops.attention)
    assert 1.0 <= training / expected < 1.04, training / expected


def _roformer_eq34(x, m, base=10000.0):
    """RoFormer Eq. 34 as written, on interleaved pairs (x_{2i}, x_{2i+1}) of a vector."""
    theta = base ** (-2 * np.arange(len(x) // 2) / len(x))
    cos, sin = np.repeat(np.cos(m * theta), 2), np.repeat(np.sin(m * theta), 2)
    rotated = np.empty_like(x)
    rotated[0::2], rotated[1::2] = -x[1::2], x[0::2]
    return x * cos + rotated * sin


def test_rotary_is_roformers_rotation_on_half_split_pairs():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 3, 8)), np.float64)
    positions = np.array([0, 1, 4, 9, 100])
    out = np.asarray(rotary(jnp.asarray(x, jnp.float32), jnp.asarray(positions)))
    pairs = np.stack([np.arange(4), np.arange(4) + 4], -1).reshape(-1)  # half-split -> interleaved
    for t, m in enumerate(positions):
        for h in range(3):
            expected = np.empty(8)
            expected[pairs] = _roformer_eq34(x[t, h][pairs], m)
            np.testing.assert_allclose(out[t, h], expected, rtol=1e-4, atol=1e-5)


def test_rotary_scores_depend_on_the_offset_only():
    q = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 8))

    def score(i, j):
        return float(jnp.sum(rotary(q, jnp.array([i])) * rotary(k, jnp.array([j]))))

    for i, j, shift in [(3, 1, 7), (0, 5, 11), (2, 2, 40)]:
        assert score(i, j) == pytest.approx(score(i + shift, j + shift), rel=1e-4, abs=1e-5)
    assert score(5, 5) == pytest.approx(float(jnp.sum(q * k)), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    np.testing.assert_allclose(jnp.linalg.norm(rotary(q, jnp.array([7]))), jnp.linalg.norm(q),
                               rtol=1e-6)  # a rotation keeps norms


def test_training_reduces_the_next_token_loss():
    model = _model()
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.tile(jnp.arange(8), (4, 2))  # a repeated pattern of 8 tokens
    optimizer = optax.adam(3e-3)

    def loss(p):
        logits = model.apply(p, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def step(p, state):
        value, grads = jax.value_and_grad(loss)(p)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(p, updates), state, value

    state = optimizer.init(params)
    first = float(loss(params))
    for _ in range(60):
        params, state, _ = step(params, state)
    assert first > 3.5 and float(loss(params)) < 0.5 * first  # ln 64 = 4.16 at the start


def test_learned_positions_reject_longer_sequences():
    model = _model(positions="learned")
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`tokens` has length 17, more than the max_length 16"):
        model.apply(params, _tokens((1, 17)))
    rotary_model = _model()  # rotary positions have no limit
    assert rotary_model.apply(rotary_model.init(jax.random.PRNGKey(0)),
                              _tokens((1, 20))).shape == (1, 20, 64)


@pytest.mark.parametrize("kw, message", [
    (dict(d_model=30, num_heads=4), r"d_model \(30\) must be divisible by num_heads \(4\)"),
    (dict(d_model=12, num_heads=4), "rotary positions need an even head dimension"),
    (dict(positions="alibi"), "TransformerConfig.positions must be"),
    (dict(num_layers=0), "TransformerConfig.num_layers must be a positive integer"),
    (dict(vocab_size=True), "TransformerConfig.vocab_size must be a positive integer"),
    (dict(mlp_dim=-1), "TransformerConfig.mlp_dim must be a positive integer or None"),
    (dict(dtype=jnp.float16), "TransformerConfig.dtype must be one of"),
    (dict(dtype="float"), "TransformerConfig.dtype must be one of"),
    (dict(param_dtype=jnp.bfloat16), "TransformerConfig.param_dtype must be one of"),
    (dict(norm="batchnorm"), "TransformerConfig.norm must be"),
])
def test_bad_config_is_named(kw, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**kw)


def test_bad_input_is_named():
    model = _model()
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"`tokens` must be integers of shape \[batch, length\]"):
        model.apply(params, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="`sequence_length` must be a positive integer"):
        flops_per_token(model.config, 0)
