"""Tables, JSON and claim verdicts shared by the experiments."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"93.1 ± 0.4"`` (population std over seeds), or ``"–"`` when undefined."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclasses.dataclass
class Claim:
    """A paper's claim, the test applied to this run, and the verdict."""
    claim: str
    test: str
    agrees: bool
    evidence: str

    def line(self) -> str:
        verdict = "AGREES" if self.agrees else "DOES NOT AGREE"
        return f"- **{verdict}**: {self.claim} (test: {self.test}; here: {self.evidence})"


def _finite(obj):
    """JSON has no NaN: undefined values become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(obj), f, indent=1)


def write_results(out_dir: str, text: str, payload: dict) -> None:
    """Writes ``results.md`` (the text) and ``results.json`` (the payload), prints the text."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text + "\n")
    write_json(payload, os.path.join(out_dir, "results.json"))
    print(text)
