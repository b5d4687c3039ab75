"""Ingest throughput on the default corpus (stdlib + site-packages Python files).

Runs the ingest stage of the ``code`` example with 1 and then 2 Ray workers (a fresh local Ray
each time, after one warm-up pass so both read from the page cache), and a single-process
baseline that only reads and decodes the same files. Writes ``bench/results/ingest.json``.

    python bench/ingest.py
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import write  # noqa: E402
from pipeline.cli import main as cli  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.run import run_pipeline  # noqa: E402
from stages import ingest  # noqa: E402


def corpus_files(cfg) -> list[list]:
    units = ingest.plan(cfg.sources, cfg.stage("ingest").config).units
    return [f for u in units for f in u["files"]]


def plain_read(files: list[list]) -> float:
    start = time.perf_counter()
    for uri, *_ in files:
        Path(uri).read_bytes().decode("utf-8", "replace")
    return time.perf_counter() - start


def ingest_run(config: Path, workers: int, name: str) -> dict:
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    startup = time.perf_counter() - start
    try:
        cfg = load_config(config, [f"run.name={name}"])
        result = run_pipeline(cfg, only=["ingest"], console=Console(file=open("/dev/null", "w")))
    finally:
        ray.shutdown()
    record = result.records[0]
    return {"startup_s": startup, "wall_s": record["wall_s"], "docs": record["rows_in"]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    cli(["init", str(work), "--example", "code", "--force"])
    config = work / "pipeline.toml"
    cfg = load_config(config)
    files = corpus_files(cfg)
    total_mb = sum(f[2] for f in files) / 1e6
    plain_read(files)  # warm the page cache
    plain_s = plain_read(files)
    one = ingest_run(config, 1, "w1")
    two = ingest_run(config, 2, "w2")
    results = {
        "corpus_files": len(files),
        "corpus_mb": round(total_mb, 1),
        "docs": two["docs"],
        "mb_per_s_1_worker": round(total_mb / one["wall_s"], 2),
        "mb_per_s_2_workers": round(total_mb / two["wall_s"], 2),
        "docs_per_s_1_worker": round(one["docs"] / one["wall_s"], 1),
        "docs_per_s_2_workers": round(two["docs"] / two["wall_s"], 1),
        "speedup_2_workers": round(one["wall_s"] / two["wall_s"], 3),
        "ray_startup_s": round((one["startup_s"] + two["startup_s"]) / 2, 2),
        "baseline_plain_read_mb_per_s": round(total_mb / plain_s, 2),
        "ratio_2_workers_vs_plain_read": round((total_mb / two["wall_s"]) / (total_mb / plain_s), 3),
        "stage_wall_s_1_worker": one["wall_s"],
        "stage_wall_s_2_workers": two["wall_s"],
    }
    write("ingest", results)


if __name__ == "__main__":
    main()
