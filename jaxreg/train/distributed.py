"""Multi-host training: starting ``jax.distributed`` from arguments or the environment.

Every process of a multi-host run calls :func:`initialize` before anything else touches JAX's
devices, then builds the same global mesh (``jaxreg.train.sharding.make_mesh`` over
``jax.devices()``, which then lists every process's devices) and calls ``fit`` with the same
arguments; each process reads only its rows of every batch, and Orbax writes each shard of a
checkpoint once.

The coordinator address, the number of processes and this process's id come from the
arguments, else from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` (the first is the variable ``jax.distributed`` itself reads). With none of
them set, a run is single-process and :func:`initialize` does nothing, unless
``auto_detect=True`` asks JAX to detect a cluster (Cloud TPU, SLURM, Open MPI, ...) itself.
On CPU the collectives between processes go through Gloo.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax

ENVIRONMENT = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
               "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def _from_environment(name: str, given):
    if given is not None:
        return given
    value = os.environ.get(ENVIRONMENT[name])
    if value is None or value == "":
        return None
    if name == "coordinator_address":
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${ENVIRONMENT[name]} must be an integer, got {value!r}") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_ids: int | Sequence[int] | None = None,
               auto_detect: bool = False, cpu_collectives: str = "gloo") -> bool:
    """Starts ``jax.distributed`` for a multi-process run; a no-op for a single process.

    Args:
        coordinator_address: ``host:port`` of process 0's coordinator service.
        num_processes: how many processes take part.
        process_id: this process's id, ``0 <= process_id < num_processes``.
        local_device_ids: the local devices this process uses (default: all).
        auto_detect: with no address, count or id given (here or in the environment), let
            JAX detect the cluster (``jax.distributed.initialize()`` with no arguments).
        cpu_collectives: the CPU collectives implementation (``"gloo"``; ``"mpi"`` needs an
            MPI library), set before the backend starts.

    Returns:
        True if this call started a multi-process run (or one was already running), False
        for a single process.

    Raises:
        ValueError: naming what is missing or out of range, when only some of the three
            settings are given, or the id is not in ``[0, num_processes)``.
    """
    if jax.distributed.is_initialized():
        return True
    settings = {"coordinator_address": _from_environment("coordinator_address",
                                                         coordinator_address),
                "num_processes": _from_environment("num_processes", num_processes),
                "process_id": _from_environment("process_id", process_id)}
    given = {name for name, value in settings.items() if value is not None}
    if not given:
        if auto_detect:
            jax.distributed.initialize(local_device_ids=local_device_ids)
            return True
        return False
    if settings["num_processes"] == 1 and given == {"num_processes"}:
        return False
    missing = sorted(set(settings) - given)
    if missing:
        raise ValueError(
            "a multi-process run needs all of coordinator_address, num_processes and "
            f"process_id; missing: {', '.join(f'`{m}` (or ${ENVIRONMENT[m]})' for m in missing)}")
    count, index = settings["num_processes"], settings["process_id"]
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"`num_processes` must be a positive integer, got {count!r}")
    if not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(f"`process_id` must be in [0, {count}), got {index!r}")
    address = settings["coordinator_address"]
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"`coordinator_address` must be 'host:port', got {address!r}")
    if count == 1:
        return False
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=address, num_processes=count,
                               process_id=index, local_device_ids=local_device_ids)
    return True
