"""A deterministic, resumable host-side input pipeline.

The order of every epoch is a pure function of ``(seed, epoch)``, so a run restored from a
checkpoint at ``(epoch, step)`` sees exactly the batches it would have seen had it never
stopped: call :func:`batches` with ``start=step``. The same indices drive in-memory arrays
and ``tfds`` random-access sources alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


def num_batches(num_examples: int, batch_size: int) -> int:
    """Number of full batches in one epoch (the remainder is dropped)."""
    _check_sizes(num_examples, batch_size)
    return num_examples // batch_size


def epoch_indices(seed: int, epoch: int, num_examples: int, batch_size: int, *,
                  shuffle: bool = True) -> np.ndarray:
    """Example indices of one epoch, batch by batch.

    The permutation is drawn by ``np.random.default_rng(np.random.SeedSequence([seed,
    epoch]))``: deterministic in ``(seed, epoch)`` and different across both. The last
    ``num_examples % batch_size`` examples of the permutation are dropped, so every example
    appears at most once per epoch and every batch is full (one compiled step shape).

    Args:
        seed: non-negative integer seed of the run.
        epoch: non-negative epoch number.
        num_examples: size of the dataset.
        batch_size: examples per batch, ``1 <= batch_size <= num_examples``.
        shuffle: if False, the epoch visits ``0, 1, 2, ...`` in order.

    Returns:
        int32 array ``[num_batches(num_examples, batch_size), batch_size]``.
    """
    count = num_batches(num_examples, batch_size)
    if shuffle:
        for name, value in (("seed", seed), ("epoch", epoch)):
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))
        order = rng.permutation(num_examples)
    else:
        order = np.arange(num_examples)
    return order[:count * batch_size].reshape(count, batch_size).astype(np.int32)


def batches(data, batch_size: int, *, seed: int, epoch: int, start: int = 0,
            shuffle: bool = True, rows: slice | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Iterates over the batches of one epoch, beginning at batch number ``start``.

    Args:
        data: either a mapping of equal-length numpy arrays (as returned by
            :func:`jaxreg.data.load_digits`), or a random-access source with ``len()`` and
            ``__getitems__(indices) -> list[dict]`` (as returned by ``tfds.data_source``).
        batch_size: examples per batch; the last partial batch is dropped.
        seed: seed of the run (see :func:`epoch_indices`).
        epoch: epoch number.
        start: first batch to yield, ``0 <= start <= num_batches``; resuming at ``start=k``
            yields exactly the batches ``k, k+1, ...`` of the full epoch.
        shuffle: if False, examples come in index order.
        rows: only these rows of every batch are read (the rows of the global batch that one
            process's devices hold, ``jaxreg.train.sharding.ShardingPlan.process_rows``); the
            order, and so which examples each process reads, stays a function of
            ``(seed, epoch)``.

    Returns:
        An iterator of dicts of numpy arrays with a leading ``batch_size`` axis: the fields
        of ``data`` plus ``"index"``, the examples' positions in ``data`` (int32; it replaces
        a field of that name, which for :func:`jaxreg.data.load_digits` and its source holds
        the same positions). Arguments are checked when ``batches`` is called.
    """
    if isinstance(data, Mapping):
        num_examples = _common_length(data)
        arrays = {key: np.asarray(value) for key, value in data.items()}
        gather = lambda idx: {key: value[idx] for key, value in arrays.items()}
    elif hasattr(data, "__getitems__") and hasattr(data, "__len__"):
        num_examples = len(data)
        gather = lambda idx: _stack(data.__getitems__(idx.tolist()))
    else:
        raise TypeError("`data` must be a mapping of arrays or a random-access source with "
                        f"`__len__` and `__getitems__`, got {type(data).__name__}.")
    order = epoch_indices(seed, epoch, num_examples, batch_size, shuffle=shuffle)
    if not isinstance(start, (int, np.integer)) or not 0 <= start <= len(order):
        raise ValueError(f"`start` must be an integer in [0, {len(order)}], got {start!r}.")
    if rows is not None:
        if not isinstance(rows, slice) or not order[:, rows].shape[1]:
            raise ValueError(f"`rows` must be a non-empty slice of the {batch_size} rows of a "
                             f"batch, got {rows!r}.")
        order = order[:, rows]
    return ({**gather(idx), "index": idx} for idx in order[start:])


def _check_sizes(num_examples: int, batch_size: int) -> None:
    if num_examples < 1:
        raise ValueError(f"`num_examples` must be positive, got {num_examples}.")
    if not 1 <= batch_size <= num_examples:
        raise ValueError(
            f"`batch_size` must be in [1, num_examples={num_examples}], got {batch_size}.")


def _common_length(data: Mapping) -> int:
    if not data:
        raise ValueError("`data` must hold at least one array, got an empty mapping.")
    lengths = {key: len(value) for key, value in data.items()}
    first_key, first = next(iter(lengths.items()))
    for key, length in lengths.items():
        if length != first:
            raise ValueError(f"`data[{key!r}]` has length {length}, but `data[{first_key!r}]` "
                             f"has length {first}; all arrays must have the same length.")
    return first


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}
