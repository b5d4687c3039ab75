"""The state of a run as it goes: ``runs/NAME/run-state.json``, read by ``pipeline status``.

Written when the run starts (every requested stage ``pending``) and after every stage, dataset
and model, so a run that failed or was interrupted still says what finished, what failed (with
the message) and what never started. ``outcome`` ends as ``succeeded``, ``failed`` or
``interrupted``; ``problems`` lists what the run was asked for and did not do.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from pipeline import io

STATE = "run-state.json"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunState:
    def __init__(self, run_dir: Path, stages: list[tuple[str, str]]):
        """``stages``: (name, folder) of every stage this run was asked to run."""
        self.path = run_dir / STATE
        self.data: dict = {
            "started_at": _now(), "outcome": "running", "command": sys.argv,
            "stages": {name: {"folder": folder, "status": "pending"} for name, folder in stages},
            "datasets": {}, "models": {}, "problems": [], "warnings": [],
        }
        self.save()

    def save(self) -> None:
        io.write_text_atomic(self.path, json.dumps(self.data, indent=2, default=str))

    def stage(self, name: str, status: str, **extra) -> None:
        self.data["stages"].setdefault(name, {}).update(status=status, at=_now(), **extra)
        self.save()

    def item(self, kind: str, name: str, status: str, **extra) -> None:
        """A dataset's, a model's or an ablation's status (``kind``: datasets, models, ablations)."""
        self.data.setdefault(kind, {})[name] = {"status": status, "at": _now(), **extra}
        self.save()

    def problem(self, text: str) -> None:
        self.data["problems"].append(text)
        self.save()

    def warning(self, text: str) -> None:
        self.data["warnings"].append(text)
        self.save()

    def finish(self, outcome: str, error: str | None = None) -> None:
        self.data.update(outcome=outcome, finished_at=_now())
        if error:
            self.data["error"] = error
        self.save()


def read(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def summary_lines(state: dict) -> list[tuple[str, str]]:
    """(style, text) lines on the last run for ``pipeline status``: its outcome, then every
    stage that failed or did not finish, then its problems and warnings."""
    outcome = state.get("outcome", "unknown")
    style = {"succeeded": "green", "running": "yellow"}.get(outcome, "red")
    when = state.get("finished_at") or state.get("started_at", "")
    if outcome == "running":
        outcome = "running, or stopped without a trace (killed)"
    lines = [(style, f"last run: {outcome} ({when})")]
    stages = state.get("stages", {})
    failed = [info for info in stages.values() if info.get("status") == "failed"]
    if state.get("error") and not failed:
        lines.append(("red", state["error"]))
    for name, info in stages.items():
        status = info.get("status")
        if status == "failed":
            lines.append(("red", f"stage {info.get('folder', name)}: {info.get('error', 'failed')}"))
        elif status in ("pending", "running"):
            lines.append(("yellow", f"stage {info.get('folder', name)}: not finished ({status})"))
    lines += [("red", f"not done: {text}") for text in state.get("problems", [])]
    lines += [("yellow", f"warning: {text}") for text in state.get("warnings", [])]
    return lines
