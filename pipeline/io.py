"""Files: local paths and URIs (``s3://``, ``gs://``, ``file://``) through pyarrow filesystems,
glob matching, atomic writes and stable hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class SourceError(RuntimeError):
    """A source path that is missing or cannot be listed or read."""


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and in-filesystem path for a local path or a URI."""
    if "://" in uri:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise SourceError(f"cannot open {uri}: {exc}") from exc
    return pafs.LocalFileSystem(), os.path.abspath(uri)


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """Translate a path glob (``*``, ``?``, ``[..]``, and ``**`` spanning folders) to a regex."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(relpath: str, include: list[str], exclude: list[str]) -> bool:
    if include and not any(glob_regex(p).match(relpath) for p in include):
        return False
    return not any(glob_regex(p).match(relpath) for p in exclude)


def stable_unit(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: deterministic sampling across reruns and machines."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class FoundFile:
    uri: str  # what to open (same scheme as the source)
    relpath: str  # relative to the source root; stable part of record ids
    size: int
    mtime_ns: int


def list_files(uri: str, include: list[str], exclude: list[str]) -> list[FoundFile]:
    """All files under ``uri`` (or the file itself) that pass the globs, sorted by path."""
    fs, root = resolve(uri)
    scheme = uri.split("://", 1)[0] + "://" if "://" in uri else ""
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        raise SourceError(f"cannot read {uri}: {exc}") from exc
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source path does not exist: {uri}")
    if info.type == pafs.FileType.File:
        return [FoundFile(uri, info.base_name, info.size or 0, info.mtime_ns or 0)]
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except OSError as exc:
        raise SourceError(f"cannot list {uri}: {exc}") from exc
    found = []
    prefix = root.rstrip("/") + "/"
    for item in infos:
        if item.type != pafs.FileType.File:
            continue
        rel = item.path[len(prefix):] if item.path.startswith(prefix) else item.base_name
        if matches(rel, include, exclude):
            found.append(FoundFile(scheme + item.path, rel, item.size or 0, item.mtime_ns or 0))
    found.sort(key=lambda f: f.relpath)
    return found


def fingerprint(items: list) -> str:
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = temp_sibling(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = temp_sibling(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def parquet_parts(folder: Path) -> list[Path]:
    """The Parquet part files of a stage or dataset folder, in name order."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith("."))


EMPTY_SCHEMA = ".schema.arrow"  # the kept schema of a stage that kept no row


def write_schema(folder: Path, schema: pa.Schema) -> None:
    """Record the schema of a stage output that has no part file, for an empty dataset shard."""
    (folder / EMPTY_SCHEMA).write_bytes(schema.serialize().to_pybytes())


def output_schema(folder: Path) -> pa.Schema | None:
    """The schema of a stage output: of its first part, else the one recorded when it was empty."""
    parts = parquet_parts(folder)
    if parts:
        return pq.read_schema(parts[0])
    path = folder / EMPTY_SCHEMA
    return pa.ipc.read_schema(pa.py_buffer(path.read_bytes())) if path.is_file() else None
