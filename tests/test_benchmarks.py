"""The benchmarks run, and the ways they time compute the same thing (their max|dp| column)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def table_rows(output: str) -> dict[str, list[float]]:
    """``{way: [numbers...]}`` from the printed tables: a row is a name, then numbers."""
    rows = {}
    for line in output.splitlines():
        words = line.split()
        first_number = next((i for i, w in enumerate(words) if is_number(w)), None)
        if first_number and len(words) - first_number >= 4 and all(
                map(is_number, words[first_number:])):
            rows[" ".join(words[:first_number])] = [float(w) for w in words[first_number:]]
    return rows


def is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def run(script: str, *args: str) -> dict[str, list[float]]:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=BENCHMARKS,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return table_rows(out.stdout)


@pytest.mark.parametrize("script,args,ways", [
    ("multiobjective.py", ("--models", "cnn", "--mtl", "--iwrm", "8", "--steps", "20",
                           "--torch-python", "none"),
     ["jaxreg sum", "jaxreg upgrad", "jaxreg upgrad/jac"]),
    ("grid.py", ("--configs", "2", "--epochs", "2", "--torch-python", "none"),
     ["grid", "jaxreg steps", "optax steps", "optax vmap"]),
    ("overhead.py", ("--d-model", "32", "--layers", "1", "--length", "16", "--batch", "4",
                     "--blocks", "2", "--block", "3"),
     ["hand-written optax", "make_step sum", "make_step agg(1)"]),
])
def test_benchmark_ways_agree(script, args, ways):
    rows = run(script, *args)
    assert sorted(rows) == sorted(ways)
    for way in ways:
        *timings, max_dp = rows[way]
        assert all(t > 0 for t in timings), (way, timings)
        assert max_dp < 1e-5, (way, max_dp)


def test_scaling_benchmark_shows_fsdp_dividing_the_bytes():
    out = subprocess.run([sys.executable, str(BENCHMARKS / "scaling.py"), "--devices", "1", "2",
                          "--blocks", "1", "--d-model", "32", "--layers", "1"], cwd=BENCHMARKS,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()
            if line.startswith(("data-parallel", "fsdp"))]
    table = {(r[0], int(r[1])): [float(x) for x in r[2:]] for r in rows}
    assert sorted(table) == [("data-parallel", 1), ("data-parallel", 2), ("fsdp", 1),
                             ("fsdp", 2)]
    # columns: ms/step, x 1 device, param MB, opt MB, temp MB, max|dp|
    assert table["data-parallel", 2][2] == table["data-parallel", 1][2]
    assert table["fsdp", 2][2] < 0.6 * table["fsdp", 1][2]  # halved, but for the norms
    assert table["fsdp", 2][3] < 0.6 * table["fsdp", 1][3]
    assert all(row[-1] < 1e-5 for row in table.values())


def test_contrastive_memory_benchmark_shows_linear_memory_and_equal_gradients():
    rows = run("contrastive_memory.py", "--quick")
    assert sorted(rows) == sorted(f"{loss} N={n}" for loss in ("clip", "supcon", "dcl")
                                  for n in (256, 1024))
    for loss in ("clip", "supcon", "dcl"):
        small, large = rows[f"{loss} N=256"], rows[f"{loss} N=1024"]
        # columns: dense MiB, chunked MiB, x memory, dense ms, chunked ms, x time, rel |dg|
        assert large[0] > 10 * small[0]  # dense: quadratic in N (16x for 4x the batch)
        assert large[1] < 6 * small[1]  # chunked: linear plus O(N D)
        assert small[-1] < 1e-5  # same gradient where both ran
        assert np.isnan(large[3]) and large[4] > 0  # "does not fit" at the quick limit
