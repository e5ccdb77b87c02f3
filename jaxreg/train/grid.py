"""``grid``: K hyperparameter configurations x S seeds trained as one jitted, vmapped program.

The purejaxrl idea made general: the step is pure, so ``vmap(vmap(epoch))`` over
(configuration, seed) is one XLA program that trains every member at once. Each epoch is a
``lax.scan`` over batches; the host loop over epochs only draws the progress bar and
collects metrics. Members of one seed share their initial parameters and batch order, so
configurations are compared on paired runs.

Given a mesh with a ``grid`` axis (``jaxreg.train.sharding.make_mesh``), the configurations
are split over ``grid`` and each configuration's batch over ``data`` x ``fsdp`` (with a
``ShardingPlan``, its parameters too): ``make_mesh(grid=4, data=2)`` trains K / 4
configurations per pair of devices, each pair splitting the batch. On several hosts, call
``jaxreg.train.distributed.initialize()`` first and pass the global mesh.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec
from tqdm.auto import tqdm

from jaxreg.data.pipeline import epoch_indices
from jaxreg.objective import Objective
from jaxreg.optim.sharpness import Perturbation
from jaxreg.train.loop import _check_batch_size, _check_positive_int, _num_examples
from jaxreg.train.sharding import ShardingPlan, data_parallel
from jaxreg.train.state import TrainState, init_state
from jaxreg.train.step import make_step


def product(**values: Sequence) -> dict[str, list]:
    """The Cartesian product of value lists, as the zipped lists ``grid`` takes.

    >>> product(q=[0.3, 0.7], learning_rate=[0.1, 0.01])
    {'q': [0.3, 0.3, 0.7, 0.7], 'learning_rate': [0.1, 0.01, 0.1, 0.01]}
    """
    names = list(values)
    rows = list(itertools.product(*(values[n] for n in names)))
    return {n: [row[i] for row in rows] for i, n in enumerate(names)}


def _configs(hparams: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    if not hparams:
        raise ValueError("`hparams` is empty: give at least one hyperparameter with its values")
    lengths = {name: len(values) for name, values in hparams.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "`hparams` value lists must all have the same length (one value per "
            f"configuration; use jaxreg.train.product for a Cartesian grid), got {lengths}")
    k = next(iter(lengths.values()))
    return [{name: hparams[name][i] for name in hparams} for i in range(k)]


def _as_array(values: Sequence) -> jax.Array:
    """Integer values stay integers (a loss index for ``lax.switch``); others become float32."""
    array = jnp.asarray(values)
    return array if jnp.issubdtype(array.dtype, jnp.integer) else array.astype(jnp.float32)


@dataclasses.dataclass
class GridResult:
    """What ``grid`` returns: per-epoch metrics and the final states, labelled.

    Attributes:
        configs: the K configurations, in order.
        seeds: the S seeds, in order.
        history: metric name -> array [K, S, epochs]; training means are ``train/<term>``,
            ``evaluate``'s outputs are ``eval/<name>``.
        state: the final ``TrainState``, each leaf with leading axes [K, S].
    """
    configs: list[dict[str, Any]]
    seeds: list[int]
    history: dict[str, np.ndarray]
    state: TrainState

    def label(self, k: int) -> str:
        return ", ".join(f"{n}={v}" for n, v in self.configs[k].items())

    def last(self, metric: str) -> np.ndarray:
        """The metric at the last epoch: ``[K, S]`` (``.tolist()`` for JSON)."""
        if metric not in self.history:
            raise KeyError(f"no metric {metric!r}; the history has {sorted(self.history)}")
        return self.history[metric][:, :, -1]

    def summary(self, metric: str) -> list[dict[str, Any]]:
        """Per configuration: the metric's last and best epoch, mean and std over seeds."""
        values = self.history[metric]
        rows = []
        for k, config in enumerate(self.configs):
            last, best = values[k, :, -1], values[k].max(axis=-1)
            rows.append({**config, "last_mean": float(last.mean()), "last_std": float(last.std()),
                         "best_mean": float(best.mean()), "best_std": float(best.std())})
        return rows

    def to_json(self) -> str:
        return json.dumps({"configs": self.configs, "seeds": self.seeds,
                           "history": {k: v.tolist() for k, v in self.history.items()}})


def _plan(mesh, sharding, init_params, key) -> ShardingPlan | None:
    if mesh is not None and sharding is not None:
        raise ValueError("give `mesh` or `sharding`, not both (the plan has its mesh)")
    if mesh is None and sharding is None:
        return None
    plan = sharding or data_parallel(mesh, jax.eval_shape(init_params, key))
    if "grid" not in plan.mesh.axis_names:
        raise ValueError(f"the mesh {dict(plan.mesh.shape)} has no `grid` axis to split the "
                         "configurations over; build it with "
                         "jaxreg.train.sharding.make_mesh(grid=...)")
    return plan


def grid(objective: Objective, optimizer: optax.GradientTransformation,
         init_params: Callable[[jax.Array], Any], train_data: Mapping[str, Any], *,
         hparams: Mapping[str, Sequence], seeds: Sequence[int], epochs: int, batch_size: int,
         evaluate: Callable[[TrainState, dict], Mapping[str, jax.Array]] | None = None,
         seed_data: Mapping[str, Any] | None = None,
         init_example_state: Callable[[dict], Any] | None = None,
         mesh: jax.sharding.Mesh | None = None, sharding: ShardingPlan | None = None,
         aggregator: optax.GradientTransformation | None = None,
         representation: Callable | None = None,
         term_order: Sequence[str] | None = None,
         perturbation: Perturbation | None = None,
         steps_per_epoch: int | None = None,
         on_epoch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
         progress: bool = True, desc: str = "grid", skip_nonfinite: bool = False,
         engine: str = "auto", gradient_metrics: bool = False) -> GridResult:
    """Trains every (configuration, seed) pair as one vmapped program.

    Args:
        objective: as for ``make_step``; reads its hyperparameters from ``hparams``.
        optimizer: an optax transformation; names it injects with ``optax.inject_hyperparams``
            (learning rate, weight decay) are set per configuration from ``hparams``.
        init_params: ``init_params(key) -> params``.
        train_data: dict of arrays with a common leading axis N (the training set).
        hparams: name -> K values (zipped: the i-th values form configuration i). Use
            ``product`` for a Cartesian grid.
        seeds: S integer seeds; each fixes the initial parameters, the batch order and the
            step keys of its members.
        epochs: the number of epochs, a positive integer.
        batch_size: a positive integer, at most N (the last partial batch of an epoch is
            dropped).
        evaluate: ``evaluate(state, data) -> {name: scalar}``, jittable, run after each epoch
            on each member (``data`` is that member's training data, seed data included).
        seed_data: name -> array [S, N, ...], per-seed training arrays (noisy labels drawn
            with each seed) that override or extend ``train_data``.
        init_example_state: ``init_example_state(data) -> per-example state`` (leading axis
            N), for objectives that keep one.
        mesh: a device mesh with a ``grid`` axis (``jaxreg.train.sharding.make_mesh``): the K
            configurations are split over ``grid`` (K must be divisible by its size), each
            configuration's batch over ``data`` and ``fsdp``, its parameters replicated. None
            keeps everything on the default device.
        sharding: instead of ``mesh``, a ``ShardingPlan`` (of one member's parameters, e.g.
            ``fully_sharded(mesh, jax.eval_shape(init_params, key))``) whose mesh has a
            ``grid`` axis: configurations on ``grid``, each member laid out by the plan.
        aggregator: a ``jaxreg.multiobjective`` aggregator: every member differentiates the
            objective's terms separately and aggregates them (its hyperparameters, injected
            with ``optax.inject_hyperparams``, can be swept like the optimizer's).
        representation: with ``aggregator``, aggregate on this shared representation
            (MGDA-UB), as in ``make_step``.
        term_order: the order of the objectives given to the aggregator, as in ``make_step``.
        perturbation: a sharpness-aware perturbation (``jaxreg.optim.sharpness``), as in
            ``make_step``; its hyperparameters (``rho``, ...) can be swept in ``hparams``.
        steps_per_epoch: train only the first this many batches of each epoch's order (a new
            random subset every epoch): evaluation and logging every so many steps over a
            large dataset (a text corpus) instead of every pass.
        on_epoch: ``on_epoch(epoch, metrics)`` after each epoch, with that epoch's metrics as
            host arrays [K, S] (for logging, early inspection or timing).
        progress: show a progress bar over epochs.
        skip_nonfinite: members skip the updates whose loss, terms or gradients are not
            finite, as ``make_step(..., skip_nonfinite=True)``; ``train/skipped`` is then the
            fraction of each epoch's steps skipped. Off, a NaN stays in that member's
            history and parameters (the other members are unaffected).
        engine: as for ``make_step`` (with an ``aggregator``).
        gradient_metrics: as for ``make_step`` (with an ``aggregator``).

    Raises:
        ValueError: naming the argument, for an empty or ragged ``train_data``, ``epochs``
            or ``batch_size`` out of range, and the other mismatches above.
    """
    configs = _configs(hparams)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("`seeds` is empty")
    _check_positive_int("epochs", epochs)
    train_data = {k: jnp.asarray(v) for k, v in train_data.items()}
    seed_data = {k: jnp.asarray(v) for k, v in (seed_data or {}).items()}
    n = _num_examples(train_data)
    _check_batch_size(batch_size, n)
    for name, value in seed_data.items():
        if value.shape[:2] != (len(seeds), n):
            raise ValueError(f"`seed_data[{name!r}]` must have leading shape "
                             f"({len(seeds)}, {n}) = (seeds, examples), got {value.shape}")
    if steps_per_epoch is not None and not (
            isinstance(steps_per_epoch, int) and 1 <= steps_per_epoch <= n // batch_size):
        raise ValueError(f"`steps_per_epoch` must be an integer in [1, {n // batch_size}] (the "
                         f"batches in an epoch), got {steps_per_epoch!r}")
    values = {name: _as_array(v) for name, v in hparams.items()}
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    plan = _plan(mesh, sharding, init_params, keys[0])
    step = make_step(objective, optimizer, aggregator=aggregator, representation=representation,
                     term_order=term_order, perturbation=perturbation, sharding=plan,
                     skip_nonfinite=skip_nonfinite, engine=engine,
                     gradient_metrics=gradient_metrics)

    def init_member(hp, key, own):
        init_key, train_key = jax.random.split(key)
        data = {**train_data, **own}
        rows = init_example_state(data) if init_example_state is not None else None
        return init_state(init_params(init_key), optimizer, key=train_key, hparams=hp,
                          example_state=rows, aggregator=aggregator)

    def epoch_member(state, own, order, epoch):
        data = {**train_data, **own}

        def body(state, index):
            batch = {k: v[index] for k, v in data.items()}
            return step(state, {**batch, "index": index, "epoch": epoch})

        state, metrics = jax.lax.scan(body, state, order)
        metrics = {f"train/{k}": v.mean() for k, v in metrics.items()}
        if evaluate is not None:
            metrics.update({f"eval/{k}": v for k, v in evaluate(state, data).items()})
        return state, metrics

    # spmd_axis_name: the step's sharding constraints keep the configuration axis on `grid`
    # (without it, vmap would replicate that axis inside the step).
    spmd = None if plan is None else "grid"
    init_all = jax.vmap(jax.vmap(init_member, (None, 0, 0)), (0, None, None),
                        spmd_axis_name=spmd)
    epoch_all = jax.vmap(jax.vmap(epoch_member, (0, 0, 0, None)), (0, None, None, None),
                         spmd_axis_name=spmd)
    members = outputs = None  # shardings of the members' states and of (states, metrics)
    if plan is not None:
        if len(configs) % plan.mesh.shape["grid"]:
            raise ValueError(f"the {len(configs)} configurations cannot be split evenly over "
                             f"the mesh's `grid` axis of {plan.mesh.shape['grid']} devices; "
                             f"use a multiple of {plan.mesh.shape['grid']}")
        one = jax.eval_shape(init_member, {k: v[0] for k, v in values.items()}, keys[0],
                             {k: v[0] for k, v in seed_data.items()})
        members = jax.tree.map(lambda s: plan.named(PartitionSpec("grid", None, *s.spec)),
                               plan.state(one))
        outputs = (members, plan.named(PartitionSpec("grid")))
        values = jax.device_put(values, outputs[1])
    init_all = jax.jit(init_all, out_shardings=members)
    epoch_all = jax.jit(epoch_all, out_shardings=outputs, donate_argnums=0)
    state = init_all(values, keys, seed_data)
    history: dict[str, list] = {}
    bar = tqdm(range(epochs), desc=desc, disable=not progress, unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        order = jnp.asarray(np.stack([epoch_indices(s, epoch, n, batch_size)[:steps_per_epoch]
                                      for s in seeds]))
        state, metrics = epoch_all(state, seed_data, order, jnp.int32(epoch))
        metrics = jax.device_get(metrics)
        for name, value in metrics.items():
            history.setdefault(name, []).append(value)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        bar.set_postfix({name.split("/")[-1]: f"{float(np.mean(v[-1])):.3g}"
                         for name, v in history.items() if name in ("train/loss",)
                         or name.startswith("eval/")})
    return GridResult(configs=configs, seeds=seeds,
                      history={k: np.stack(v, axis=-1) for k, v in history.items()}, state=state)
