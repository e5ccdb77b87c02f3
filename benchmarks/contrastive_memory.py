"""Benchmark: memory and time of the chunked contrastive losses against the dense ones.

For growing batches N of D-dimensional embeddings (float32, CPU), the gradient step
``jax.jit(jax.value_and_grad(mean loss))`` with respect to the embeddings, for:

    clip     symmetric InfoNCE, N pairs: ``contrastive.info_nce(symmetric=True)`` against
             ``chunked.chunked_info_nce(symmetric=True)`` (two N x N logit matrices dense).
    supcon   supervised contrastive, N examples x 2 views, 10 examples a class:
             ``contrastive.supervised_contrastive`` against
             ``chunked.chunked_supervised_contrastive`` (a 2N x 2N matrix dense).
    dcl      decoupled contrastive, N pairs: ``contrastive.decoupled_contrastive`` against
             ``chunked.chunked_decoupled_contrastive`` (2N x 2N).

Both are compiled (``lower(...).compile()``) and their temporary memory read from XLA's
``memory_analysis()`` before anything runs. A dense step whose temporaries exceed this
machine's memory (``--fit-gib``, default the physical RAM) is not run: "does not fit". A step
(dense or chunked) is run only when its temporaries are under ``--run-gib`` (default 4 GiB,
so that the benchmark never takes a shared machine's memory); each run is timed as the median
of ``--repeats`` calls after a first, untimed one (a first call over 10 s is the time).

Columns:

    dense MiB     the dense step's temporary buffers (``temp_size_in_bytes``).
    chunked MiB   the chunked step's.
    x memory      dense over chunked: how much less memory the chunked step needs.
    dense ms      wall time of one dense step (nan: not run).
    chunked ms    wall time of one chunked step (nan: not run).
    x time        chunked over dense: what the tiling costs in time (recomputing the tiles
                  in the backward pass; nan when one of them did not run).
    rel |dg|      max |gradient difference| / max |gradient|, chunked against dense, where
                  both ran: float32 rounding, i.e. the same computation.

Usage: ``python benchmarks/contrastive_memory.py [--sizes 1024 4096 16384 65536] [--dim 128]
[--chunk-size 1024] [--losses clip supcon dcl] [--repeats 3] [--fit-gib G] [--run-gib 4]``;
``--quick`` (for the test suite) is ``--sizes 256 1024 --dim 32 --chunk-size 128
--repeats 1`` with the fit limit lowered to 8 MiB, so that the dense steps at N = 1024 take
the "does not fit" path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from jaxreg.losses import chunked, contrastive

GIB = 2 ** 30
MIB = 2 ** 20
LONG_CALL_S = 10.0


def losses(name: str, chunk_size: int):
    """``(dense, chunked, inputs(key, n, dim))`` of one benchmark row; losses of the inputs."""
    def pairs(key, n, dim):
        a, b = jax.random.normal(key, (2, n, dim))
        return a, b

    if name == "clip":
        return (lambda a, b: contrastive.info_nce(a, b, symmetric=True),
                lambda a, b: chunked.chunked_info_nce(a, b, symmetric=True,
                                                      chunk_size=chunk_size), pairs)
    if name == "dcl":
        return (contrastive.decoupled_contrastive,
                lambda a, b: chunked.chunked_decoupled_contrastive(a, b, chunk_size=chunk_size),
                pairs)

    def views(key, n, dim):
        return jax.random.normal(key, (n, 2, dim)), jnp.arange(n) // 10

    return (contrastive.supervised_contrastive,
            lambda f, y: chunked.chunked_supervised_contrastive(f, y, chunk_size=chunk_size),
            views)


def compiled_step(loss, inputs):
    """The jitted value and gradient (in the floating inputs) of the mean loss, compiled."""
    floats = tuple(i for i, x in enumerate(inputs) if jnp.issubdtype(x.dtype, jnp.floating))
    step = jax.jit(jax.value_and_grad(lambda *args: loss(*args).mean(), argnums=floats))
    return step.lower(*inputs).compile()


def timed(step, inputs, repeats: int):
    """Median seconds per call after an untimed first call (which, if longer than
    ``LONG_CALL_S``, is the time); returns (seconds, gradients)."""
    start = time.perf_counter()
    out = jax.block_until_ready(step(*inputs))
    first = time.perf_counter() - start
    if first > LONG_CALL_S:
        return first, out[1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(step(*inputs))
        times.append(time.perf_counter() - start)
    return statistics.median(times), out[1]


def size(n_bytes) -> str:
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / MIB:.1f} MiB"


def relative_difference(grads, reference) -> float:
    diff = max(float(jnp.max(jnp.abs(g - r))) for g, r in zip(grads, reference))
    return diff / max(float(jnp.max(jnp.abs(r))) for r in reference)


def row(name, n, args, fit_bytes, notes):
    """Measures one (loss, N); returns the printed numbers."""
    dense_loss, chunked_loss, make = losses(name, args.chunk_size)
    inputs = make(jax.random.PRNGKey(n), n, args.dim)
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
    dense, tiled = compiled_step(dense_loss, shapes), compiled_step(chunked_loss, shapes)
    dense_bytes = dense.memory_analysis().temp_size_in_bytes
    chunked_bytes = tiled.memory_analysis().temp_size_in_bytes
    label = f"{name} N={n}"
    dense_ms = chunked_ms = diff = float("nan")
    chunked_grads = dense_grads = None
    if chunked_bytes < args.run_gib * GIB:
        seconds, chunked_grads = timed(tiled, inputs, args.repeats)
        chunked_ms = 1e3 * seconds
    else:
        notes.append(f"{label}: chunked step not run ({size(chunked_bytes)} > --run-gib "
                     f"{args.run_gib:g})")
    if dense_bytes > fit_bytes:
        notes.append(f"{label}: dense step does not fit ({size(dense_bytes)} of temporaries "
                     f"> {size(fit_bytes)}); the chunked step "
                     + ("ran" if chunked_grads is not None else "did not run either"))
    elif dense_bytes < args.run_gib * GIB:
        seconds, dense_grads = timed(dense, inputs, args.repeats)
        dense_ms = 1e3 * seconds
    else:
        notes.append(f"{label}: dense step fits but is not run ({size(dense_bytes)} > "
                     f"--run-gib {args.run_gib:g})")
    if chunked_grads is not None and dense_grads is not None:
        diff = relative_difference(chunked_grads, dense_grads)
    return (label, dense_bytes / MIB, chunked_bytes / MIB, dense_bytes / chunked_bytes,
            dense_ms, chunked_ms, chunked_ms / dense_ms, diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--losses", nargs="+", default=["clip", "supcon", "dcl"],
                        choices=["clip", "supcon", "dcl"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-gib", type=float, default=None,
                        help="memory a dense step may use (default: the physical RAM)")
    parser.add_argument("--run-gib", type=float, default=4.0,
                        help="run only steps whose temporaries are under this")
    parser.add_argument("--quick", action="store_true", help="a small run for the tests")
    args = parser.parse_args()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fit_bytes = ram if args.fit_gib is None else args.fit_gib * GIB
    if args.quick:
        args.sizes, args.dim, args.chunk_size, args.repeats = [256, 1024], 32, 128, 1
        fit_bytes = 8 * MIB
    print(f"D {args.dim}, chunk {args.chunk_size}, float32, {jax.devices()[0].platform}; "
          f"RAM {size(ram)}, dense steps over {size(fit_bytes)} do not fit, "
          f"steps over {args.run_gib:g} GiB are not run; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f} (other processes skew timings)")
    header = (f"\n{'':<18}{'dense MiB':>11}{'chunked MiB':>13}{'x memory':>10}{'dense ms':>11}"
              f"{'chunked ms':>12}{'x time':>9}{'rel |dg|':>10}")
    print(header)
    notes = []
    for name in args.losses:
        for n in args.sizes:
            label, *numbers = row(name, n, args, fit_bytes, notes)
            mib_d, mib_c, x_mem, ms_d, ms_c, x_time, diff = numbers
            print(f"{label:<18}{mib_d:>11.1f}{mib_c:>13.1f}{x_mem:>10.1f}{ms_d:>11.1f}"
                  f"{ms_c:>12.1f}{x_time:>9.2f}{diff:>10.1e}", flush=True)
    if notes:
        print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
