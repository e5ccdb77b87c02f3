"""What the benchmarks share: timing JAX's compilation, the torch subprocess, comparisons.

The scripts run as ``python benchmarks/<name>.py``, so this module is imported by its bare name.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import jax
import numpy as np

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class Clock:
    """Wall time between ticks; the first interval starts when the clock is made."""

    def __init__(self):
        self.times: list[float] = []
        self.last = time.perf_counter()

    def tick(self):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


@contextmanager
def compile_spans():
    """Collects the (start, end) spans of JAX tracing, lowering and compiling."""
    spans = []

    def listen(event, start, end, **kwargs):
        if event in COMPILE_EVENTS:
            spans.append((start, end))

    jax.monitoring.register_event_time_span_listener(listen)
    try:
        yield spans
    finally:
        jax.monitoring.unregister_event_time_span_listener(listen)


def union_seconds(spans) -> float:
    """Length of the union of intervals (nested traces are counted once)."""
    total, end = 0.0, -float("inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def max_difference(params, reference) -> float:
    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, reference)
    return max(jax.tree.leaves(diffs))


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def torch_python(given: str | None) -> str | None:
    """``given`` (None if it is ``"none"``), or this interpreter when it can import torch, or
    None."""
    if given is not None:
        return None if given == "none" else given
    return sys.executable if importlib.util.find_spec("torch") is not None else None


def dense_layers_to_numpy(params: dict) -> dict:
    """An ``mlp``'s Flax parameters as torch ``Linear`` arrays ``w{i}`` [out, in], ``b{i}``."""
    dense = params["params"]
    layers = [dense[f"Dense_{i}"] for i in range(len(dense))]
    arrays = {f"w{i}": np.asarray(layer["kernel"]).T for i, layer in enumerate(layers)}
    arrays.update({f"b{i}": np.asarray(layer["bias"]) for i, layer in enumerate(layers)})
    return arrays


def dense_layers_from_numpy(arrays: dict, leading: int = 0) -> dict:
    """The inverse of ``dense_layers_to_numpy``, for arrays with ``leading`` batch axes."""
    layers = len([name for name in arrays if name.startswith("w")])
    swap = (*range(leading), leading + 1, leading)
    return {"params": {f"Dense_{i}": {"kernel": np.transpose(arrays[f"w{i}"], swap),
                                      "bias": arrays[f"b{i}"]} for i in range(layers)}}


TORCH_MLP = r'''
def build_mlp(data):
    """The MLP saved by dense_layers_to_numpy, as torch.nn.Sequential (Linear-ReLU, Linear)."""
    layers = len([name for name in data.files if name.startswith("w")])
    linears = [torch.nn.Linear(data[f"w{i}"].shape[1], data[f"w{i}"].shape[0])
               for i in range(layers)]
    with torch.no_grad():
        for i, linear in enumerate(linears):
            linear.weight.copy_(torch.from_numpy(data[f"w{i}"]))
            linear.bias.copy_(torch.from_numpy(data[f"b{i}"]))
    blocks = [m for linear in linears[:-1] for m in (linear, torch.nn.ReLU())]
    return torch.nn.Sequential(*blocks, linears[-1])
'''


def run_torch_script(python: str, script: str, arrays: dict, *args) -> tuple[list, dict]:
    """Runs ``script`` in ``python`` with ``arrays`` saved to an ``.npz`` file.

    The script receives the file's path, then ``args``; it prints JSON as its last line and
    saves arrays to the path with ``_final`` before ``.npz``. Returns both.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.npz")
        np.savez(path, **arrays)
        out = subprocess.run([python, "-c", script, path, *map(str, args)],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"the torch subprocess ({python}) failed:\n{out.stderr}")
        final = dict(np.load(path.replace(".npz", "_final.npz")))
    return json.loads(out.stdout.splitlines()[-1]), final
