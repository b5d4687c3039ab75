"""Stages that exist only for engine tests: failures on demand, slowness, broken contracts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from pipeline.stage import with_reasons


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fail_flag: str | None = None  # if this file exists, the stage raises
    sleep_s: float = 0.0  # per batch
    min_chars: int = 0  # shorter texts are dropped as too_short
    wrong_rows: bool = False  # return one row too few (a broken stage)
    pid_dir: str | None = None  # write the worker pid here while busy


def process(batch: pa.Table, config: Config) -> pa.Table:
    if config.fail_flag and Path(config.fail_flag).exists():
        raise RuntimeError("injected failure")
    if config.pid_dir:
        Path(config.pid_dir, str(os.getpid())).touch()
    if config.sleep_s:
        time.sleep(config.sleep_s)
    short = pc.less(pc.utf8_length(batch.column("text")), config.min_chars)
    reasons = pc.if_else(short, "too_short", pa.scalar(None, pa.string()))
    out = with_reasons(batch, reasons)
    return out.slice(1) if config.wrong_rows and out.num_rows else out
