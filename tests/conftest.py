"""Shared fixtures: one real local Ray for the whole session, and run-config builders."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest


def sandbox_mode() -> str:
    """The sandbox mode that tests running generated code use: the kernel walls where this
    kernel allows them, else the guards (the refusal itself is tested in test_sandbox.py)."""
    from pipeline import sandbox

    return "guards" if sandbox.refusal(sandbox.isolation()) else "namespaces"


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def make_config(folder: Path, sources: str, stages: str, datasets: str = "", name: str = "t",
                extra: str = "", batch_size: int = 50) -> Path:
    """Write a pipeline.toml into ``folder``; the TOML snippets are dedented."""
    text = "\n".join([
        f'[run]\nname = "{name}"\nroot = "runs"\n',
        f'[ray]\nbatch_size = {batch_size}\n',
        textwrap.dedent(extra), textwrap.dedent(sources), textwrap.dedent(stages),
        textwrap.dedent(datasets),
    ])
    path = folder / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def read_folder(folder: Path):
    import pyarrow as pa

    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pa.table({})
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")


@pytest.fixture
def quiet_console():
    from rich.console import Console

    return Console(file=open("/dev/null", "w"), width=120)
