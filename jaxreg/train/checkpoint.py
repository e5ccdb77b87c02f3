"""Orbax checkpoints of a ``TrainState`` with the run's configuration beside it.

A checkpoint stores the state and a JSON record of the run (its configuration, the layout of
the state, and whatever the loop needs to continue exactly: history, running sums). Resuming
compares the stored configuration and layout with the current ones and refuses, naming the
differences, rather than silently continuing another run.
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
    """Saves and restores ``(state, record)`` pairs under ``directory``, keyed by step."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2):
        self.directory = ensure_writable(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "record"),
            # Synchronous: a step reported saved survives a SIGKILL right after (an async
            # save is only committed later, and a kill in between loses it).
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, record: dict[str, Any]) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))

    def restore(self, like_state, *, step: int | None = None):
        """Restores ``(state, record)``; ``like_state`` gives the structure, shapes and dtypes."""
        step = self.latest_step() if step is None else step
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
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
