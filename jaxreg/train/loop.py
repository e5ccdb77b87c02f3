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
from jaxreg.train.checkpoint import Checkpointer, differences, ensure_writable, layout
from jaxreg.train.sharding import ShardingPlan, distinct_buffers
from jaxreg.train.state import TrainState


def _to_float(tree) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


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
        on_row: Callable[[dict[str, Any], float], None] | None = None
        ) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains ``state`` with ``step`` for ``epochs`` epochs; returns the state and the history.

    Args:
        step: from ``make_step`` (``fit`` jits it).
        state: the initial state (ignored in favour of the checkpoint when resuming).
        train_data: a dict of equal-length arrays or a tfds data source; each batch is a dict
            with its ``"index"`` and ``"epoch"``.
        epochs, batch_size, seed: the schedule; the seed fixes the batch order.
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
    """
    n = len(next(iter(train_data.values()))) if isinstance(train_data, Mapping) else len(train_data)
    per_epoch = num_batches(n, batch_size)
    if log_every is not None and (not isinstance(log_every, int) or log_every < 1):
        raise ValueError(f"`log_every` must be a positive integer, got {log_every!r}")
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
        if checkpointer.latest_step() is not None:
            record = checkpointer.read_record()
            problems = (differences(record["run"], json.loads(json.dumps(run_config)))
                        + differences(record["layout"], layout(state)))
            if problems:
                checkpointer.close()
                raise ValueError(
                    f"refusing to resume from {checkpointer.directory}: it was made by a "
                    "different run:\n  " + "\n  ".join(problems)
                    + "\nUse another `out_dir`, or delete the checkpoints to start afresh.")
            state, record = checkpointer.restore(state)
            history, sums = record["history"], record["sums"]

    jitted = None
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    start = int(state.step)
    bar = tqdm(total=total, initial=min(start, total), unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)

    pending, pending_count = None, 0  # metric sums still on the device since the last fold

    def fold():
        """Adds the device-side sums into ``sums`` (host floats): one transfer."""
        nonlocal pending, pending_count
        if pending_count:
            for k, v in _to_float(pending).items():
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
                pending = metrics if pending is None else jax.tree.map(jnp.add, pending, metrics)
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
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.close()
    if out_dir is not None:
        write_history(history, out_dir)
    return state, history
