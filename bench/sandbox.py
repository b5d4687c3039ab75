"""Sandbox benchmark: what the kernel walls cost per program, against the guards-only sandbox.

Programs: HumanEval's 164 canonical solutions with their tests (``prompt + solution + test +
check``), the evaluation's own programs; every one must pass in each mode or no figure is
written. Each is run one at a time (the cost of starting one sandbox: ``unshare``, the mount
wall, the interpreter) behind the kernel walls (``mode="namespaces"``) and behind the
Python-level guards alone (``mode="guards"``, the sandbox before the walls, without its
network namespace), the two modes alternating program by program so that both see the same
machine load; then all 164 through ``run_many`` with two workers, as the stages run them.
As the real root, the walls drop the program to ``nobody``; the user-namespace way (everyone
else's) is timed too. Writes ``bench/results/sandbox.json``.

    python bench/sandbox.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from pipeline import sandbox, sandbox_walls  # noqa: E402
from pipeline.evalsets import humaneval_problems  # noqa: E402


def programs() -> list[str]:
    return [f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
            for p in humaneval_problems()]


def alternating(codes: list[str], ways: dict[str, tuple[str, bool]]) -> dict[str, float]:
    """Milliseconds per program, one at a time, the ways (label: mode, as the real root or
    not) taking turns on each program."""
    spent, real_root = dict.fromkeys(ways, 0.0), sandbox_walls.real_root
    try:
        for code in codes:
            for label, (mode, as_root) in ways.items():
                sandbox_walls.real_root = real_root if as_root else (lambda: False)
                started = time.perf_counter()
                result = sandbox.run_python(code, mode=mode, timeout_s=20)
                spent[label] += time.perf_counter() - started
                require(result.ok, f"a canonical solution failed ({label}): {result.detail}")
    finally:
        sandbox_walls.real_root = real_root
    return {label: 1000 * s / len(codes) for label, s in spent.items()}


def parallel(codes: list[str], mode: str) -> float:
    started = time.perf_counter()
    results = sandbox.run_many(codes, workers=2, mode=mode, timeout_s=20)
    require(all(r.ok for r in results), f"a canonical solution failed in run_many ({mode})")
    return 1000 * (time.perf_counter() - started) / len(codes)


def main() -> None:
    report = sandbox.isolation()
    why = sandbox.refusal(report)
    require(why is None, f"{why}: nothing to measure")
    sandbox.require("guards")
    codes = programs()
    ways = {"namespaces": ("namespaces", True), "guards": ("guards", True)}
    if sandbox_walls.real_root():  # the user-namespace way, as everyone but the root runs it
        ways["user_namespace"] = ("namespaces", False)
    ms = alternating(codes, ways)
    results = {
        "programs": len(codes),
        "walls": sandbox.describe(report),
        "sandbox_ms_per_program": round(ms["namespaces"], 1),
        "guards_ms_per_program": round(ms["guards"], 1),
        "sandbox_ratio_vs_guards": round(ms["namespaces"] / ms["guards"], 2),
        "sandbox_run_many_2_workers_ms_per_program": round(parallel(codes, "namespaces"), 1),
        "guards_run_many_2_workers_ms_per_program": round(parallel(codes, "guards"), 1),
        "baseline": "mode guards: the Python-level guards and limits alone, no namespaces",
    }
    if "user_namespace" in ms:
        results["user_namespace_ms_per_program"] = round(ms["user_namespace"], 1)
        results["user_namespace_ratio_vs_guards"] = round(ms["user_namespace"] / ms["guards"], 2)
    write("sandbox", results)


if __name__ == "__main__":
    main()
