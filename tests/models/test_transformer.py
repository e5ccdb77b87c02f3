import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from jaxreg.models import transformer as tf

SMALL = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, max_length=16)
NAMES = {"vocab", "embed", "heads", "head_dim", "mlp", "length", "norm"}


def _model(**kw):
    return tf.transformer(tf.TransformerConfig(**{**SMALL, **kw}))


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


def test_shapes_dtypes_and_bfloat16_compute():
    f32, bf16 = _model(), _model(dtype="bfloat16")
    params = f32.init(jax.random.PRNGKey(0))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    logits = f32.apply(params, _tokens())
    low = bf16.apply(params, _tokens())  # the same float32 master weights
    assert logits.shape == (2, 16, 64) and logits.dtype == low.dtype == jnp.float32
    scale = float(jnp.std(logits))
    assert float(jnp.max(jnp.abs(low - logits))) < 0.1 * scale  # bfloat16 rounding only
    assert float(jnp.max(jnp.abs(low - logits))) > 0  # it did compute in bfloat16


@pytest.mark.parametrize("kw", [{}, {"positions": "learned", "norm": "rmsnorm"},
                                {"tie_embeddings": True, "mlp_dim": 48}])
def test_logical_axes_and_parameter_count(kw):
    model = _model(**kw)
    params = model.init(jax.random.PRNGKey(0))
    specs = jax.tree.leaves(model.logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    assert jax.tree.structure(params) == jax.tree.structure(
        model.logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    for leaf, spec in zip(jax.tree.leaves(params), specs):
        assert len(spec) == leaf.ndim and set(spec) <= NAMES
    count = tf.parameter_count(model.config)
    assert count["total"] == sum(leaf.size for leaf in jax.tree.leaves(params))


def test_parameter_count_by_hand():
    # d 32, 2 layers, MLP 128, vocab 64, rotary, LayerNorm, untied:
    # per layer q, k, v, out 4 * 32 * 32 = 4096, MLP 2 * 32 * 128 = 8192, norms 2 * 2 * 32 = 128
    # embedding and unembedding 2 * 64 * 32 = 4096, final norm 64
    count = tf.parameter_count(_model().config)
    assert count == {"total": 2 * (4096 + 8192 + 128) + 4096 + 64,
                     "matmul": 2 * (4096 + 8192) + 32 * 64}


def test_flops_per_token_against_xlas_count():
    """XLA's cost analysis of the compiled forward and backward: it computes every one of the
    T x T attention scores (the dense implementation masks, it does not skip), so it is
    compared with the non-causal count, twice the causal term; the few percent above are
    XLA's elementwise operations (norms, GELU, softmax), which the model FLOPs leave out."""
    config = tf.TransformerConfig(vocab_size=256, d_model=128, num_layers=2, num_heads=4,
                                  max_length=32)
    model, batch, length = tf.transformer(config), 4, 32
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.zeros((batch, length), jnp.int32)
    flops = tf.flops_per_token(config, length)
    assert flops.matmul == 6 * tf.parameter_count(config)["matmul"]
    assert flops.attention == 6 * 2 * length * 128  # 6 L T d

    def xla_flops(fn, *args):
        analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
        return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]

    forward = xla_flops(model.apply, params, tokens)
    expected = batch * length * (flops.matmul / 3 + 2 * flops.attention / 3)
    assert 1.0 <= forward / expected < 1.05, forward / expected
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, tokens), tokens).mean()
    training = xla_flops(jax.value_and_grad(loss), params)
    expected = batch * length * (flops.matmul + 2 * flops.attention)
    assert 1.0 <= training / expected < 1.05, training / expected


def test_rotary_scores_depend_on_the_offset_only():
    q = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(2), (1, 1, 8))

    def score(i, j):
        return float(jnp.sum(tf.rotary(q, jnp.array([i])) * tf.rotary(k, jnp.array([j]))))

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-5)
    assert score(5, 5) == pytest.approx(float(jnp.sum(q * k)), rel=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)
    # norms are kept: a rotation
    np.testing.assert_allclose(jnp.linalg.norm(tf.rotary(q, jnp.array([7]))),
                               jnp.linalg.norm(q), rtol=1e-6)


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
    assert first > 3.5 and float(loss(params)) < 0.5 * first


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"d_model \(30\) must be divisible by num_heads \(4\)"):
        tf.TransformerConfig(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="rotary positions need an even head dimension"):
        tf.TransformerConfig(d_model=12, num_heads=4)
    with pytest.raises(ValueError, match="TransformerConfig.positions must be"):
        tf.TransformerConfig(positions="alibi")
    with pytest.raises(ValueError, match="TransformerConfig.num_layers must be a positive"):
        tf.TransformerConfig(num_layers=0)
    with pytest.raises(ValueError, match="TransformerConfig.dtype must be one of"):
        tf.TransformerConfig(dtype="float16")
    model = _model(positions="learned")
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="`tokens` has length 17, more than the max_length 16"):
        model.apply(params, _tokens((1, 17)))
    with pytest.raises(ValueError, match=r"`tokens` must be integers of shape \[batch, length\]"):
        model.apply(params, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="`sequence_length` must be a positive integer"):
        tf.flops_per_token(model.config, 0)
