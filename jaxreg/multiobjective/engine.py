"""Engines: the objectives' Gramian ``G = J J^T`` and the update ``J^T w``, with or without J.

A multi-objective step needs, for m objectives ``f(params) -> [m]``, their Gramian (what a
weighting reads) and the combination ``J^T w`` of their gradients (the update). Three
engines give both, equal to float32 rounding (``jaxreg.train.make_step(..., engine=)``):

- ``"jacobian"``: J from one forward pass and a VJP vmapped over the m objectives; every
  aggregator works on it, and those that need J itself (GradDrop, GradNorm, Bloop, M-ConFIG,
  MultiAdam) only on it. Memory O(m n) for n parameters.
- ``"gramian"``: G accumulated block by block over the parameter leaves (consecutive leaves
  grouped up to ``BLOCK_ELEMENTS`` numbers of Jacobian; the vmapped VJP restricted to a block,
  its ``J_b J_b^T`` added before the next block's is computed), so memory is O(m^2 + the
  largest block); the update is one more VJP, with cotangent w. Any function.
- ``"layers"``: the ``flax.linen`` Dense, Conv and Embed layers the function calls are
  captured by method interception. For a layer with inputs A (rows n: examples, and
  positions of a sequence or an image; for a convolution its input patches, for an
  embedding the one-hot token ids) and output cotangents ``D_t`` of objective t,
  objective t's gradient is ``A^T D_t`` (kernel) and ``sum_n D_t`` (bias), so

      G_ts = sum_layers <D_t, (A A^T + 1) D_s>,     update = A^T (sum_t w_t D_t),

  with no Jacobian and no second backward pass (Quinton & Rey's Gramian-based Jacobian
  descent, torchjd's ``autogram``). The cotangents come from a VJP vmapped over the m
  objectives with respect to the layer outputs only; for per-example objectives (IWRM,
  ``jaxreg.objective.per_example``: objective b is example b's loss and depends on batch row
  b only) one backward pass gives all of them, and ``G = (A A^T + 1) * (D D^T)`` per layer
  (its per-example sum over the positions of a sequence otherwise). For several objectives
  of the whole batch a convolution's ``A^T D_t`` is its own kernel VJP at ``D_t`` (lax's
  convolution, which forms no patches). Parameters outside
  captured layers (a layer called twice or also used elsewhere, such as a tied embedding or
  a weight penalty; other layer types such as LayerNorm) get theirs as in ``"gramian"``, and
  a warning says which, once.

Each engine returns a :class:`Linearized`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxreg.multiobjective.base import combine, gramian

ENGINES = ("jacobian", "gramian", "layers")


class Linearized(NamedTuple):
    """What an engine returns for ``fn(params) -> (values [m], aux)``.

    Attributes:
        values: the m objectives.
        aux: ``fn``'s auxiliary output.
        gram: their ``[m, m]`` Gramian, in float32 or wider (None from ``values_engine``).
        combine: ``w -> J^T w``, a pytree like ``params``.
        jacobian: J (leaves ``[m, *shape]``) for the ``"jacobian"`` engine, else None.
    """
    values: jax.Array
    aux: Any
    gram: jax.Array
    combine: Callable[[jax.Array], Any]
    jacobian: Any = None


def _wide(x):
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _basis(values):
    return jnp.eye(values.shape[0], dtype=values.dtype)


def jacobian_engine(fn, params) -> Linearized:
    """J by a VJP vmapped over the objectives; ``G = J J^T``."""
    values, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    (jacobian,) = jax.vmap(vjp_fn)(_basis(values))
    return Linearized(values, aux, gramian(jacobian), lambda w: combine(w, jacobian), jacobian)


def values_engine(fn, params) -> Linearized:
    """No Gramian (``gram`` is None), for weightings of the values alone: the update
    ``J^T w`` is one VJP with cotangent w."""
    values, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    return Linearized(values, aux, None, lambda w: vjp_fn(w.astype(values.dtype))[0])


BLOCK_ELEMENTS = 1 << 22  # a block of the Jacobian holds at most this many numbers (16 MB)


def leaf_blocks(sizes, m: int, budget: int = BLOCK_ELEMENTS) -> list[list[int]]:
    """Consecutive leaves (of ``sizes`` parameters each) grouped so that each group's
    Jacobian block, ``m x sum(sizes)``, holds at most ``budget`` numbers (a larger leaf is a
    block of its own)."""
    blocks, current, filled = [], [], 0
    for index, size in enumerate(sizes):
        if current and filled + m * size > budget:
            blocks.append(current)
            current, filled = [], 0
        current.append(index)
        filled += m * size
    return blocks + [current] if current else blocks


def blockwise_gramian(rows, sizes, basis, budget: int = BLOCK_ELEMENTS) -> jax.Array:
    """``sum_blocks J_b J_b^T``, ``rows(e)`` giving the leaves' VJPs for cotangent ``e``; the
    blocks of :func:`leaf_blocks` are built one after the other (an optimization barrier
    orders them), so memory is O(m^2 + the largest block)."""
    m = basis.shape[0]
    gram = jnp.zeros((m, m), jnp.promote_types(basis.dtype, jnp.float32))
    for block in leaf_blocks(sizes, m, budget):
        gram, basis = jax.lax.optimization_barrier((gram, basis))
        parts = jax.vmap(lambda e, block=block: [rows(e)[i] for i in block])(basis)
        flat = jnp.concatenate([_wide(part.reshape(m, -1)) for part in parts], axis=1)
        gram = gram + flat @ flat.T
    return gram


def gramian_engine(fn, params) -> Linearized:
    """G block by block over the parameter leaves without keeping J; the update by one more
    VJP."""
    values, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    sizes = [int(jnp.size(leaf)) for leaf in jax.tree.leaves(params)]
    gram = blockwise_gramian(lambda e: jax.tree.leaves(vjp_fn(e)[0]), sizes, _basis(values))

    def update(w):
        (grads,) = vjp_fn(w.astype(values.dtype))
        return grads

    return Linearized(values, aux, gram, update)


class _Conv(NamedTuple):
    """The geometry of a captured convolution (and its module's precision)."""
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Any  # "SAME", "VALID" or ((lo, hi), ...)
    dilation: tuple[int, ...]
    precision: Any = None


def _convolve(conv: _Conv, x, kernel):
    """A captured convolution of ``x`` (one batch axis, channels last) by ``kernel``, as
    ``flax.linen.Conv`` computes it (lax's convolution)."""
    from flax.linen.linear import _conv_dimension_numbers

    return jax.lax.conv_general_dilated(
        x, kernel, conv.strides, conv.padding, rhs_dilation=conv.dilation,
        dimension_numbers=_conv_dimension_numbers(x.shape), precision=conv.precision)


class _Layer(NamedTuple):
    """A captured layer call: its kind, the leaf indices of its kernel (or embedding table)
    and bias, its output's shape, and a convolution's geometry."""
    kind: str  # "dense", "conv" or "embed"
    kernel: int
    bias: int | None
    output: jax.ShapeDtypeStruct
    conv: _Conv | None = None


def _kind(context) -> str | None:
    """The kind of a ``flax.linen`` call the engine can capture exactly, else None: plain
    ``Dense``; ``Conv`` with shared weights, one batch axis, no mask, no feature groups, no
    input dilation, zero padding and lax's own convolution; ``Embed`` lookups."""
    import flax.linen as nn

    module, method = context.module, context.method_name
    if type(module) is nn.Dense and method == "__call__":
        ok = module.dot_general is None and module.dot_general_cls is None
        return "dense" if ok else None
    if type(module) is nn.Conv and method == "__call__":
        ok = (module.shared_weights and module.feature_group_count == 1
              and module.mask is None and module.conv_general_dilated is None
              and module.conv_general_dilated_cls is None
              and all(d == 1 for d in _broadcast(module.input_dilation, module))
              and not (isinstance(module.padding, str)
                       and module.padding.upper() in ("CIRCULAR", "REFLECT", "CAUSAL")))
        return "conv" if ok else None
    if type(module) is nn.Embed and method == "__call__":
        return "embed" if module.num_embeddings > 1 else None
    return None


def _is_layer(context) -> bool:
    import flax.linen as nn

    return (type(context.module) in (nn.Dense, nn.Conv, nn.Embed)
            and context.method_name == "__call__")


def _kernel_size(module) -> tuple[int, ...]:
    size = module.kernel_size
    return (size,) if isinstance(size, int) else tuple(size)


def _broadcast(value, module) -> tuple[int, ...]:
    n = len(_kernel_size(module))
    value = 1 if value is None else value
    return (value,) * n if isinstance(value, int) else tuple(value)


def _layer_calls(fn, params) -> list[_Layer | None]:
    """The Dense, Conv and Embed calls of ``fn(params)`` in call order, each with its kind,
    the leaf indices of its parameters and its output's shape (None for a call the engine
    cannot capture); one abstract trace."""
    import flax.linen as nn

    calls: list[_Layer | None] = []

    def traced(p):
        ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(p))}

        def interceptor(next_fun, args, kwargs, context):
            if not _is_layer(context):
                return next_fun(*args, **kwargs)
            kind = _kind(context)
            own = context.module.variables.get("params", {})
            name = "embedding" if kind == "embed" else "kernel"
            kernel = ids.get(id(own.get(name)))
            bias = ids.get(id(own.get("bias"))) if "bias" in own else None
            x = args[0]
            if kind == "conv" and jnp.ndim(x) != len(_kernel_size(context.module)) + 2:
                kind = None  # several batch axes: flax reshapes them; not captured
            ok = kind is not None and kernel is not None and ("bias" not in own
                                                              or bias is not None)
            out = next_fun(*args, **kwargs)
            shape = jax.ShapeDtypeStruct(jnp.shape(out), jnp.result_type(out))
            conv = _conv_of(context.module) if ok and kind == "conv" else None
            calls.append(_Layer(kind, kernel, bias, shape, conv) if ok else None)
            return out

        with nn.intercept_methods(interceptor):
            return fn(p)

    jax.eval_shape(traced, params)
    return calls


def _conv_of(module) -> _Conv:
    from flax.linen.linear import canonicalize_padding

    kernel_size = _kernel_size(module)
    padding = canonicalize_padding(module.padding, len(kernel_size))
    padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return _Conv(kernel_size, _broadcast(module.strides, module), padding,
                 _broadcast(module.kernel_dilation, module), module.precision)


def _conv_patches(conv: _Conv, x):
    """The input patches of a captured convolution, ``[B, *out_spatial, C * prod(k)]``
    (channel-major, as ``lax.conv_general_dilated_patches``), so that ``conv(x, W) =
    patches @ flat(W)``; gathered by strided slices of the padded input (a grouped
    convolution is slow on CPUs)."""
    kernel_size, strides, dilation = conv.kernel_size, conv.strides, conv.dilation
    spatial = x.shape[1:-1]
    padding = conv.padding
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(
            spatial, [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)], strides,
            padding)
    x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    out = [(n + lo + hi - (k - 1) * d - 1) // s + 1
           for n, (lo, hi), k, d, s in zip(spatial, padding, kernel_size, dilation, strides)]
    slices = []
    for offset in itertools.product(*[range(k) for k in kernel_size]):
        start = [0, *[o * d for o, d in zip(offset, dilation)], 0]
        limit = [x.shape[0], *[st + (n - 1) * s + 1 for st, n, s in
                               zip(start[1:-1], out, strides)], x.shape[-1]]
        slices.append(jax.lax.slice(x, start, limit, (1, *strides, 1)))
    patches = jnp.stack(slices, axis=-1)  # [B, *out, C, prod(k)]: channel-major
    return patches.reshape(*patches.shape[:-2], -1)


def _unflat_kernel(flat, shape):
    """A convolution kernel of ``shape`` ``[*k, C, out]`` from the ``[C * prod(k), out]``
    matrix of its patches (channel-major)."""
    n = len(shape) - 2
    return jnp.moveaxis(flat.reshape(shape[n], *shape[:n], shape[-1]), 0, n)


def _run_captured(fn, params, captured, constants, on_output, inputs):
    """``fn(params)`` with each captured layer call k computed from the ``constants`` leaves
    (so no gradient reaches its parameters through it) as flax computes it: a Dense as
    ``x W + b``, a Conv as lax's convolution (its patches are formed after the backward
    pass), an Embed as a lookup. The output y is
    replaced by ``on_output(k, y)`` (adding a zero probe whose cotangent is ``D``), and what
    multiplies the kernel (x, the patches, the token ids) is stored in ``inputs[k]``."""
    import flax.linen as nn

    counter = [0]

    def interceptor(next_fun, args, kwargs, context):
        if not _is_layer(context):
            return next_fun(*args, **kwargs)
        k = counter[0]
        counter[0] += 1
        if k not in captured:
            return next_fun(*args, **kwargs)
        module, layer = context.module, captured[k]
        x = args[0]
        if layer.kind == "embed":
            (table,) = module.promote_dtype(constants[layer.kernel], dtype=module.dtype,
                                            inexact=False)
            inputs[k] = x
            return on_output(k, jnp.take(table, x, axis=0))
        bias = None if layer.bias is None else constants[layer.bias]
        x, kernel, bias = module.promote_dtype(x, constants[layer.kernel], bias,
                                               dtype=module.dtype)
        if layer.kind == "conv":  # the input is stored; its patches are formed afterwards
            y = _convolve(layer.conv, x, kernel)
        else:
            y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                                    precision=module.precision)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        inputs[k] = x
        return on_output(k, y)

    with nn.intercept_methods(interceptor):
        return fn(params)


def _used_elsewhere(fn, treedef, leaves, captured) -> set[int]:
    """The captured leaves that ``fn`` also uses outside their layer (a weight penalty, a
    tied embedding): found in the jaxpr of ``fn`` with the layers computed from constants."""
    owned = sorted({i for layer in captured.values() for i in (layer.kernel, layer.bias)
                    if i is not None})

    def traced(owned_leaves):
        full = list(leaves)
        for i, leaf in zip(owned, owned_leaves):
            full[i] = leaf
        return _run_captured(fn, treedef.unflatten(full), captured, leaves, lambda k, y: y, {})

    closed = jax.make_jaxpr(traced)([leaves[i] for i in owned])
    jaxpr = closed.jaxpr
    used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    return {i for i, var in zip(owned, jaxpr.invars) if id(var) in used}


_WARNED: set[tuple[str, ...]] = set()


def _warn_once(names: list[str]) -> None:
    key = tuple(names)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn("engine='layers': these parameters are outside captured Dense, Conv "
                      "and Embed layers and get their Jacobian blocks by vmapped VJPs: "
                      f"{', '.join(names)}", stacklevel=4)


def layers_engine(fn, params, *, per_example: Callable[[Any], bool] | bool = False
                  ) -> Linearized:
    """G from the captured layers' inputs and output cotangents (see the module docstring).
    ``per_example`` (or ``per_example(aux)``): objective b is the loss of batch row b alone."""
    leaves, treedef = jax.tree.flatten(params)
    calls = _layer_calls(fn, params)
    uses: dict[int, int] = {}
    for call in calls:
        if call is not None:
            for index in (call.kernel, call.bias):
                if index is not None:
                    uses[index] = uses.get(index, 0) + 1
    # a layer is captured when it is called once, its leaves serve no other call, and the
    # function uses them nowhere else
    captured = {k: call for k, call in enumerate(calls) if call is not None
                and uses[call.kernel] == 1 and (call.bias is None or uses[call.bias] == 1)}
    if captured:
        elsewhere = _used_elsewhere(fn, treedef, leaves, captured)
        captured = {k: c for k, c in captured.items()
                    if c.kernel not in elsewhere and c.bias not in elsewhere}
    owned = {i for call in captured.values() for i in (call.kernel, call.bias) if i is not None}
    rest = [i for i in range(len(leaves)) if i not in owned]
    if rest and captured:
        paths = [jax.tree_util.keystr(path) for path, _ in
                 jax.tree_util.tree_flatten_with_path(params)[0]]
        _warn_once([paths[i] for i in rest])

    def run(rest_leaves, probes):
        full = list(leaves)
        for i, leaf in zip(rest, rest_leaves):
            full[i] = leaf
        inputs: dict[int, jax.Array] = {}
        values, aux = _run_captured(fn, treedef.unflatten(full), captured, leaves,
                                    lambda k, y: y + probes[k], inputs)
        return values, (aux, inputs)

    rest_leaves = [leaves[i] for i in rest]
    probes = {k: jnp.zeros(c.output.shape, c.output.dtype) for k, c in captured.items()}
    values, vjp_fn, (aux, inputs) = jax.vjp(run, rest_leaves, probes, has_aux=True)
    m = values.shape[0]
    basis = _basis(values)
    if callable(per_example):
        per_example = per_example(aux)
    rows = per_example and all(inputs[k].shape[0] == m for k in captured)
    if rows:
        _, cotangents = vjp_fn(jnp.ones_like(values))  # row b of each layer: example b's
    else:
        _, cotangents = jax.vmap(vjp_fn)(basis)  # (the uncaptured leaves' part is unused)
    # the uncaptured leaves: their Gramian block by block, as the "gramian" engine
    gram = blockwise_gramian(lambda e: vjp_fn(e)[0], [int(jnp.size(leaves[i])) for i in rest],
                             basis)
    layers = {}
    for k, layer in captured.items():
        a, d = inputs[k], _wide(cotangents[k])
        bias = 0.0 if layer.bias is None else 1.0
        if layer.kind == "conv" and not rows:
            # several objectives of the whole batch: objective t's kernel gradient is the
            # convolution's own VJP at D_t (no patches), as the "jacobian" engine forms it
            kernel_vjp = _kernel_vjp(layer.conv, a, leaves[layer.kernel])
            blocks = jax.vmap(kernel_vjp)(d).reshape(m, -1)
            summed = jnp.sum(d.reshape(m, -1, d.shape[-1]), axis=1)
            gram = gram + blocks @ blocks.T + bias * (summed @ summed.T)
            layers[k] = (kernel_vjp, d)
            continue
        if layer.kind == "conv":
            a = _conv_patches(layer.conv, jax.lax.stop_gradient(a))
        embed = layer.kind == "embed"
        if rows:
            d = d.reshape(m, -1, d.shape[-1])  # [B, positions, out]
            a = a.reshape(m, -1) if embed else _wide(a).reshape(m, -1, a.shape[-1])
            gram = gram + (_per_example_embed_gram(a, d) if embed
                           else _per_example_gram(a, d, bias))
        else:
            d = d.reshape(m, -1, d.shape[-1])  # [m, N, out]
            a = a.reshape(-1) if embed else _wide(a).reshape(-1, a.shape[-1])
            gram = gram + (_multitask_embed_gram(a, d) if embed
                           else _multitask_gram(a, d, bias))
        layers[k] = (a, d)

    def update(w):
        full = [None] * len(leaves)
        if rest:  # one more backward pass, for the uncaptured leaves only
            for i, g in zip(rest, vjp_fn(w.astype(values.dtype))[0]):
                full[i] = g
        w = w.astype(gram.dtype)
        for k, layer in captured.items():
            a, d = layers[k]
            if rows:
                weighted = (d * w[:, None, None]).reshape(-1, d.shape[-1])  # [B * P, out]
            else:
                combined = jnp.tensordot(w, d, 1)  # [N, out], or a convolution's [*output]
                weighted = combined.reshape(-1, d.shape[-1])
            table = leaves[layer.kernel]
            if layer.kind == "conv" and not rows:  # a: the kernel's VJP
                kernel = a(combined)
            elif layer.kind == "embed":
                kernel = jnp.zeros(table.shape, weighted.dtype).at[a.reshape(-1)].add(weighted)
            else:
                kernel = a.reshape(-1, a.shape[-1]).T @ weighted
                if layer.kind == "conv":
                    kernel = _unflat_kernel(kernel, table.shape)
            full[layer.kernel] = kernel.astype(table.dtype)
            if layer.bias is not None:
                full[layer.bias] = jnp.sum(weighted, axis=0).astype(leaves[layer.bias].dtype)
        return treedef.unflatten(full)

    return Linearized(values, aux, gram, update)


def _kernel_vjp(conv: _Conv, x, kernel):
    """``D -> dL/dW`` for a captured convolution ``y = conv(x, W)`` and output cotangent D,
    in float32 or wider."""
    x = _wide(jax.lax.stop_gradient(x))
    _, vjp = jax.vjp(lambda w: _convolve(conv, x, w), _wide(kernel).astype(x.dtype))
    return lambda d: vjp(d.astype(x.dtype))[0]


def _per_example_gram(a, d, bias):
    """``sum_l <J_b, J_c>`` of one layer for per-example objectives: ``a [B, P, in]``,
    ``d [B, P, out]`` (P positions per example)."""
    if a.shape[1] == 1:
        a, d = a[:, 0], d[:, 0]
        return (a @ a.T + bias) * (d @ d.T)
    jac = jnp.einsum("bpi,bpo->bio", a, d).reshape(a.shape[0], -1)
    summed = jnp.sum(d, axis=1)
    return jac @ jac.T + bias * (summed @ summed.T)


def _multitask_gram(a, d, bias):
    """One layer's ``G_ts = <D_t, (A A^T + 1) D_s>``: ``a [N, in]``, ``d [m, N, out]``; by
    the N x N kernel or by the per-objective blocks ``A^T D_t``, whichever costs less."""
    m, n, out = d.shape
    width = a.shape[1]
    by_kernel = n * n * width + m * n * n * out + m * m * n * out
    by_blocks = m * n * width * out + m * m * width * out
    if by_kernel <= by_blocks:
        kernel = a @ a.T + bias
        return jnp.einsum("tno,sno->ts", d, jnp.einsum("nk,sko->sno", kernel, d))
    blocks = jnp.einsum("ni,tno->tio", a, d).reshape(m, -1)
    summed = jnp.sum(d, axis=1)
    return blocks @ blocks.T + bias * (summed @ summed.T)


def _per_example_embed_gram(ids, d):
    """An embedding's per-example Gramian: ``G_bc = sum_{p,q} [id_bp = id_cq] <d_bp, d_cq>``
    (``ids [B, P]``, ``d [B, P, dim]``): the one-hot inputs' kernel, never forming them."""
    same = (ids[:, :, None, None] == ids[None, None, :, :]).astype(d.dtype)  # [B, P, B, P]
    return jnp.einsum("bpcq,bpo,cqo->bc", same, d, d)


def _multitask_embed_gram(ids, d):
    """An embedding's ``G_ts = sum_{n,n'} [id_n = id_n'] <d_tn, d_sn'>`` (``ids [N]``)."""
    same = (ids[:, None] == ids[None, :]).astype(d.dtype)
    return jnp.einsum("tno,sno->ts", d, jnp.einsum("nk,sko->sno", same, d))


def linearize(fn, params, *, engine: str, per_example: Callable[[Any], bool] | bool = False
              ) -> Linearized:
    """``fn(params) -> (values [m], aux)`` through the named engine; ``per_example`` (a bool,
    or a function of ``aux``) says that objective b is batch row b's loss alone."""
    if engine == "jacobian":
        return jacobian_engine(fn, params)
    if engine == "gramian":
        return gramian_engine(fn, params)
    if engine == "values":
        return values_engine(fn, params)
    if engine == "layers":
        return layers_engine(fn, params, per_example=per_example)
    raise ValueError(f"`engine` must be one of {ENGINES} (or 'auto'), got {engine!r}")
