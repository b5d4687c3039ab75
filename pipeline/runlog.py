"""A run's log file, the versions it records, and the root cause of an error behind Ray's wrappers."""

from __future__ import annotations

import logging
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("textbook-pipeline", "pyarrow", "ray", "polars", "pydantic"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def root_cause(exc: BaseException) -> str:
    """The original error behind Ray's wrappers, as ``Type: message``."""
    chain, node = [], exc
    while isinstance(node, BaseException) and node not in chain:
        chain.append(node)
        node = getattr(node, "cause", None) or node.__cause__
    for item in chain:
        lines = str(item).splitlines()
        for prev, line in zip([""] + lines, lines):
            # the exception line ending a traceback: unindented, right after an indented frame
            if line and not line[0].isspace() and prev[:1].isspace() and ": " in line \
                    and re.match(r"^[A-Za-z_][\w.]*: ", line) and not line.startswith("ray."):
                return line.strip()
    text = str(chain[-1]).strip().splitlines()
    return f"{type(chain[-1]).__name__}: {text[0] if text else ''}"


def setup_logging(run_dir: Path) -> Path:
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("pipeline")
    for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return path
