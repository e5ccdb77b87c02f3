"""Engines: the objectives' Gramian ``G = J J^T`` and the update ``J^T w``, with or without J.

A multi-objective step needs, for m objectives ``f(params) -> [m]``, their Gramian (what a
weighting reads) and the combination ``J^T w`` of their gradients (the update). Three
engines give both, equal to float32 rounding (``jaxreg.train.make_step(..., engine=)``):

- ``"jacobian"``: J from one forward pass and a VJP vmapped over the m objectives; every
  aggregator works on it, and those that need J itself (GradDrop, GradNorm, Bloop, M-ConFIG,
  MultiAdam) only on it. Memory O(m n) for n parameters.
- ``"gramian"``: G accumulated one parameter leaf at a time (the vmapped VJP restricted to
  that leaf, its block ``J_l J_l^T`` added before the next leaf's is computed), so memory is
  O(m^2 + the largest block); the update is one more VJP, with cotangent w. Any function.
- ``"layers"``: the ``flax.linen.Dense`` layers the function calls are captured by method
  interception. For a layer with inputs A (rows n) and output cotangents ``D_t`` of
  objective t, objective t's gradient is ``A^T D_t`` (kernel) and ``sum_n D_t`` (bias), so

      G_ts = sum_layers <D_t, (A A^T + 1) D_s>,     update = A^T (sum_t w_t D_t),

  with no Jacobian and no second backward pass (Quinton & Rey's Gramian-based Jacobian
  descent, torchjd's ``autogram``). The cotangents come from a VJP vmapped over the m
  objectives with respect to the layer outputs only; for per-example objectives (IWRM,
  ``jaxreg.objective.per_example``: objective b is example b's loss and depends on batch row
  b only) one backward pass gives all of them, and ``G = (A A^T + 1) * (D D^T)`` per layer
  (its per-example sum over the positions of a sequence otherwise). Parameters outside
  captured layers (a Dense layer called twice, other layer types) get their blocks as in
  ``"jacobian"``, and a warning says which, once.

Each engine returns a :class:`Linearized`.
"""

from __future__ import annotations

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


def gramian_engine(fn, params) -> Linearized:
    """G leaf by leaf without keeping J; the update by one more VJP."""
    values, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
    basis = _basis(values)
    m = values.shape[0]
    gram = jnp.zeros((m, m), jnp.promote_types(values.dtype, jnp.float32))
    count = len(jax.tree.leaves(params))
    for index in range(count):
        # the barrier orders the blocks: leaf i's block is built after leaf i-1's was added
        gram, basis = jax.lax.optimization_barrier((gram, basis))
        block = jax.vmap(lambda e: jax.tree.leaves(vjp_fn(e)[0])[index])(basis)
        block = _wide(block.reshape(m, -1))
        gram = gram + block @ block.T

    def update(w):
        (grads,) = vjp_fn(w.astype(values.dtype))
        return grads

    return Linearized(values, aux, gram, update)


class _DenseCall(NamedTuple):
    kernel: int  # leaf indices in the parameters
    bias: int | None
    output: jax.ShapeDtypeStruct


def _is_dense(context) -> bool:
    import flax.linen as nn

    module = context.module
    return (type(module) is nn.Dense and context.method_name == "__call__"
            and module.dot_general is None and module.dot_general_cls is None)


def _dense_calls(fn, params) -> list[_DenseCall | None]:
    """The plain ``nn.Dense`` calls of ``fn(params)`` in call order, each with the leaf
    indices of its kernel and bias and its output's shape (None for a call whose parameters
    are not leaves of ``params``, or with a custom ``dot_general``); one abstract trace."""
    import flax.linen as nn

    calls: list[_DenseCall | None] = []

    def traced(p):
        ids = {id(leaf): i for i, leaf in enumerate(jax.tree.leaves(p))}

        def interceptor(next_fun, args, kwargs, context):
            if type(context.module) is nn.Dense and context.method_name == "__call__":
                own = context.module.variables.get("params", {})
                kernel = ids.get(id(own.get("kernel")))
                bias = ids.get(id(own.get("bias"))) if "bias" in own else None
                ok = (_is_dense(context) and kernel is not None
                      and ("bias" not in own or bias is not None))
                out = next_fun(*args, **kwargs)
                shape = jax.ShapeDtypeStruct(jnp.shape(out), jnp.result_type(out))
                calls.append(_DenseCall(kernel, bias, shape) if ok else None)
                return out
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            return fn(p)

    jax.eval_shape(traced, params)
    return calls


def _run_captured(fn, params, captured, constants, on_output, inputs):
    """``fn(params)`` with each captured Dense call k computed as flax's ``Dense.__call__``
    does, but from the ``constants`` leaves (so no gradient reaches its kernel and bias
    through it), its output y replaced by ``on_output(k, y)`` (adding a zero probe whose
    cotangent is ``D``) and its input stored in ``inputs[k]``."""
    import flax.linen as nn

    counter = [0]

    def interceptor(next_fun, args, kwargs, context):
        if not (type(context.module) is nn.Dense and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        k = counter[0]
        counter[0] += 1
        if k not in captured:
            return next_fun(*args, **kwargs)
        module, call = context.module, captured[k]
        x = args[0]
        bias = None if call.bias is None else constants[call.bias]
        x_, kernel, bias = module.promote_dtype(x, constants[call.kernel], bias,
                                                dtype=module.dtype)
        y = jax.lax.dot_general(x_, kernel, (((x_.ndim - 1,), (0,)), ((), ())),
                                precision=module.precision)
        if bias is not None:
            y = y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
        inputs[k] = x_
        return on_output(k, y)

    with nn.intercept_methods(interceptor):
        return fn(params)


def _used_elsewhere(fn, treedef, leaves, captured) -> set[int]:
    """The captured leaves that ``fn`` also uses outside their layer (a weight penalty, a
    tied embedding): found in the jaxpr of ``fn`` with the layers computed from constants."""
    owned = sorted({i for call in captured.values() for i in (call.kernel, call.bias)
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
        warnings.warn("engine='layers': these parameters are outside captured nn.Dense layers "
                      f"and get their Jacobian blocks by vmapped VJPs: {', '.join(names)}",
                      stacklevel=4)


def layers_engine(fn, params, *, per_example: Callable[[Any], bool] | bool = False
                  ) -> Linearized:
    """G from the captured Dense layers' inputs and output cotangents (see the module
    docstring). ``per_example`` (or ``per_example(aux)``): objective b is the loss of batch
    row b alone."""
    leaves, treedef = jax.tree.flatten(params)
    calls = _dense_calls(fn, params)
    uses: dict[int, int] = {}
    for call in calls:
        if call is not None:
            for index in (call.kernel, call.bias):
                if index is not None:
                    uses[index] = uses.get(index, 0) + 1
    # a layer is captured when it is called once, its leaves serve no other call, and the
    # function uses them nowhere else
    captured = {k: call for k, call in enumerate(calls) if call is not None
                and uses[call.kernel] == 1 and (call.bias is None or uses[call.bias] == 1)
                and jnp.ndim(leaves[call.kernel]) == 2}
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
        if rest:
            rest_jacobian = jax.vmap(lambda e: vjp_fn(e)[0])(basis)
    else:
        rest_jacobian, cotangents = jax.vmap(vjp_fn)(basis)
    gram = gramian(rest_jacobian) if rest else jnp.zeros(
        (m, m), jnp.promote_types(values.dtype, jnp.float32))
    layers = {}
    for k, call in captured.items():
        a, d = _wide(inputs[k]), _wide(cotangents[k])
        bias = 0.0 if call.bias is None else 1.0
        if rows:
            a = a.reshape(m, -1, a.shape[-1])  # [B, positions, in]
            d = d.reshape(m, -1, d.shape[-1])  # [B, positions, out]
            gram = gram + _per_example_gram(a, d, bias)
        else:
            a = a.reshape(-1, a.shape[-1])  # [N, in]
            d = d.reshape(m, -1, d.shape[-1])  # [m, N, out]
            gram = gram + _multitask_gram(a, d, bias)
        layers[k] = (a, d)

    def update(w):
        w = w.astype(gram.dtype)
        full = [None] * len(leaves)
        if rest:
            for i, g in zip(rest, combine(w, rest_jacobian)):
                full[i] = g
        for k, call in captured.items():
            a, d = layers[k]
            if rows:
                weighted = d * w[:, None, None]  # [B, positions, out]
                kernel = jnp.einsum("bpi,bpo->io", a, weighted)
                bias = jnp.sum(weighted, axis=(0, 1))
            else:
                weighted = jnp.einsum("t,tno->no", w, d)
                kernel, bias = a.T @ weighted, jnp.sum(weighted, axis=0)
            full[call.kernel] = kernel.astype(leaves[call.kernel].dtype)
            if call.bias is not None:
                full[call.bias] = bias.astype(leaves[call.bias].dtype)
        return treedef.unflatten(full)

    return Linearized(values, aux, gram, update)


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
