"""A decoder-only transformer language model in Flax, with logical axis names for sharding.

Pre-norm blocks (GPT-2, Radford et al. 2019; Xiong et al., "On Layer Normalization in the
Transformer Architecture", 2020, arXiv:2002.04745): ``x + attention(norm(x))`` then
``x + mlp(norm(x))``, a final norm and a projection to the vocabulary. Causal multi-head
self-attention (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762), with
rotary position embeddings (Su et al., "RoFormer", 2021, arXiv:2104.09864, Eq. 34, in the
half-split form of GPT-NeoX and LLaMA: dimension ``i`` is paired with ``i + head_dim / 2``)
or learned absolute positions. No biases in the projections (as PaLM and LLaMA), a GELU MLP
(tanh approximation, as GPT-2), no dropout.

Parameters are stored in ``param_dtype`` float32 (the master weights); with
``dtype=jnp.bfloat16`` the matrix multiplies run in bfloat16 while the attention logits, the
softmax, the norms' statistics and the output logits stay float32. Every parameter carries
logical axis names (MaxText's: ``vocab``, ``embed``, ``heads``, ``head_dim``, ``mlp``,
``length``, ``norm``), returned as ``Transformer.logical_axes`` for
``jaxreg.train.sharding.from_logical_axes``: the same model runs data-parallel, fully sharded
or fully sharded x tensor-parallel by changing the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGICAL_AXIS_NAMES = ("vocab", "embed", "heads", "head_dim", "mlp", "length", "norm")
"""Every logical axis name a parameter of :class:`TransformerLM` carries."""

COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """The model's shape.

    Attributes:
        vocab_size: tokens (256 for bytes).
        d_model: width of the residual stream.
        num_layers: transformer blocks.
        num_heads: attention heads; ``d_model / num_heads`` is the head dimension.
        mlp_dim: hidden units of the MLP (default ``4 * d_model``).
        max_length: the longest sequence with ``positions="learned"``.
        positions: ``"rotary"`` or ``"learned"``.
        dtype: compute dtype, ``jnp.float32`` or ``jnp.bfloat16`` (or their names); stored as
            a ``jnp.dtype``.
        param_dtype: storage dtype of the parameters; float32 only (master weights).
        norm: ``"layernorm"`` (GPT-2) or ``"rmsnorm"`` (Zhang & Sennrich 2019).
        tie_embeddings: project to the vocabulary with the input embedding's transpose.
    """
    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_dim: int | None = None
    max_length: int = 256
    positions: str = "rotary"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    norm: str = "layernorm"
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_length"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got "
                                 f"{getattr(self, name)!r}")
        if self.mlp_dim is not None and not _positive_int(self.mlp_dim):
            raise ValueError(f"TransformerConfig.mlp_dim must be a positive integer or None, got "
                             f"{self.mlp_dim!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.positions not in ("rotary", "learned"):
            raise ValueError(f"TransformerConfig.positions must be 'rotary' or 'learned', got "
                             f"{self.positions!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: rotary positions need an even head dimension "
                             f"d_model / num_heads, got {self.head_dim}")
        for name, allowed in (("dtype", COMPUTE_DTYPES), ("param_dtype", COMPUTE_DTYPES[:1])):
            try:
                value = jnp.dtype(getattr(self, name))
            except TypeError:
                value = None
            if value not in allowed:
                raise ValueError(f"TransformerConfig.{name} must be one of "
                                 f"{[d.name for d in allowed]}, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"TransformerConfig.norm must be 'layernorm' or 'rmsnorm', got "
                             f"{self.norm!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def hidden(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.d_model


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _init(names, init=nn.initializers.normal(0.02)):
    return nn.with_logical_partitioning(init, names)


def rotary(x: jax.Array, positions: jax.Array, *, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (RoFormer, Eq. 34) of ``x [..., T, H, D]`` at ``positions [T]``.

    Half-split pairing (GPT-NeoX, LLaMA): dimensions ``i`` and ``i + D/2`` form the pair rotated
    by the angle ``positions * base^(-2i/D)``, ``i < D/2``; computed in float32.
    """
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * frequencies  # [T, D/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # [T, 1, D/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _norm(config: TransformerConfig, name: str) -> nn.Module:
    """LayerNorm (scale and bias) or RMSNorm (scale); statistics in float32 (Flax's)."""
    ones = _init(("norm",), nn.initializers.ones)
    kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, scale_init=ones, name=name)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(**kw)
    return nn.LayerNorm(bias_init=_init(("norm",), nn.initializers.zeros), **kw)


def _dense(config: TransformerConfig, features, names, name: str, axis=-1) -> nn.DenseGeneral:
    return nn.DenseGeneral(features, axis=axis, use_bias=False, dtype=config.dtype,
                           param_dtype=config.param_dtype, kernel_init=_init(names), name=name)


class _Attention(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        c, length = self.config, x.shape[1]
        project = lambda name: _dense(c, (c.num_heads, c.head_dim),
                                      ("embed", "heads", "head_dim"), name)(x)
        q, k, v = project("query"), project("key"), project("value")  # [B, T, H, D]
        if c.positions == "rotary":
            positions = jnp.arange(length)
            q, k = rotary(q, positions), rotary(k, positions)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / jnp.sqrt(jnp.float32(c.head_dim))
        causal = jnp.tril(jnp.ones((length, length), bool))
        logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(c.dtype)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return _dense(c, c.d_model, ("heads", "head_dim", "embed"), "out", axis=(-2, -1))(mixed)


class _Block(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = x + _Attention(c, name="attention")(_norm(c, "attention_norm")(x))
        h = _dense(c, c.hidden, ("embed", "mlp"), "mlp_in")(_norm(c, "mlp_norm")(x))
        return x + _dense(c, c.d_model, ("mlp", "embed"), "mlp_out")(nn.gelu(h))


class TransformerLM(nn.Module):
    """Tokens ``[B, T]`` -> next-token logits ``[B, T, vocab_size]`` (float32)."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens):
        c = self.config
        embedding = self.param("embedding", _init(("vocab", "embed")),
                               (c.vocab_size, c.d_model), c.param_dtype)
        x = jnp.take(embedding, tokens, axis=0).astype(c.dtype)
        if c.positions == "learned":
            position = self.param("position", _init(("length", "embed")),
                                  (c.max_length, c.d_model), c.param_dtype)
            x = x + position[:tokens.shape[1]].astype(c.dtype)
        for i in range(c.num_layers):
            x = _Block(c, name=f"block_{i}")(x)
        x = _norm(c, "final_norm")(x)
        if c.tie_embeddings:
            return jnp.einsum("btd,vd->btv", x, embedding.astype(c.dtype),
                              preferred_element_type=jnp.float32)
        kernel = self.param("unembedding", _init(("embed", "vocab")), (c.d_model, c.vocab_size),
                            c.param_dtype)
        return jnp.einsum("btd,dv->btv", x, kernel.astype(c.dtype),
                          preferred_element_type=jnp.float32)


class Transformer(NamedTuple):
    """The model as pure functions, with its parameters' logical axis names."""
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    logical_axes: Any
    config: TransformerConfig


def transformer(config: TransformerConfig) -> Transformer:
    """A decoder-only language model as pure functions.

    Args:
        config: the model's shape.

    Returns:
        ``init(key) -> params`` (unboxed float32 arrays), ``apply(params, tokens int [B, T])
        -> logits float32 [B, T, vocab_size]``, ``logical_axes`` (a tree shaped like the
        parameters of ``PartitionSpec``s of names from :data:`LOGICAL_AXIS_NAMES`) and
        ``config``.
    """
    module = TransformerLM(config)
    dummy = jnp.zeros((1, min(8, config.max_length)), jnp.int32)
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), dummy))
    logical_axes = nn.get_partition_spec(boxed)

    def init(key):
        return nn.unbox(module.init(key, dummy))

    def apply(params, tokens):
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"`tokens` must be integers of shape [batch, length], got "
                             f"{tokens.dtype}{list(tokens.shape)}")
        if config.positions == "learned" and tokens.shape[1] > config.max_length:
            raise ValueError(f"`tokens` has length {tokens.shape[1]}, more than the "
                             f"max_length {config.max_length} of the learned positions")
        return module.apply(params, tokens)

    return Transformer(init=init, apply=apply, logical_axes=logical_axes, config=config)


def parameter_count(config: TransformerConfig) -> dict[str, int]:
    """The model's parameters, by kind.

    Returns:
        ``total``: every parameter (the sum of ``init``'s leaf sizes). ``non_embedding``: less
        the token embedding, the unembedding when untied and the learned positions (Kaplan et
        al. 2020's ``N``, here with the norms' scales and biases). ``matmul``: those used in
        matrix multiplies, the ``N`` of ``6N``: query, key, value, out, MLP in and out, and the
        projection to the vocabulary (counted once even when tied); not the input embedding
        (a lookup), the learned positions or the norms.
    """
    d, L, V = config.d_model, config.num_layers, config.vocab_size
    layers = L * (4 * d * d + 2 * d * config.hidden)
    norms = (2 if config.norm == "layernorm" else 1) * d * (2 * L + 1)
    embeddings = V * d * (1 if config.tie_embeddings else 2)
    positions = config.max_length * d if config.positions == "learned" else 0
    return {"total": layers + norms + embeddings + positions, "non_embedding": layers + norms,
            "matmul": layers + d * V}


@dataclasses.dataclass(frozen=True)
class TrainingFlops:
    """Training FLOPs per token: ``matmul = 6 N`` and the causal ``attention`` term."""
    matmul: int
    attention: int

    @property
    def total(self) -> int:
        return self.matmul + self.attention


def flops_per_token(config: TransformerConfig, sequence_length: int) -> TrainingFlops:
    """The model FLOPs of one training token (forward and backward), for MFU.

    ``matmul = 6 N`` with ``N = parameter_count(config)["matmul"]`` (Kaplan et al., "Scaling
    Laws for Neural Language Models", 2020, arXiv:2001.08361, Sec. 2.1: 2 FLOPs per parameter
    forward, 4 backward). ``attention = 6 L T H D_h``, as MaxText's
    ``calculate_tflops_training_per_device`` counts it: ``QK^T`` and ``AV`` cost ``4 T H D_h``
    FLOPs per token and layer forward over all ``T`` keys (2 FLOPs per multiply-add), halved
    for causal attention, times 3 for forward and backward. PaLM (Chowdhery et al. 2022,
    arXiv:2204.02311, appendix B) counts the non-causal ``12 L T H D_h``. Norms, softmax,
    GELU and the embedding lookup are left out.

    Args:
        config: the model's shape.
        sequence_length: ``T``, the training context length.
    """
    if not _positive_int(sequence_length):
        raise ValueError(f"`sequence_length` must be a positive integer, got {sequence_length!r}")
    n = parameter_count(config)["matmul"]
    attention = 6 * config.num_layers * sequence_length * config.num_heads * config.head_dim
    return TrainingFlops(matmul=6 * n, attention=attention)
