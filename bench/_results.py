"""Where benchmarks leave their numbers: ``bench/results/NAME.json`` (also printed)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write(name: str, results: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return path


class BenchmarkError(SystemExit):
    """The component a benchmark measures did not work: no figure is written."""

    def __init__(self, message: str):
        import sys

        print(f"benchmark failed: {message}", file=sys.stderr)
        super().__init__(2)


def require(condition: bool, message: str) -> None:
    """Stop the benchmark (non-zero exit, no results file) unless ``condition`` holds."""
    if not condition:
        raise BenchmarkError(message)
