"""Diagnosing a trained run: ``jaxreg diagnose RUN_DIR [--experiment NAME] [--out DIR]``.

It restores the last checkpoint of a run directory (``RUN_DIR/checkpoints/``, written by
``jaxreg.train.fit``) onto one device and measures, at its parameters and on a fixed
evaluation batch, the Hessian's dominant eigenvalue (power iteration,
``jaxreg.diagnostics.hessian_top_eigenvalue``) and trace (Hutchinson,
``hessian_trace``), the expected calibration error of the predictions
(``expected_calibration_error``) and the loss along a filter-normalized random direction
(``loss_landscape``, Li et al. 2018). It writes ``diagnostics.md``, ``diagnostics.json`` and
``landscape.png`` into the run directory (or ``out_dir``). Every key is fixed, so diagnosing a
run twice gives the same numbers.

An experiment supports diagnosis by defining, beside ``get_config`` and ``run``, the hook

    def diagnosable(config) -> Diagnosable: ...

which rebuilds, from the run's ``config.json``, what the checkpoint is restored into and what
is measured at it (see :class:`Diagnosable`). The experiment is the one named by
``experiment``, else the longest experiment name that the run directory's name equals or
starts with followed by ``-`` (``runs/pretrain``, ``runs/pretrain-gpu``: ``pretrain``).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
from collections.abc import Callable
from typing import Any

from jaxreg.protocol import config as config_lib
from jaxreg.protocol import runner

HOOK = "diagnosable"


@dataclasses.dataclass(frozen=True)
class Diagnosable:
    """What an experiment's ``diagnosable(config)`` hook returns.

    Attributes:
        like_state: the state the checkpoint is restored into, concrete or abstract
            (``jax.eval_shape``), built as the run builds its ``TrainState`` so that its
            layout matches the checkpoint's; its shardings are ignored (the restore is onto
            one device).
        loss_fn: ``loss_fn(params) -> scalar``, the loss on the fixed evaluation batch (the
            Hessian's and the landscape's function).
        logits_fn: ``logits_fn(params) -> [N, K]``, the predictions on that batch.
        labels: ``[N]`` integer labels of those predictions (for the calibration error).
        batch: which batch, in words (printed in ``diagnostics.md``).
        params_of: the parameters of a restored state (default: ``state.params``).
        power_iterations: Hessian-vector products of the power iteration.
        hutchinson_samples: Rademacher probes of the trace estimate.
        calibration_bins: equal-width confidence bins of the ECE.
        landscape_points: points of the 1-D landscape in ``[-landscape_span, landscape_span]``.
        landscape_span: its half-width, in units of the filter-normalized direction.
        seed: the PRNG seed of the probes and the direction.
    """
    like_state: Any
    loss_fn: Callable[[Any], Any]
    logits_fn: Callable[[Any], Any]
    labels: Any
    batch: str
    params_of: Callable[[Any], Any] = operator.attrgetter("params")
    power_iterations: int = 20
    hutchinson_samples: int = 16
    calibration_bins: int = 15
    landscape_points: int = 21
    landscape_span: float = 1.0
    seed: int = 0


class DiagnoseError(ValueError):
    """A run directory or experiment that cannot be diagnosed (reported in one line)."""


def supporting() -> list[str]:
    """The experiments that define the ``diagnosable`` hook (and write checkpoints)."""
    found = []
    for name in runner.names():
        try:
            module = runner.load(name)
        except Exception:  # an experiment that does not import here supports nothing here
            continue
        if callable(getattr(module, HOOK, None)):
            found.append(name)
    return found


def infer_experiment(run_dir: str | os.PathLike) -> str:
    """The experiment of a run directory, from its name: the longest experiment name that
    the name equals or starts with followed by ``-``."""
    base = os.path.basename(os.path.abspath(os.fspath(run_dir)))
    matches = [n for n in runner.names() if base == n or base.startswith(n + "-")]
    if not matches:
        raise DiagnoseError(
            f"cannot tell the experiment of {os.fspath(run_dir)!r} from its name; pass "
            f"--experiment NAME (one of: {', '.join(supporting())})")
    return max(matches, key=len)


@dataclasses.dataclass
class Restored:
    """A run's checkpoint restored for diagnosis."""
    experiment: str
    config: Any
    diagnosable: Diagnosable
    params: Any
    step: int


def restore(run_dir: str | os.PathLike, experiment: str | None = None) -> Restored:
    """Finds the experiment, loads ``config.json``, calls the hook and restores the latest
    checkpoint of ``run_dir`` onto one device; raises :class:`DiagnoseError` naming what is
    missing."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise DiagnoseError(f"no run directory {run_dir!r}")
    name = experiment if experiment is not None else infer_experiment(run_dir)
    try:
        module = runner.load(name)
    except (KeyError, FileNotFoundError) as err:
        raise DiagnoseError(err.args[0]) from None
    if not callable(getattr(module, HOOK, None)):
        raise DiagnoseError(
            f"experiment {name} does not support diagnosis (experiments/"
            f"{name.replace('-', '_')}.py defines no {HOOK}(config) hook); experiments that "
            f"do: {', '.join(supporting())}")
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise DiagnoseError(f"no config.json in {run_dir!r}: not a run directory of "
                            "`jaxreg run`")
    config = config_lib.load(config_path, module.get_config)
    checkpoints = os.path.join(run_dir, "checkpoints")
    if not _has_checkpoint(checkpoints):
        raise DiagnoseError(
            f"no checkpoints in {run_dir!r} (no {checkpoints}/STEP folder); the experiments "
            f"that write checkpoints and can be diagnosed: {', '.join(supporting())} (in runs "
            "that checkpoint, e.g. train.checkpoint_every > 0)")
    try:
        diagnosable = getattr(module, HOOK)(config)
    except ValueError as err:
        raise DiagnoseError(f"{name}: {err}") from None

    import jax

    from jaxreg.train.checkpoint import Checkpointer

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        checkpointer = Checkpointer(checkpoints)
    except PermissionError as err:
        raise DiagnoseError(str(err)) from None
    try:  # a CheckpointError (a ValueError) names an unreadable or foreign checkpoint
        step = checkpointer.latest_step()
        shardings = jax.tree.map(lambda _: device, diagnosable.like_state)
        state, _ = checkpointer.restore(diagnosable.like_state, shardings=shardings)
    except (ValueError, FileNotFoundError) as err:
        raise DiagnoseError(str(err)) from None
    finally:
        checkpointer.close()
    return Restored(name, config, diagnosable, diagnosable.params_of(state), int(step))


def _has_checkpoint(directory: str) -> bool:
    """Whether ``directory`` holds a committed checkpoint (a step folder without Orbax's
    temporary suffix), checked without creating anything."""
    if not os.path.isdir(directory):
        return False
    return any(entry.isdigit() and os.path.isdir(os.path.join(directory, entry))
               for entry in os.listdir(directory))


def measure(d: Diagnosable, params) -> dict[str, Any]:
    """The diagnostics of ``params``: numbers (Python floats), the landscape and the unit
    eigenvector (a pytree like ``params``, under ``"eigenvector"``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxreg.diagnostics import (
        expected_calibration_error,
        hessian_top_eigenvalue,
        hessian_trace,
        loss_landscape,
    )

    eigen_key, trace_key, direction_key = jax.random.split(jax.random.PRNGKey(d.seed), 3)
    loss = jax.jit(d.loss_fn)(params)
    eigenvalue, eigenvector = jax.jit(lambda p, k: hessian_top_eigenvalue(
        d.loss_fn, p, k, num_iterations=d.power_iterations))(params, eigen_key)
    trace, stderr = jax.jit(lambda p, k: hessian_trace(
        d.loss_fn, p, k, num_samples=d.hutchinson_samples, return_stderr=True))(params,
                                                                                 trace_key)
    logits = jax.jit(d.logits_fn)(params).astype(jnp.float32)
    labels = jnp.asarray(d.labels)
    ece = expected_calibration_error(logits, labels, num_bins=d.calibration_bins)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    landscape = jax.jit(lambda p, k: loss_landscape(
        d.loss_fn, p, k, span=d.landscape_span, num_points=d.landscape_points))(params,
                                                                               direction_key)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    return {
        "loss": float(loss), "parameters": count,
        "hessian_top_eigenvalue": float(eigenvalue), "power_iterations": d.power_iterations,
        "hessian_trace": float(trace), "hessian_trace_stderr": float(stderr),
        "hutchinson_samples": d.hutchinson_samples,
        "expected_calibration_error": float(ece), "calibration_bins": d.calibration_bins,
        "accuracy": float(accuracy), "predictions": int(labels.shape[0]),
        "landscape": {"steps": np.asarray(landscape["steps"]).tolist(),
                      "losses": np.asarray(landscape["losses"]).tolist()},
        "seed": d.seed, "eigenvector": eigenvector}


def table(payload: dict) -> str:
    """The markdown table of ``diagnostics.md``."""
    from jaxreg.protocol.report import markdown_table

    p = payload
    losses = p["landscape"]["losses"]
    rows = [
        ["checkpoint", f"{p['run_dir']}, step {p['step']} ({p['parameters']:,} parameters)"],
        ["evaluation batch", p["batch"]],
        ["loss", f"{p['loss']:.4f}"],
        ["Hessian top eigenvalue", f"{p['hessian_top_eigenvalue']:.4g} (power iteration, "
                                   f"{p['power_iterations']} Hessian-vector products)"],
        ["Hessian trace", f"{p['hessian_trace']:.4g} +- {p['hessian_trace_stderr']:.2g} "
                          f"(Hutchinson, {p['hutchinson_samples']} Rademacher probes)"],
        ["expected calibration error", f"{p['expected_calibration_error']:.4f} "
                                       f"({p['calibration_bins']} bins, "
                                       f"{p['predictions']:,} predictions, accuracy "
                                       f"{p['accuracy']:.3f})"],
        ["loss landscape", f"{len(losses)} points in [-{p['landscape_span']:g}, "
                           f"{p['landscape_span']:g}] along a filter-normalized direction: "
                           f"loss {min(losses):.4f} to {max(losses):.4f} (landscape.png)"],
        ["seed", str(p["seed"])],
    ]
    return markdown_table(["", "value"], rows)


def plot(payload: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxreg.diagnostics import plot_landscape

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_landscape({"steps": np.asarray(payload["landscape"]["steps"]),
                    "losses": np.asarray(payload["landscape"]["losses"])}, ax)
    ax.set_title(f"{payload['experiment']} at step {payload['step']}: 1-D loss landscape")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def diagnose(run_dir: str | os.PathLike, *, experiment: str | None = None,
             out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Restores, measures and writes ``diagnostics.md``, ``diagnostics.json`` and
    ``landscape.png`` into ``out_dir`` (default: ``run_dir``); returns the JSON payload."""
    restored = restore(run_dir, experiment)
    d = restored.diagnosable
    measured = measure(d, restored.params)
    measured.pop("eigenvector")
    payload = {"experiment": restored.experiment, "run_dir": os.fspath(run_dir),
               "step": restored.step, "batch": d.batch,
               "landscape_span": d.landscape_span, **measured}
    out_dir = os.fspath(out_dir if out_dir is not None else run_dir)
    os.makedirs(out_dir, exist_ok=True)
    text = f"# Diagnostics of {restored.experiment}\n\n{table(payload)}\n"
    with open(os.path.join(out_dir, "diagnostics.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "diagnostics.json"), "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    plot(payload, os.path.join(out_dir, "landscape.png"))
    return payload
