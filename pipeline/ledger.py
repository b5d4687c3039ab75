"""The ledger: one ``_SUCCESS.json`` per finished stage, the funnel, and record inspection.

Invariant, checked before a stage is committed: rows in == rows kept + rows rejected, and the
rejected rows add up by reason. A stage folder without ``_SUCCESS.json`` is not finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline import io, runstate
from pipeline.stage import DROP_REASON

SUCCESS = "_SUCCESS.json"


class LedgerError(RuntimeError):
    """Rows went missing or appeared from nowhere: the stage is not committed."""


def check(record: dict) -> None:
    rows_in, kept, rejected = record["rows_in"], record["rows_kept"], record["rows_rejected"]
    by_reason = sum(record["rejected_by_reason"].values())
    if rows_in != kept + rejected or by_reason != rejected:
        raise LedgerError(
            f"stage {record['stage']!r}: rows in ({rows_in}) != kept ({kept}) + rejected "
            f"({rejected}), or rejected by reason adds up to {by_reason}; the stage lost or "
            "invented rows and was not committed"
        )


def group_reasons(reasons: dict[str, int], most: int = 50) -> dict[str, int]:
    """Reasons sorted; past ``most`` distinct ones, ``prefix:qualifier`` reasons whose prefix has
    many qualifiers (``too_similar_to:<id>``) are counted as ``prefix:*``."""
    if len(reasons) <= most:
        return dict(sorted(reasons.items()))
    prefixes: dict[str, int] = {}
    for reason in reasons:
        if ":" in reason:
            prefixes[reason.split(":", 1)[0]] = prefixes.get(reason.split(":", 1)[0], 0) + 1
    grouped: dict[str, int] = {}
    for reason, count in reasons.items():
        prefix = reason.split(":", 1)[0]
        key = f"{prefix}:*" if ":" in reason and prefixes[prefix] > 10 else reason
        grouped[key] = grouped.get(key, 0) + count
    return dict(sorted(grouped.items()))


def write_success(folder: Path, record: dict) -> None:
    check(record)
    io.write_text_atomic(folder / SUCCESS, json.dumps(record, indent=2, sort_keys=True, default=str))


def read_success(folder: Path) -> dict | None:
    path = folder / SUCCESS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def stage_folders(run_dir: Path) -> list[Path]:
    root = run_dir / "stages"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def funnel(run_dir: Path) -> list[dict]:
    """The finished stages' records, in pipeline order."""
    return [r for r in (read_success(f) for f in stage_folders(run_dir)) if r is not None]


def find_stage(run_dir: Path, stage: str) -> Path:
    for folder in stage_folders(run_dir):
        if folder.name == stage or folder.name.split("-", 1)[-1] == stage:
            return folder
    names = [f.name.split("-", 1)[-1] for f in stage_folders(run_dir)]
    raise LedgerError(f"no stage {stage!r} in {run_dir} (stages: {', '.join(names) or 'none'})")


def funnel_table(records: list[dict], title: str = "funnel") -> Table:
    table = Table(title=title, title_justify="left")
    for col, justify in (("stage", "left"), ("in", "right"), ("kept", "right"),
                         ("rejected", "right"), ("reasons", "left"), ("time", "right")):
        table.add_column(col, justify=justify)
    for rec in records:
        reasons = sorted(rec["rejected_by_reason"].items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{k} {v:,}" for k, v in reasons[:3])
        if len(reasons) > 3:
            text += f", +{len(reasons) - 3} more"
        table.add_row(rec["folder"], f"{rec['rows_in']:,}", f"{rec['rows_kept']:,}",
                      f"{rec['rows_rejected']:,}", text or "-", f"{rec['wall_s']:.1f}s")
    return table


def print_status(run_dir: Path, console: Console | None = None) -> int:
    console = console or Console()
    if not run_dir.is_dir():
        console.print(f"[red]no run at {run_dir}[/red]")
        return 2
    records = funnel(run_dir)
    console.print(funnel_table(records, f"{run_dir.name}: funnel"))
    state = runstate.read(run_dir)
    for style, text in runstate.summary_lines(state) if state else []:
        console.print(f"[{style}]{escape(text)}[/{style}]", highlight=False)
    datasets = run_dir / "datasets"
    if datasets.is_dir():
        for ds in sorted(p for p in datasets.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in io.parquet_parts(ds))
            console.print(f"dataset [bold]{ds.name}[/bold]: {rows:,} rows in {ds}")
    models = run_dir / "models"
    for folder in sorted(models.iterdir()) if models.is_dir() else []:
        if folder.name.startswith(".") and folder.name.endswith(".work"):
            steps = sorted((folder / "checkpoints").glob("step-*.pt"))
            last = steps[-1].stem.split("-")[-1].lstrip("0") if steps else "none"
            console.print(f"[yellow]model {folder.name[1:-5]}: training, last checkpoint step "
                          f"{last or 0}[/yellow]")
        elif (folder / SUCCESS).is_file():
            done = json.loads((folder / SUCCESS).read_text())
            summary = done.get("summary", {})
            facts = ", ".join(f"{k} {summary[k]}" for k in ("step", "loss", "eval_loss", "vocab_size")
                              if summary.get(k) is not None)
            console.print(f"model [bold]{folder.name}[/bold] ({done.get('objective')}): {facts}")
    return 0


def inspect(run_dir: Path, stage: str, rejected: bool = False, reason: str | None = None,
            limit: int = 5, columns: list[str] | None = None) -> pl.DataFrame:
    """Records kept by a stage, or rejected by it (optionally with one reason or reason prefix)."""
    folder = find_stage(run_dir, stage)
    if reason and not rejected:
        rejected = True
    target = run_dir / "rejected" / folder.name if rejected else folder
    parts = io.parquet_parts(target)
    if not parts:
        return pl.DataFrame()
    lazy = pl.scan_parquet(parts)
    if reason:
        col = pl.col(DROP_REASON)
        lazy = lazy.filter((col == reason) | col.str.starts_with(reason + ":"))
    if columns:
        lazy = lazy.select(columns)
    return lazy.head(limit).collect()


def print_records(frame: pl.DataFrame, console: Console, max_chars: int = 300) -> None:
    if frame.is_empty():
        console.print("no records")
        return
    for i, row in enumerate(frame.iter_rows(named=True)):
        console.rule(f"record {i + 1}")
        for key, value in row.items():
            text = str(value)
            if len(text) > max_chars:
                text = text[:max_chars] + f"... [{len(text):,} chars]"
            console.print(f"[bold]{key}[/bold]: ", end="")
            console.print(text, markup=False, highlight=False)
