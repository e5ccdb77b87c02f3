"""Meshes, parameter sharding rules, and the shardings of a ``TrainState`` and its batches.

The train step is a pure function of ``(state, batch)``; sharding it is a matter of saying
where each array lives and letting XLA's SPMD partitioner insert the collectives. A
:class:`ShardingPlan` says it: a mesh with the named axes of :data:`MESH_AXES`, one
``PartitionSpec`` per parameter (the optimizer state follows its parameters), and the mesh
axes that split the batch. Three ways to build one, all from the parameters' shapes only:

- :func:`data_parallel`: parameters and optimizer state replicated, batches split over
  ``data`` x ``fsdp``.
- :func:`fully_sharded` (FSDP / ZeRO-3): each parameter split along its largest axis that
  the ``fsdp`` axis divides (replicated if none does), the batch over ``data`` x ``fsdp``;
  ``overrides`` pins leaves chosen by a path pattern to a spec of their own.
- :func:`from_logical_axes`: parameters that carry logical axis names (Flax's
  ``nn.with_logical_partitioning``, as ``jaxreg.models.transformer`` does) mapped to mesh
  axes by rules, as MaxText's ``logical_axis_rules``: :data:`DATA_PARALLEL`, :data:`FSDP` and
  :data:`FSDP_TENSOR` run the same model data-parallel, fully sharded, or fully sharded with
  tensor parallelism, by changing the rules only.

Meshes use ``AxisType.Auto`` axes: shardings propagate through the step (with constraints
on the batch and the gradients), so aggregators with loops (UPGrad's active set, PCGrad's
projections) run unchanged on sharded gradients.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxreg.train.state import TrainState

MESH_AXES = ("grid", "data", "fsdp", "tensor")
"""The mesh axes jaxreg names: ``grid`` splits a sweep's configurations, ``data`` and
``fsdp`` split the batch (``fsdp`` also splits the parameters), ``tensor`` splits layers."""

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

DATA_PARALLEL: Rules = (("batch", ("data", "fsdp")),)
"""Logical rules of pure data parallelism: every parameter replicated."""

FSDP: Rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"))
"""Fully sharded data parallelism: every leaf with a model dimension (``embed``) split along
it over ``fsdp``; the few without one (biases, norms) replicated."""

FSDP_TENSOR: Rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", "tensor"),
                      ("mlp", "tensor"), ("heads", "tensor"))
"""FSDP x tensor parallelism (Megatron-style): attention heads, MLP hidden units and the
vocabulary split over ``tensor``, the model dimension over ``fsdp``."""


def make_mesh(*, grid: int = 1, data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the axes ``("grid", "data", "fsdp", "tensor")`` over ``devices``.

    Args:
        grid: the size of the ``grid`` axis. One of the four sizes may be ``-1``, inferred
            from the device count (by default ``data`` takes every device the others leave).
        data: the size of the ``data`` axis.
        fsdp: the size of the ``fsdp`` axis.
        tensor: the size of the ``tensor`` axis.
        devices: default ``jax.devices()`` (every process's devices, after
            ``jaxreg.train.distributed.initialize``).

    Raises:
        ValueError: naming the axis, when the sizes do not multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = {"grid": grid, "data": data, "fsdp": fsdp, "tensor": tensor}
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise ValueError(f"mesh axis `{name}` must be a positive integer or -1 (inferred), "
                             f"got {size!r}")
    inferred = [name for name, size in sizes.items() if size == -1]
    if len(inferred) > 1:
        raise ValueError(f"only one mesh axis can be inferred (-1), got {inferred}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if inferred:
        if len(devices) % known:
            fixed = ", ".join(f"{n}={s}" for n, s in sizes.items() if s != -1)
            raise ValueError(f"mesh axes {fixed} (product {known}) do not divide the "
                             f"{len(devices)} devices, so `{inferred[0]}` cannot be inferred")
        sizes[inferred[0]] = len(devices) // known
    elif known != len(devices):
        raise ValueError(f"mesh axes {sizes} multiply to {known}, but there are "
                         f"{len(devices)} devices")
    return jax.make_mesh(tuple(sizes.values()), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _present(mesh: Mesh, axes: MeshAxes) -> tuple[str, ...]:
    """The axes of ``axes`` that ``mesh`` has (a mesh may omit jaxreg's axes)."""
    return tuple(a for a in _axes_tuple(axes) if a in mesh.axis_names)


def _size(mesh: Mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _shape(leaf) -> tuple[int, ...]:
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


def _paths(tree) -> list[tuple[str, Any]]:
    return [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check_spec(mesh: Mesh, spec: PartitionSpec, shape, where: str) -> PartitionSpec:
    if len(spec) > len(shape):
        raise ValueError(f"{where}: spec {spec} has {len(spec)} entries for a leaf of shape "
                         f"{tuple(shape)}")
    used = []
    for dim, axes in zip(shape, spec):
        axes = _axes_tuple(axes)
        unknown = [a for a in axes if a not in mesh.axis_names]
        if unknown:
            raise ValueError(f"{where}: spec {spec} names mesh axes {unknown} that the mesh "
                             f"{tuple(mesh.axis_names)} does not have")
        if dim % _size(mesh, axes):
            raise ValueError(f"{where}: dimension {dim} of shape {tuple(shape)} is not "
                             f"divisible by mesh axes {axes} (size {_size(mesh, axes)})")
        used += axes
    if len(set(used)) != len(used):
        raise ValueError(f"{where}: spec {spec} uses a mesh axis twice")
    return spec


def _apply_overrides(mesh, params, specs, overrides):
    """Replaces the spec of every leaf whose path matches a pattern (the first that does)."""
    if not overrides:
        return specs
    patterns = [(re.compile(p), PartitionSpec(*s) if not isinstance(s, PartitionSpec) else s)
                for p, s in dict(overrides).items()]
    leaves = _paths(params)
    for pattern, _ in patterns:
        if not any(pattern.search(path) for path, _ in leaves):
            raise ValueError(
                f"sharding override {pattern.pattern!r} matches no parameter; parameter paths "
                f"are: {', '.join(path for path, _ in leaves[:12])}"
                + (", ..." if len(leaves) > 12 else ""))
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    out = []
    for (path, leaf), spec in zip(leaves, flat_specs):
        for pattern, override in patterns:
            if pattern.search(path):
                spec = _check_spec(mesh, override, leaf.shape, f"override {pattern.pattern!r} "
                                                                f"on {path}")
                break
        out.append(spec)
    return jax.tree.unflatten(jax.tree.structure(params), out)


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """Where the parameters, the optimizer state and the batches of a run live.

    Attributes:
        mesh: the device mesh.
        param_specs: a pytree shaped like the parameters, each leaf a ``PartitionSpec``
            over the mesh's axes.
        batch_axes: mesh axes that split the leading (example) axis of every batch array.
    """
    mesh: Mesh
    param_specs: Any
    batch_axes: tuple[str, ...] = ("data", "fsdp")

    def __post_init__(self):
        # Shardings propagate (Auto axes) even from an Explicit mesh (``jax.make_mesh``'s
        # default): jax 0.10's sharding-in-types loses the mesh inside the loops of a vmapped
        # step (PCGrad's fori_loop, UPGrad's while_loop).
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"`mesh` must be a jax.sharding.Mesh, got {type(self.mesh).__name__}")
        auto = (jax.sharding.AxisType.Auto,) * self.mesh.devices.ndim
        if tuple(self.mesh.axis_types) != auto:
            object.__setattr__(self, "mesh", Mesh(self.mesh.devices, self.mesh.axis_names,
                                                  axis_types=auto))

    def named(self, spec: PartitionSpec) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_size_multiple(self) -> int:
        """The global batch must be a multiple of this (the size of ``batch_axes``)."""
        return _size(self.mesh, _present(self.mesh, self.batch_axes))

    def params(self) -> Any:
        """The parameters' ``NamedSharding`` tree."""
        return jax.tree.map(self.named, self.param_specs,
                            is_leaf=lambda x: isinstance(x, PartitionSpec))

    def state(self, state: TrainState) -> TrainState:
        """A ``TrainState`` of shardings for ``state`` (arrays or ``ShapeDtypeStruct``s).

        Parameters take their specs; an optimizer-state leaf whose path ends with a
        parameter's path and whose shape ends with that parameter's shape (Adam's moments;
        per-objective moments with a leading objective axis) takes the parameter's spec,
        leading axes replicated; every other leaf (counts, hyperparameters, the aggregator's
        small state, the key, per-example buffers) is replicated.
        """
        specs = jax.tree.leaves(self.param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        # The longest matching path wins: ['enc']['w'] before ['w'].
        params = sorted(((path, tuple(leaf.shape), spec) for (path, leaf), spec
                         in zip(_paths(state.params), specs)), key=lambda p: -len(p[0]))

        def follow(path, leaf):
            path = jax.tree_util.keystr(path)
            shape = _shape(leaf)
            for param_path, param_shape, spec in params:
                extra = len(shape) - len(param_shape)
                if path.endswith(param_path) and extra >= 0 and shape[extra:] == param_shape:
                    return self.named(PartitionSpec(*(None,) * extra, *spec))
            return self.replicated

        replicated = lambda tree: jax.tree.map(lambda _: self.replicated, tree)
        return state.replace(
            params=self.params(),
            opt_state=jax.tree_util.tree_map_with_path(follow, state.opt_state),
            step=self.replicated, key=self.replicated, hparams=replicated(state.hparams),
            example_state=replicated(state.example_state))

    def batch_spec(self, leaf) -> PartitionSpec:
        """The spec of one batch array: its leading axis split over ``batch_axes``."""
        if not _shape(leaf):
            return PartitionSpec()
        axes = _present(self.mesh, self.batch_axes)
        n = _shape(leaf)[0]
        if n % _size(self.mesh, axes):
            raise ValueError(
                f"the batch of {n} examples is not divisible by the mesh axes {axes} that "
                f"split it (size {_size(self.mesh, axes)}); use a batch size that is a "
                f"multiple of {_size(self.mesh, axes)}")
        return PartitionSpec(_entry(axes))

    def batch(self, batch) -> Any:
        """The ``NamedSharding`` tree of a batch (scalars such as ``epoch`` replicated)."""
        return jax.tree.map(lambda leaf: self.named(self.batch_spec(leaf)), batch)

    def constrain_batch(self, batch):
        """``with_sharding_constraint`` of a batch inside a traced step."""
        return jax.tree.map(lambda leaf: jax.lax.with_sharding_constraint(
            leaf, self.named(self.batch_spec(leaf))), batch)

    def constrain_like_params(self, tree, leading: int = 0):
        """Constrains a params-shaped tree (gradients; with ``leading`` extra axes, a stacked
        per-objective Jacobian) to the parameters' shardings."""
        specs = jax.tree.leaves(self.param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
        leaves = jax.tree.leaves(tree)
        constrained = [jax.lax.with_sharding_constraint(
            leaf, self.named(PartitionSpec(*(None,) * leading, *spec)))
            for leaf, spec in zip(leaves, specs)]
        return jax.tree.unflatten(jax.tree.structure(tree), constrained)

    def jit_step(self, step, state: TrainState, batch):
        """``jax.jit(step)`` with explicit shardings: the state's (in and out, donated), the
        batch's, and replicated metrics."""
        state_shardings = self.state(state)
        return jax.jit(step, in_shardings=(state_shardings, self.batch(batch)),
                       out_shardings=(state_shardings, self.replicated), donate_argnums=0)

    def put_state(self, state: TrainState) -> TrainState:
        """``state`` placed on the mesh (every process passes the same host values)."""
        return jax.device_put(distinct_buffers(state), self.state(state))

    def process_rows(self, global_batch_size: int) -> slice:
        """The rows of a global batch that this process's devices hold (contiguous)."""
        spec = self.batch_spec(np.zeros((global_batch_size,), np.int8))
        indices = self.named(spec).addressable_devices_indices_map((global_batch_size,))
        rows = sorted({i for index in indices.values()
                       for i in range(*index[0].indices(global_batch_size))})
        if rows != list(range(rows[0], rows[-1] + 1)):
            raise ValueError("this process's devices hold non-contiguous rows of the batch; "
                             "build the mesh with jaxreg.train.sharding.make_mesh")
        return slice(rows[0], rows[-1] + 1)

    def put_batch(self, local_batch: Mapping[str, Any], global_batch_size: int) -> dict:
        """Global batch arrays from this process's rows (``process_rows``), with
        ``jax.make_array_from_process_local_data``; scalars are replicated."""
        out = {}
        for name, value in local_batch.items():
            value = np.asarray(value)
            if value.ndim == 0:
                out[name] = jax.device_put(value, self.replicated)
                continue
            shape = (global_batch_size, *value.shape[1:])
            out[name] = jax.make_array_from_process_local_data(
                self.named(self.batch_spec(np.zeros(shape[:1]))), value, shape)
        return out


def distinct_buffers(tree):
    """``tree`` with every array that appears more than once copied, so that a step can
    donate each leaf (an optimizer's ``init`` may reuse one array of zeros for two leaves,
    and XLA refuses to donate one buffer twice)."""
    seen = set()

    def one(leaf):
        if isinstance(leaf, jax.Array):
            if id(leaf) in seen:
                return jax.numpy.copy(leaf)
            seen.add(id(leaf))
        return leaf

    return jax.tree.map(one, tree)


def data_parallel(mesh: Mesh, params, *, batch_axes: Sequence[str] = ("data", "fsdp")
                  ) -> ShardingPlan:
    """Every parameter replicated; batches split over ``batch_axes``."""
    specs = jax.tree.map(lambda _: PartitionSpec(), params)
    return ShardingPlan(mesh, specs, tuple(batch_axes))


def fully_sharded(mesh: Mesh, params, *, axis: str = "fsdp",
                  overrides: Mapping[str, Any] | None = None,
                  batch_axes: Sequence[str] = ("data", "fsdp")) -> ShardingPlan:
    """FSDP: each parameter split along its largest dimension divisible by the ``axis`` size.

    Args:
        mesh: the mesh (it must have ``axis``).
        params: parameters or their shapes (``jax.eval_shape(init, key)``).
        axis: the mesh axis that splits the parameters.
        overrides: ``{regex: PartitionSpec or tuple}``, matched (``re.search``) against each
            leaf's path (``jax.tree_util.keystr``, e.g. ``"['params']['Dense_0']['bias']"``);
            the first pattern that matches gives the leaf's spec (``PartitionSpec()``:
            replicated). A pattern that matches no leaf is an error.
        batch_axes: mesh axes that split the batch.
    """
    if axis not in mesh.axis_names:
        raise ValueError(f"`axis` {axis!r} is not an axis of the mesh {tuple(mesh.axis_names)}")
    size = mesh.shape[axis]

    def spec(leaf):
        shape = tuple(leaf.shape)
        candidates = [d for d in range(len(shape)) if shape[d] % size == 0 and shape[d] >= size]
        if size == 1 or not candidates:
            return PartitionSpec()
        dim = max(candidates, key=lambda d: (shape[d], -d))  # the largest; the first of ties
        return PartitionSpec(*(axis if d == dim else None for d in range(len(shape))))

    specs = jax.tree.map(spec, params)
    return ShardingPlan(mesh, _apply_overrides(mesh, params, specs, overrides),
                        tuple(batch_axes))


def logical_to_mesh(mesh: Mesh, logical: PartitionSpec, shape, rules: Rules) -> PartitionSpec:
    """Maps one leaf's logical axis names to mesh axes by ``rules``.

    For each dimension, the rules naming its logical axis are tried in order; the first
    whose mesh axes are present in the mesh, not yet used by this leaf, and divide the
    dimension is taken; otherwise the dimension is replicated (MaxText's resolution).
    """
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {logical} do not match a leaf of shape {tuple(shape)}")
    used: set[str] = set()
    out = []
    for name, dim in zip(logical, shape):
        chosen: tuple[str, ...] = ()
        for rule_name, axes in rules:
            if rule_name != name:
                continue
            axes = _present(mesh, axes)
            if axes and not used & set(axes) and dim % _size(mesh, axes) == 0:
                chosen = axes
                break
        used |= set(chosen)
        out.append(_entry(chosen))
    return PartitionSpec(*out)


def from_logical_axes(mesh: Mesh, params, logical_axes, *, rules: Rules = FSDP,
                      overrides: Mapping[str, Any] | None = None) -> ShardingPlan:
    """Parameters with logical axis names (``logical_axes``: a params-shaped tree of
    ``PartitionSpec`` of names, e.g. a transformer's ``("embed", "mlp")``) sharded by
    ``rules``; the batch is split over the mesh axes the rules give to ``"batch"``."""
    logical_leaves = jax.tree.leaves(logical_axes, is_leaf=lambda x: isinstance(x, PartitionSpec))
    leaves = jax.tree.leaves(params)
    if len(logical_leaves) != len(leaves):
        raise ValueError(f"`logical_axes` has {len(logical_leaves)} leaves, the parameters "
                         f"{len(leaves)}: they must have the same structure")
    specs = jax.tree.unflatten(jax.tree.structure(params), [
        logical_to_mesh(mesh, logical, leaf.shape, rules)
        for logical, leaf in zip(logical_leaves, leaves)])
    batch_axes = next((_axes_tuple(axes) for name, axes in rules if name == "batch"), ())
    return ShardingPlan(mesh, _apply_overrides(mesh, params, specs, overrides), batch_axes)


def per_device_bytes(tree) -> int:
    """Bytes of ``tree``'s arrays held by the first addressable device (each shard counted
    where it lives)."""
    device = jax.local_devices()[0]
    return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree)
               for shard in leaf.addressable_shards if shard.device == device)
