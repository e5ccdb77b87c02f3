"""``fit``: the training loop for one run, with evaluation, history files and checkpoints.

Batches come from ``jaxreg.data.batches``, a deterministic function of ``(seed, epoch)``, and
the PRNG key lives in the state, so a run resumed from a checkpoint at step s takes exactly
the steps an uninterrupted run would have taken from s: same batches, same keys, same
parameters at the end.

With ``sharding=`` (a ``jaxreg.train.sharding.ShardingPlan``) the state is placed on the
plan's mesh, the step is jitted with the plan's input and output shardings, and each process
reads only its rows of every global batch (``ShardingPlan.process_rows``), from which
``jax.make_array_from_process_local_data`` builds the global batch. The batches, the keys and
so the result are those of the unsharded run; on several hosts, call
``jaxreg.train.distributed.initialize`` first and give every process the same arguments.

A run whose training loss or terms turn NaN or inf stops with a ``NonFiniteError`` naming the
first such step and the terms, before any checkpoint of the damaged state is written (unless
the step skips such updates: ``make_step(..., skip_nonfinite=True)``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxreg.data.pipeline import batches, num_batches
from jaxreg.train.checkpoint import (
    Checkpointer,
    CheckpointError,
    differences,
    ensure_writable,
    layout,
)
from jaxreg.train.sharding import ShardingPlan, distinct_buffers
from jaxreg.train.state import TrainState


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or inf loss or term.

    Attributes:
        step: the first step (counted from 1) whose metrics were not finite.
        terms: the objective's terms that were not finite at that step (the metrics other
            than ``loss`` and diagnostics such as ``grad_norm/a``), else the metrics that were.
    """

    def __init__(self, message: str, *, step: int, terms: list[str]):
        super().__init__(message)
        self.step, self.terms = step, terms


def _to_float(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _check_positive_int(name: str, value, *, optional: bool = False) -> None:
    """Raises a ``ValueError`` naming ``name`` unless ``value`` is an integer >= 1 (or None,
    when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if optional else ''}"
                         f", got {value!r}")


def _num_examples(train_data) -> int:
    """The training set's size, checked: a non-empty mapping of equal-length arrays with at
    least one example, or a random-access source."""
    if isinstance(train_data, Mapping):
        if not train_data:
            raise ValueError("`train_data` is an empty mapping: give at least one array")
        lengths = {k: (np.shape(v)[0] if np.ndim(v) else None) for k, v in train_data.items()}
        for k, length in lengths.items():
            if length is None:
                raise ValueError(f"`train_data[{k!r}]` must have a leading example axis, got "
                                 "a scalar")
        if len(set(lengths.values())) != 1:
            raise ValueError("the arrays of `train_data` must share their leading (example) "
                             f"axis, got lengths {lengths}")
        n = next(iter(lengths.values()))
    elif hasattr(train_data, "__len__") and hasattr(train_data, "__getitems__"):
        n = len(train_data)
    else:
        raise TypeError("`train_data` must be a mapping of arrays or a random-access source "
                        f"with `__len__` and `__getitems__`, got {type(train_data).__name__}")
    if n < 1:
        raise ValueError("`train_data` holds no examples: training needs at least one batch")
    return n


def _check_batch_size(batch_size, n: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not (
            1 <= batch_size <= n):
        raise ValueError(f"`batch_size` must be an integer in [1, {n}] (the examples in "
                         f"`train_data`), got {batch_size!r}")


def _check_not_donated(state) -> None:
    """A state whose buffers an earlier ``fit`` (or a jitted step) donated cannot train again:
    name it, instead of JAX's "Array has been deleted" from inside the first step."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array) and leaf.is_deleted():
            raise ValueError(
                f"`state` holds a deleted array (at state{jax.tree_util.keystr(path)}): the "
                "jitted step donates the state's buffers, so a state given to an earlier "
                "`fit` or step cannot be reused; build a new one with `init_state`, or pass "
                "the state that call returned")


_RECORD_KEYS = {"run": dict, "layout": dict, "history": list, "sums": dict}


@jax.jit
def _accumulate(pending, metrics):
    """Adds one step's metrics to the sums since the last transfer, on device; ``first[k]``
    is the position (from 1) of the first of those steps where metric ``k`` was not finite,
    0 if none."""
    bad = {k: ~jnp.all(jnp.isfinite(v)) for k, v in metrics.items()}
    if pending is None:
        return {"sums": metrics, "count": jnp.int32(1),
                "first": {k: jnp.where(b, 1, 0) for k, b in bad.items()}}
    count = pending["count"] + 1
    first = {k: jnp.where((f == 0) & bad[k], count, f) for k, f in pending["first"].items()}
    return {"sums": jax.tree.map(jnp.add, pending["sums"], metrics), "count": count,
            "first": first}


def write_history(history: list[dict[str, Any]], out_dir: str) -> None:
    """Writes the history as ``history.json`` and ``history.csv`` in ``out_dir``."""
    with open(os.path.join(out_dir, "history.json"), "w") as f:
        json.dump(history, f, indent=1)
    columns = list(dict.fromkeys(k for row in history for k in row))
    with open(os.path.join(out_dir, "history.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def fit(step: Callable[[TrainState, dict], tuple[TrainState, dict]], state: TrainState,
        train_data, *, epochs: int, batch_size: int, seed: int,
        evaluate: Callable[[TrainState], Mapping[str, Any]] | None = None,
        eval_every: int = 1, out_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, config: Mapping[str, Any] | None = None,
        max_steps: int | None = None, progress: bool = True,
        sharding: ShardingPlan | None = None, async_checkpoints: bool = False,
        log_every: int | None = None,
        on_row: Callable[[dict[str, Any], float], None] | None = None,
        stop_on_nonfinite: bool = True,
        ) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains ``state`` with ``step`` for ``epochs`` epochs; returns the state and the history.

    Args:
        step: from ``make_step`` (``fit`` jits it).
        state: the initial state (ignored in favour of the checkpoint when resuming).
        train_data: a dict of equal-length arrays or a tfds data source; each batch is a dict
            with its ``"index"`` and ``"epoch"``.
        epochs: the number of epochs, a positive integer.
        batch_size: a positive integer, at most the number of examples.
        seed: a non-negative integer, which fixes the batch order.
        evaluate: ``evaluate(state) -> {name: scalar}``, run every ``eval_every`` rows.
        out_dir: where ``history.json``/``history.csv`` and ``checkpoints/`` are written.
        checkpoint_every: save every this many steps (and at the end); resume from the latest
            checkpoint in ``out_dir`` when there is one.
        config: a JSON-able description of the run (hyperparameters, model, data). A
            checkpoint made with another config, batch size, seed or state layout is refused.
        max_steps: stop after this many steps in total (for tests and interrupted runs).
        progress: show a progress bar (on the first process only).
        sharding: a ``ShardingPlan``: train on its mesh (build the step with the same plan,
            ``make_step(..., sharding=plan)``); ``batch_size`` is the global batch.
        async_checkpoints: write checkpoints in the background (``Checkpointer``'s
            ``async_save``).
        log_every: steps per history row (default: one row per epoch). A row holds the
            means of the step's metrics over its steps (moved off the device once per row),
            ``step``, ``epoch`` (the epoch it ends in, from 1) and the evaluation.
        on_row: ``on_row(row, seconds)`` after each row, with the wall time of its training
            steps (evaluation and checkpoints at row boundaries excluded; the first row's
            includes compilation).
        stop_on_nonfinite: raise ``NonFiniteError`` when a step's loss or a term is NaN or
            inf, checked where the metrics leave the device anyway (each row and each
            checkpoint), so no checkpoint of the damaged state is written. Off by itself when
            the step skips such updates (its metrics hold ``skipped``).

    Raises:
        ValueError: naming the argument, for a schedule that is not a positive integer, an
            empty ``train_data`` or a ``batch_size`` outside ``[1, examples]``.
        CheckpointError: (a ``ValueError``) naming the path, when the checkpoint to resume
            from was made by another run, is truncated or unreadable, or is not one of
            ``fit``'s.
        NonFiniteError: (a ``FloatingPointError``) naming the first non-finite step and its
            terms; the history up to the last finite row is written to ``out_dir``.
    """
    for name, value in (("epochs", epochs), ("eval_every", eval_every)):
        _check_positive_int(name, value)
    for name, value in (("checkpoint_every", checkpoint_every), ("max_steps", max_steps),
                        ("log_every", log_every)):
        _check_positive_int(name, value, optional=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}")
    _check_not_donated(state)
    n = _num_examples(train_data)
    _check_batch_size(batch_size, n)
    per_epoch = num_batches(n, batch_size)
    interval = log_every or per_epoch
    run_config = {"config": dict(config or {}), "batch_size": batch_size, "seed": seed,
                  "num_examples": n, "log_every": interval}
    history: list[dict[str, Any]] = []
    sums: dict[str, float] = {}
    checkpointer = None
    rows = None
    if sharding is not None:
        if batch_size % sharding.batch_size_multiple:
            raise ValueError(
                f"`batch_size` {batch_size} is not divisible by the {sharding.batch_size_multiple}"
                f" devices of the mesh axes {sharding.batch_axes} that split the batch")
        rows = sharding.process_rows(batch_size)
        state = sharding.put_state(state)
    else:
        state = distinct_buffers(state)  # the jitted step donates every leaf
    if out_dir is not None:
        out_dir = ensure_writable(out_dir)
    if checkpoint_every is not None:
        if out_dir is None:
            raise ValueError("`checkpoint_every` needs an `out_dir` to write checkpoints to")
        checkpointer = Checkpointer(os.path.join(out_dir, "checkpoints"),
                                    async_save=async_checkpoints)
        try:
            if checkpointer.latest_step() is not None:
                state, history, sums = _resume(checkpointer, state, run_config)
        except BaseException:
            checkpointer.close()
            raise

    jitted = None
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    start = int(state.step)
    bar = tqdm(total=total, initial=min(start, total), unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)

    pending, pending_count = None, 0  # metric sums still on the device since the last fold

    def fold():
        """Adds the device-side sums into ``sums`` (host floats): one transfer. Raises
        ``NonFiniteError`` if a step since the last fold had a non-finite metric."""
        nonlocal pending, pending_count
        if pending_count:
            host = jax.device_get(pending)
            values = {k: float(v) for k, v in host["sums"].items()}
            first = {k: int(v) for k, v in host["first"].items() if int(v)}
            if stop_on_nonfinite and "skipped" not in values and first:
                at = min(first.values())
                bad = [k for k, v in first.items() if v == at]
                # the objective's terms, not the loss or diagnostics such as ``cos/a,b``
                terms = [k for k in bad if k != "loss" and "/" not in k] or bad
                at += now - pending_count
                raise NonFiniteError(
                    f"training went non-finite at step {at}: {', '.join(terms)} "
                    f"{'is' if len(terms) == 1 else 'are'} NaN or inf. The checkpoints and "
                    "history rows before it are kept. Skip such steps with "
                    "make_step(..., skip_nonfinite=True), or pass stop_on_nonfinite=False "
                    "to go on.", step=at, terms=terms)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["_count"] = sums.get("_count", 0.0) + pending_count
        pending, pending_count = None, 0

    def save(step_now):
        fold()
        # A copy in plain JSON types, as it will be read back on resume.
        record = json.loads(json.dumps({"run": run_config, "history": history, "sums": sums}))
        checkpointer.save(step_now, state, record)

    now = start
    clock = time.perf_counter()
    try:
        for epoch in range(start // per_epoch, epochs):
            if now >= total:
                break
            offset = start - epoch * per_epoch if epoch == start // per_epoch else 0
            for batch in batches(train_data, batch_size, seed=seed, epoch=epoch, start=offset,
                                 rows=rows):
                if now >= total:
                    break
                batch["epoch"] = np.int32(epoch)
                if sharding is not None:
                    batch = sharding.put_batch(batch, batch_size)
                if jitted is None:
                    jitted = (jax.jit(step, donate_argnums=0) if sharding is None
                              else sharding.jit_step(step, state, batch))
                state, metrics = jitted(state, batch)
                now += 1
                pending = _accumulate(pending, metrics)  # one dispatch, no transfer
                pending_count += 1
                bar.update(1)
                last = now == epochs * per_epoch  # a last, shorter interval gets a row too
                if now % interval == 0 or last:
                    fold()
                    seconds = time.perf_counter() - clock
                    count = sums.pop("_count")
                    row = {"epoch": epoch + 1, "step": now,
                           **{f"train/{k}": v / count for k, v in sums.items()}}
                    sums = {}
                    if evaluate is not None and ((now // interval) % eval_every == 0 or last):
                        row.update({f"eval/{k}": v for k, v in _to_float(evaluate(state)).items()})
                    history.append(row)
                    if on_row is not None:
                        on_row(row, seconds)
                    clock = time.perf_counter()
                    bar.set_postfix({k.replace("train/", "train_").removeprefix("eval/"):
                                     f"{v:.4g}" for k, v in row.items()
                                     if k == "train/loss" or k.startswith("eval/")})
                if checkpointer is not None and now % checkpoint_every == 0:
                    save(now)
                    if now % interval == 0:
                        clock = time.perf_counter()  # a row's time leaves its saving out
        if checkpointer is not None and checkpointer.latest_step() != now:
            save(now)
    except NonFiniteError:
        if out_dir is not None:
            write_history(history, out_dir)
        raise
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.close()
    if out_dir is not None:
        write_history(history, out_dir)
    return state, history


def _resume(checkpointer: Checkpointer, state: TrainState, run_config: dict):
    """The state, history and running sums of the latest checkpoint, after checking that it
    is one of ``fit``'s, of this run, and readable."""
    step = checkpointer.latest_step()
    where = checkpointer.step_directory(step)
    record = checkpointer.read_record(step)
    problems = [f"`{key}` is missing" if key not in record else
                f"`{key}` is a {type(record[key]).__name__}, expected a {kind.__name__}"
                for key, kind in _RECORD_KEYS.items()
                if not isinstance(record.get(key), kind)]
    if problems:
        raise CheckpointError(
            f"refusing to resume from {where}: its record is not one written by `fit` ("
            + "; ".join(problems) + "). Use another `out_dir`, or move the checkpoints away.")
    problems = (differences(record["run"], json.loads(json.dumps(run_config)))
                + differences(record["layout"], layout(state)))
    if problems:
        raise CheckpointError(
            f"refusing to resume from {checkpointer.directory}: it was made by a "
            "different run:\n  " + "\n  ".join(problems)
            + "\nUse another `out_dir`, or delete the checkpoints to start afresh.")
    state, record = checkpointer.restore(state, step=step)
    return state, record["history"], record["sums"]
