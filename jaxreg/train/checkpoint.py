"""Orbax checkpoints of a ``TrainState`` with the run's configuration beside it.

A checkpoint stores the state and a JSON record of the run (its configuration, the layout of
the state, and whatever the loop needs to continue exactly: history, running sums). Resuming
compares the stored configuration and layout with the current ones and refuses, naming the
differences, rather than silently continuing another run.

States may be sharded: every process calls ``save`` and Orbax writes each shard once. A
restore is made against an abstract target (shapes, dtypes and *shardings*), so a state saved
on one mesh is restored onto another (8 devices FSDP onto 4, sharded onto replicated, two
processes onto one) with the optimizer-state types of the target.

A checkpoint that cannot be read back as written (files of a step deleted or truncated, a
record that is not JSON, a step directory written by another program) is refused with a
``CheckpointError`` naming its path, never restored partly.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp

# What Orbax and TensorStore raise for missing, truncated or garbled files (TensorStore's
# errors are ValueErrors); device errors (RuntimeError) pass through as they are.
_UNREADABLE = (ValueError, KeyError, OSError, TypeError, EOFError)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, incomplete, foreign, or of another run.
    The message names its path and what is wrong."""


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

    def step_directory(self, step: int) -> str:
        """The directory that holds the checkpoint of ``step``."""
        return os.path.join(self.directory, str(step))

    def _check_items(self, step: int, items: tuple[str, ...]) -> str:
        """The step's directory, after checking it holds ``items`` as ``save`` writes them."""
        where = self.step_directory(step)
        if not os.path.isdir(where):
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} "
                                    f"(steps there: {list(self._manager.all_steps())})")
        missing = [item for item in items if not os.path.isdir(os.path.join(where, item))]
        if missing:
            found = sorted(os.listdir(where))
            raise CheckpointError(
                f"the checkpoint {where} has no {' or '.join(f'{m}/' for m in missing)} (it "
                f"holds {found}): it is incomplete, or was not written by "
                f"jaxreg.train.Checkpointer. {self._advice(step)}")
        return where

    def _advice(self, step: int) -> str:
        earlier = [s for s in self._manager.all_steps() if s < step]
        if earlier:
            return (f"Delete {self.step_directory(step)} to resume from step {max(earlier)}, "
                    "or use another directory.")
        return f"Delete {self.directory} to start afresh, or use another directory."

    def _unreadable(self, step: int, what: str, err: Exception) -> CheckpointError:
        detail = (str(err).strip().splitlines() or [""])[0]
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        return CheckpointError(
            f"the checkpoint {self.step_directory(step)} cannot be read ({what}: "
            f"{type(err).__name__}: {detail}): it is truncated or corrupted. "
            f"{self._advice(step)}")

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
            FileNotFoundError: when there is no checkpoint (of ``step``).
            CheckpointError: (a ``ValueError``) naming every leaf whose shape or dtype
                differs from the checkpoint's, or naming the checkpoint's path when its
                files are missing, truncated or not ``save``'s.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_items(step, ("state", "record"))
        record = self.read_record(step)
        saved = record.get("layout")
        if not isinstance(saved, dict):
            raise CheckpointError(
                f"the checkpoint {self.step_directory(step)} has no state layout in its "
                "record: it was not written by jaxreg.train.Checkpointer. "
                f"{self._advice(step)}")
        problems = differences(saved, layout(like_state))
        if problems:
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not fit the state to "
                "restore into:\n  " + "\n  ".join(problems))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
        if shardings is not None:
            abstract = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                abstract, shardings)
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract)))
        except _UNREADABLE as err:
            raise self._unreadable(step, "state", err) from err
        return out.state, record

    def read_record(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record saved with ``step`` (default: the latest).

        Raises:
            FileNotFoundError: when there is no checkpoint (of ``step``).
            CheckpointError: naming the checkpoint's path when the record is missing,
                unreadable or not a JSON object.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        self._check_items(step, ("record",))
        try:
            record = self._manager.restore(
                step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
        except _UNREADABLE as err:
            raise self._unreadable(step, "record", err) from err
        if not isinstance(record, dict):
            raise CheckpointError(
                f"the record of the checkpoint {self.step_directory(step)} is a "
                f"{type(record).__name__}, not a JSON object: it was not written by "
                f"jaxreg.train.Checkpointer. {self._advice(step)}")
        return record

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
