"""Files: local paths and URIs (``s3://``, ``gs://``, ``file://``) through pyarrow filesystems,
glob matching, atomic writes and stable hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import uuid
from collections import Counter
from collections.abc import Iterator
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


def list_files(uri: str, include: list[str], exclude: list[str], follow_symlinks: bool = False,
               links: Counter | None = None) -> list[FoundFile]:
    """All files under ``uri`` (or the file itself) that pass the globs, sorted by path.

    A local folder is walked by :func:`walk_local` (each directory once; ``links`` counts the
    symbolic links it did not follow, by why); other filesystems list themselves."""
    if "://" not in uri and Path(uri).is_dir():
        found = [FoundFile(str(path), rel, st.st_size, st.st_mtime_ns)
                 for path, rel, st in walk_local(Path(uri), follow_symlinks, links)
                 if matches(rel, include, exclude)]
        return sorted(found, key=lambda f: f.relpath)
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


def walk_local(root: Path, follow_symlinks: bool = False,
               links: Counter | None = None) -> Iterator[tuple[Path, str, os.stat_result]]:
    """(path, path relative to ``root``, stat) of every regular file under ``root``.

    Every directory is entered once, by (device, inode), so a link loop cannot repeat a folder.
    Symbolic links are not followed when they point inside ``root`` (their targets are listed
    under their own paths), nor when they leave it unless ``follow_symlinks``; ``links`` counts
    each link left alone by reason (``inside_source``, ``outside_source``, ``already_visited``,
    ``broken``) and those ``followed``.
    """
    links = Counter() if links is None else links
    top = os.path.realpath(root)
    seen = {(st.st_dev, st.st_ino) for st in [os.stat(root)]}
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as entries:
                items = sorted(entries, key=lambda e: e.name)
        except OSError:
            links["unreadable_folders"] += 1
            continue
        for entry in items:
            rel = prefix + entry.name
            try:
                link = entry.is_symlink()
                if link:
                    target = os.path.realpath(entry.path)
                    if target == top or target.startswith(top + os.sep):
                        links["inside_source"] += 1
                        continue
                    if not follow_symlinks:
                        links["outside_source"] += 1
                        continue
                st = entry.stat(follow_symlinks=link)
            except OSError:
                links["broken"] += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    links["already_visited"] += 1
                    continue
                seen.add((st.st_dev, st.st_ino))
                stack.append((entry.path, rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                yield Path(entry.path), rel, st
            else:
                continue
            links["followed"] += link


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
