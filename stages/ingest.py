"""Ingest: read the sources into normalized documents with stable ids.

Sources are JSONL files (plain, ``.gz``, ``.zst``), Parquet files, or folders of text, Markdown
or code files, on local disk or behind a URI. Output columns: ``id`` (stable across reruns: a
hash of source name, relative path and line/row), ``text``, ``source``, ``path``, ``meta`` (JSON:
the record's other fields, plus ``line``/``row``), ``content_hash`` (of the normalized text) and
``n_chars``.

Normalization: Unicode NFC, CRLF and lone CR to LF, NUL and other control characters (C0 except
tab and newline, DEL, C1) removed.

Drop reasons (each rejected row keeps its ``path`` and line/row in ``meta``):
    invalid_json         a JSONL line that does not parse (``drop_detail``: the parser's message)
    not_an_object        a JSONL line that parses to something other than an object
    not_utf8             bytes that are not UTF-8 (``text``: a lossy preview)
    missing_field:NAME   the text field is absent or null
    wrong_type:NAME      the text field is not a string
    empty_text           nothing but whitespace after normalization
    too_long             more than ``max_chars`` characters (``text``: the first ``preview_chars``)
    unreadable_file      a file that exists but cannot be read or decoded as its format
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline import io
from pipeline.stage import DROP_DETAIL, DROP_REASON, Plan

VERSION = "1"

SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("source", pa.string()), ("path", pa.string()),
    ("meta", pa.string()), ("content_hash", pa.string()), ("n_chars", pa.int64()),
    (DROP_REASON, pa.string()), (DROP_DETAIL, pa.string()),
])

DEFAULT_INCLUDE = {
    "jsonl": ["**/*.jsonl", "**/*.jsonl.gz", "**/*.jsonl.zst", "**/*.ndjson"],
    "parquet": ["**/*.parquet"],
    "files": [],
}
BATCH_CHARS = 64 * 2**20  # flush a batch at this many characters, whatever its row count
CONTROL_CHARS = r"[\x00-\x08\x0B-\x1F\x7F-\x9F]"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_chars: int = Field(default=1_000_000, ge=1)
    preview_chars: int = Field(default=10_000, ge=0)
    unit_bytes: int = Field(default=32 * 2**20, ge=1, description="work unit size for file folders")
    batch_rows: int = Field(default=2000, ge=1)


def plan(sources: list, config: Config) -> Plan:
    """Split every source into work units (groups of files, or row groups of big Parquet files);
    the ledger's info counts, per source, the symbolic links that were not followed."""
    units: list[dict] = []
    links: dict[str, dict] = {}
    for src in sources:
        include = src.include or DEFAULT_INCLUDE[src.kind]
        counts: Counter = Counter()
        files = io.list_files(src.path, include, src.exclude, src.follow_symlinks, counts)
        if any(counts.values()):
            links[src.name] = dict(sorted(counts.items()))
        if src.sample < 1.0:
            files = [f for f in files if io.stable_unit(f"{src.name}/{f.relpath}") < src.sample]
        head = {"source": src.name, "kind": src.kind, "text_field": src.text_field,
                "id_field": src.id_field}
        if src.kind == "files":
            group: list = []
            size = 0
            for f in files:
                group.append([f.uri, f.relpath, f.size, f.mtime_ns])
                size += f.size
                if size >= config.unit_bytes or len(group) >= 4000:
                    units.append({**head, "files": group})
                    group, size = [], 0
            if group:
                units.append({**head, "files": group})
        else:
            units.extend({**head, "files": [[f.uri, f.relpath, f.size, f.mtime_ns]]} for f in files)
    return Plan(units, {"symlinks": links} if links else {})


class _Batch:
    """Accumulates raw records of one unit and emits normalized Arrow batches."""

    def __init__(self, unit: dict, config: Config):
        self.unit, self.config = unit, config
        self.cols: dict[str, list] = {k: [] for k in ("id", "text", "path", "meta", "reason", "detail")}
        self.chars = 0

    def add(self, relpath: str, locator: str, text: Any, meta: dict | str,
            reason: str | None = None, detail: str | None = None) -> None:
        key = f"{self.unit['source']}\0{relpath}\0{locator}"
        self.cols["id"].append(hashlib.blake2b(key.encode("utf-8", "surrogateescape"),
                                               digest_size=8).hexdigest())
        self.cols["text"].append(text)
        self.chars += len(text) if isinstance(text, str) else 0
        self.cols["path"].append(relpath)
        self.cols["meta"].append(meta if isinstance(meta, str)
                                 else json.dumps(meta, ensure_ascii=False, default=str))
        self.cols["reason"].append(reason)
        self.cols["detail"].append(detail)

    def __len__(self) -> int:
        return len(self.cols["id"])

    def full(self) -> bool:
        return len(self) >= self.config.batch_rows or self.chars >= BATCH_CHARS

    def flush(self) -> pa.Table:
        cols, self.cols = self.cols, {k: [] for k in self.cols}
        self.chars = 0
        return normalize_batch(cols, self.unit["source"], self.config)


def normalize_batch(cols: dict[str, list], source: str, config: Config) -> pa.Table:
    """Normalize text and assign the empty/too-long reasons, vectorized over the batch."""
    reason = pa.array(cols["reason"], pa.string())
    text = pa.array(cols["text"], pa.string())
    text = _nfc(text)
    text = pc.replace_substring(text, "\r\n", "\n")
    text = pc.replace_substring(text, "\r", "\n")
    text = pc.replace_substring_regex(text, CONTROL_CHARS, "")
    n_chars = pc.fill_null(pc.utf8_length(text), 0).cast(pa.int64())
    pending = pc.is_null(reason)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0)
    too_long = pc.greater(n_chars, config.max_chars)
    reason = pc.if_else(pc.and_(pending, pc.fill_null(blank, False)), "empty_text", reason)
    reason = pc.if_else(pc.and_(pc.is_null(reason), too_long), "too_long", reason)
    detail = pa.array(cols["detail"], pa.string())
    is_long = pc.fill_null(pc.equal(reason, "too_long"), False)
    long_detail = pc.binary_join_element_wise("n_chars=", n_chars.cast(pa.string()), "")
    detail = pc.if_else(pc.and_(is_long, pc.is_null(detail)), long_detail, detail)
    text = pc.if_else(is_long, pc.utf8_slice_codeunits(text, 0, config.preview_chars), text)
    hashes = [hashlib.blake2b(t.encode(), digest_size=16).hexdigest() if t is not None else None
              for t in text.to_pylist()]
    n = len(text)
    return pa.Table.from_arrays(
        [pa.array(cols["id"], pa.string()), text, pa.array([source] * n, pa.string()),
         pa.array(cols["path"], pa.string()), pa.array(cols["meta"], pa.string()),
         pa.array(hashes, pa.string()), n_chars, pc.fill_null(reason, pa.scalar(None, pa.string())),
         detail],
        schema=SCHEMA,
    )


def _nfc(text: pa.Array) -> pa.Array:
    """NFC only where needed: ASCII text (most code) is already in normal form."""
    non_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(text), True))
    if not pc.any(non_ascii).as_py():
        return text
    return pc.replace_with_mask(text, non_ascii, pc.utf8_normalize(text.filter(non_ascii), "NFC"))


def read(unit: dict, config: Config) -> Iterator[pa.Table]:
    """Read one work unit; every record found comes out, kept or with a drop reason."""
    batch = _Batch(unit, config)
    reader = {"files": _read_text_file, "jsonl": _read_jsonl, "parquet": _read_parquet}[unit["kind"]]
    for uri, relpath, size, _mtime in unit["files"]:
        yield from reader(batch, uri, relpath, size, unit, config)
        if batch.full():
            yield batch.flush()
    if len(batch):
        yield batch.flush()


def _open_bytes(uri: str, limit: int | None = None) -> bytes:
    fs, path = io.resolve(uri)
    with fs.open_input_stream(path, compression="detect") as stream:
        return stream.read(limit) if limit is not None else stream.read()


def _lossy_preview(data: bytes, config: Config) -> str:
    return data[: config.preview_chars * 4].decode("utf-8", "replace")[: config.preview_chars]


def _read_text_file(batch: _Batch, uri, relpath, size, unit, config) -> Iterator[pa.Table]:
    meta = {"bytes": size}
    try:
        if size > config.max_chars * 4:  # more than max_chars even at 4 bytes per character
            data = _open_bytes(uri, config.preview_chars * 4)
            batch.add(relpath, "", _lossy_preview(data, config), meta, "too_long", f"bytes={size}")
            return
        data = _open_bytes(uri)
    except OSError as exc:
        batch.add(relpath, "", None, meta, "unreadable_file", str(exc))
        return
    try:
        batch.add(relpath, "", data.decode("utf-8"), meta)
    except UnicodeDecodeError as exc:
        batch.add(relpath, "", _lossy_preview(data, config), meta, "not_utf8", str(exc))
    yield from ()


def _read_jsonl(batch: _Batch, uri, relpath, size, unit, config) -> Iterator[pa.Table]:
    field, id_field = unit["text_field"], unit["id_field"]
    try:
        data = _open_bytes(uri)
    except OSError as exc:
        batch.add(relpath, "file", None, {}, "unreadable_file", str(exc))
        return
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        meta: dict[str, Any] = {"line": number}
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            batch.add(relpath, f"L{number}", _lossy_preview(raw, config), meta, "not_utf8", str(exc))
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            batch.add(relpath, f"L{number}", line[: config.preview_chars], meta, "invalid_json", str(exc))
            continue
        if not isinstance(obj, dict):
            batch.add(relpath, f"L{number}", line[: config.preview_chars], meta, "not_an_object",
                      f"got JSON {type(obj).__name__}")
            continue
        text = obj.pop(field, None)
        if id_field and id_field in obj:
            meta["source_id"] = obj.pop(id_field)
        meta.update(obj)
        if text is None:
            batch.add(relpath, f"L{number}", None, meta, f"missing_field:{field}")
        elif not isinstance(text, str):
            batch.add(relpath, f"L{number}", json.dumps(text)[: config.preview_chars], meta,
                      f"wrong_type:{field}", f"got JSON {type(text).__name__}")
        else:
            batch.add(relpath, f"L{number}", text, meta)
        if batch.full():
            yield batch.flush()


def _read_parquet(batch: _Batch, uri, relpath, size, unit, config) -> Iterator[pa.Table]:
    field, id_field = unit["text_field"], unit["id_field"]
    fs, path = io.resolve(uri)
    try:
        pfile = pq.ParquetFile(fs.open_input_file(path))
        groups = range(pfile.num_row_groups)
    except (OSError, pa.ArrowException) as exc:
        batch.add(relpath, "file", None, {}, "unreadable_file", str(exc))
        return
    row = 0
    for group in groups:
        table = pfile.read_row_group(group)
        names = table.column_names
        text_col = table.column(field) if field in names else None
        # meta: the other columns (the id field as source_id) and the row, JSON-encoded at once
        rest = pl.from_arrow(table.drop_columns([c for c in (field,) if c in names]))
        if id_field and id_field in rest.columns:
            rest = rest.rename({id_field: "source_id"})
        rest = rest.with_columns(pl.int_range(row, row + table.num_rows, dtype=pl.Int64).alias("row"))
        metas = rest.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_list()
        texts = text_col.to_pylist() if text_col is not None else [None] * table.num_rows
        bad_type = text_col is not None and not pa.types.is_string(text_col.type) \
            and not pa.types.is_large_string(text_col.type)
        for meta, text in zip(metas, texts):
            locator = f"R{row}"
            if text is None:
                batch.add(relpath, locator, None, meta, f"missing_field:{field}")
            elif bad_type:
                batch.add(relpath, locator, str(text)[: config.preview_chars], meta,
                          f"wrong_type:{field}", f"column type {text_col.type}")
            else:
                batch.add(relpath, locator, text, meta)
            row += 1
            if batch.full():
                yield batch.flush()
