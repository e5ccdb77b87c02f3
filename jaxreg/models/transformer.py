"""A decoder-only transformer language model in Flax, with logical axis names for sharding.

Pre-norm blocks (GPT-2, Radford et al. 2019; Xiong et al., "On Layer Normalization in the
Transformer Architecture", 2020, arXiv:2002.04745): ``x + attention(norm(x))`` then
``x + mlp(norm(x))``, a final norm and a projection to the vocabulary. Causal multi-head
self-attention (Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762), with
rotary position embeddings (Su et al., "RoFormer", 2021, arXiv:2104.09864, Eq. 34, in the
half-split form of GPT-NeoX and LLaMA: dimension ``i`` is paired with ``i + head_dim / 2``)
or learned absolute positions. No biases in the projections, GELU MLP, no dropout.

Parameters are stored in float32 (the master weights); with ``dtype="bfloat16"`` the
matrix multiplies run in bfloat16 while the attention logits, the softmax, the norms' statistics
and the output logits stay float32. Every parameter carries logical axis names (MaxText's:
``vocab``, ``embed``, ``heads``, ``head_dim``, ``mlp``, ``length``, ``norm``), returned as
``Transformer.logical_axes`` for ``jaxreg.train.sharding.from_logical_axes``: the same model
runs data-parallel, fully sharded or fully sharded x tensor-parallel by changing the rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
        dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
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
    dtype: str = "float32"
    norm: str = "layernorm"
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive integer, got "
                                 f"{value!r}")
        if self.mlp_dim is not None and (not isinstance(self.mlp_dim, int) or self.mlp_dim < 1):
            raise ValueError(f"TransformerConfig.mlp_dim must be a positive integer or None, got "
                             f"{self.mlp_dim!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"TransformerConfig.d_model ({self.d_model}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.positions not in ("rotary", "learned"):
            raise ValueError(f"TransformerConfig.positions must be 'rotary' or 'learned', got "
                             f"{self.positions!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"TransformerConfig: rotary positions need an even head dimension, "
                             f"got d_model / num_heads = {self.head_dim}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TransformerConfig.dtype must be one of {sorted(DTYPES)}, got "
                             f"{self.dtype!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"TransformerConfig.norm must be 'layernorm' or 'rmsnorm', got "
                             f"{self.norm!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def hidden(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.d_model


def _init(names, init=nn.initializers.normal(0.02)):
    return nn.with_logical_partitioning(init, names)


def rotary(x: jax.Array, positions: jax.Array, *, base: float = 10000.0) -> jax.Array:
    """Rotates ``x [..., T, H, D]`` by position (RoFormer, Eq. 34): dimensions ``i`` and
    ``i + D/2`` form a pair rotated by ``positions * base^(-2i/D)``; computed in float32."""
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None] * frequencies  # [T, D/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]  # [T, 1, D/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _norm(config: TransformerConfig, name: str) -> nn.Module:
    """LayerNorm (scale and bias) or RMSNorm (scale); statistics in float32 (Flax's)."""
    dtype, ones = DTYPES[config.dtype], _init(("norm",), nn.initializers.ones)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dtype=dtype, scale_init=ones, name=name)
    return nn.LayerNorm(dtype=dtype, scale_init=ones, name=name,
                        bias_init=_init(("norm",), nn.initializers.zeros))


class _Attention(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        c, dtype = self.config, x.dtype
        project = lambda name: nn.DenseGeneral(
            (c.num_heads, c.head_dim), use_bias=False, dtype=dtype, name=name,
            kernel_init=_init(("embed", "heads", "head_dim")))(x)
        q, k, v = project("query"), project("key"), project("value")  # [B, T, H, D]
        if c.positions == "rotary":
            positions = jnp.arange(x.shape[1])
            q, k = rotary(q, positions), rotary(k, positions)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits / jnp.sqrt(jnp.float32(c.head_dim))
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        logits = jnp.where(causal, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=False, dtype=dtype,
                               name="out", kernel_init=_init(("heads", "head_dim", "embed")))(mixed)


class _Block(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = x + _Attention(c, name="attention")(_norm(c, "attention_norm")(x))
        h = _norm(c, "mlp_norm")(x)
        h = nn.Dense(c.hidden, use_bias=False, dtype=x.dtype, name="mlp_in",
                     kernel_init=_init(("embed", "mlp")))(h)
        h = nn.Dense(c.d_model, use_bias=False, dtype=x.dtype, name="mlp_out",
                     kernel_init=_init(("mlp", "embed")))(nn.gelu(h))
        return x + h


class TransformerLM(nn.Module):
    """Tokens ``[B, T]`` -> next-token logits ``[B, T, vocab_size]`` (float32)."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens):
        c, dtype = self.config, DTYPES[self.config.dtype]
        embedding = self.param("embedding", _init(("vocab", "embed")),
                               (c.vocab_size, c.d_model), jnp.float32)
        x = jnp.take(embedding, tokens, axis=0).astype(dtype)
        if c.positions == "learned":
            position = self.param("position", _init(("length", "embed")),
                                  (c.max_length, c.d_model), jnp.float32)
            x = x + position[:tokens.shape[1]].astype(dtype)
        for i in range(c.num_layers):
            x = _Block(c, name=f"block_{i}")(x)
        x = _norm(c, "final_norm")(x)
        if c.tie_embeddings:
            return jnp.einsum("btd,vd->btv", x, embedding.astype(dtype),
                              preferred_element_type=jnp.float32)
        kernel = self.param("unembedding", _init(("embed", "vocab")), (c.d_model, c.vocab_size),
                            jnp.float32)
        return jnp.einsum("btd,dv->btv", x, kernel.astype(dtype),
                          preferred_element_type=jnp.float32)


class Transformer(NamedTuple):
    """The model as pure functions, with its parameters' logical axis names."""
    init: Callable[[jax.Array], Any]
    apply: Callable[[Any, jax.Array], jax.Array]
    logical_axes: Any
    config: TransformerConfig


def transformer(config: TransformerConfig) -> Transformer:
    """A decoder-only language model: ``init(key) -> params`` (unboxed float32 arrays),
    ``apply(params, tokens int [B, T]) -> logits float32 [B, T, V]``, and ``logical_axes``,
    a tree shaped like the parameters of ``PartitionSpec``s of logical axis names."""
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
    """``total`` parameters and ``matmul`` ones: those of the projections (query, key, value,
    out, the MLP and the output projection, counted once even when it is tied), the ``N``
    of ``6N``; not the input embedding (a lookup), the learned positions or the norms."""
    d, L = config.d_model, config.num_layers
    matmul = L * (4 * d * d + 2 * d * config.hidden) + d * config.vocab_size
    norms = (2 if config.norm == "layernorm" else 1) * d * (2 * L + 1)
    embeddings = config.vocab_size * d * (1 if config.tie_embeddings else 2)
    positions = config.max_length * d if config.positions == "learned" else 0
    total = L * (4 * d * d + 2 * d * config.hidden) + norms + embeddings + positions
    return {"total": total, "matmul": matmul}


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

    ``6 N`` for the parameters used in matrix multiplies (``parameter_count(...)["matmul"]``;
    Kaplan et al., "Scaling Laws for Neural Language Models", 2020, arXiv:2001.08361, Sec. 2.1:
    2 FLOPs per parameter forward, 4 backward), plus attention as MaxText counts it
    (``calculate_tflops_training_per_device``): ``QK^T`` and ``AV`` cost ``4 T d`` FLOPs per
    token and layer forward over all ``T`` keys, halved for causal attention, times 3 for the
    backward pass: ``6 L T d`` (PaLM's appendix B counts the non-causal ``12 L T d``).
    """
    if not isinstance(sequence_length, int) or sequence_length < 1:
        raise ValueError(f"`sequence_length` must be a positive integer, got {sequence_length!r}")
    n = parameter_count(config)["matmul"]
    attention = 6 * config.num_layers * sequence_length * config.num_heads * config.head_dim
    return TrainingFlops(matmul=6 * n, attention=attention)
