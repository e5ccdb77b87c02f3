"""Orbax checkpoints of a ``TrainState`` with the run's configuration beside it.

A checkpoint stores the state and a JSON record of the run (its configuration, the layout of
the state, and whatever the loop needs to continue exactly: history, running sums). Resuming
compares the stored configuration and layout with the current ones and refuses, naming the
differences, rather than silently continuing another run.

States may be sharded: every process calls ``save`` and Orbax writes each shard once. A
restore is made against an abstract target (shapes, dtypes and *shardings*), so a state saved
on one mesh is restored onto another (8 devices FSDP onto 4, sharded onto replicated, two
processes onto one) with the optimizer-state types of the target.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp


def ensure_writable(directory: str | os.PathLike) -> str:
    """Creates ``directory`` if needed and checks a file can be written there."""
    directory = os.path.abspath(os.fspath(directory))
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise PermissionError(
            f"checkpoint directory {directory!r} is not writable ({err.strerror}); "
            "choose another `out_dir` or fix its permissions") from None
    return directory


def layout(tree) -> dict[str, str]:
    """``{path: "dtype[shape]"}`` for every leaf: what a compatible checkpoint must match."""
    return {jax.tree_util.keystr(path): f"{leaf.dtype}{list(leaf.shape)}"
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences between two flat dicts."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if saved.get(key) != current.get(key):
            out.append(f"{key}: checkpoint has {saved.get(key)!r}, this run has "
                       f"{current.get(key)!r}")
    return out


class Checkpointer:
    """Saves and restores ``(state, record)`` pairs under ``directory``, keyed by step.

    Args:
        directory: where the checkpoints live (created if needed).
        max_to_keep: checkpoints kept; older ones are deleted.
        async_save: write in a background thread, so training continues while a large state
            is written. A checkpoint counts (``latest_step``) only once it is committed: a
            run killed during an asynchronous save resumes from the previous one, still
            exactly. Synchronous by default, so a step reported saved survives a SIGKILL
            right after.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2,
                 async_save: bool = False):
        self.directory = ensure_writable(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "record"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, record: dict[str, Any]) -> None:
        """Saves ``state`` and ``record`` (JSON types); the state's layout is recorded too."""
        record = {**record, "layout": layout(state)}
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))

    def restore(self, like_state, *, step: int | None = None, shardings=None):
        """Restores ``(state, record)`` as ``like_state`` is: structure, shapes, dtypes and
        shardings.

        Args:
            like_state: the target, as arrays or ``jax.ShapeDtypeStruct`` (with their
                ``sharding``): the restored arrays are laid out as it is, whatever mesh the
                checkpoint was written from.
            step: the step to restore (default: the latest).
            shardings: optionally, a tree of shardings shaped like ``like_state`` that
                replaces its shardings (e.g. ``ShardingPlan.state(state)`` of another mesh).

        Raises:
            ValueError: naming every leaf whose shape or dtype differs from the checkpoint's.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        saved = self.read_record(step).get("layout")
        problems = differences(saved, layout(like_state)) if saved is not None else []
        if problems:
            raise ValueError(f"the checkpoint at step {step} in {self.directory} does not fit "
                             "the state to restore into:\n  " + "\n  ".join(problems))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        if shardings is not None:
            abstract = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                abstract, shardings)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), record=ocp.args.JsonRestore()))
        return out.state, out.record

    def read_record(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self._manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
