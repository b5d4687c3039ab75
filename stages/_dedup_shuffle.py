"""Tasks of the MinHash dedup stage: row-group units in, shuffle partition folders out.

Documents are numbered by position (input files in order, then reference files), so every
shuffle carries int64 numbers, never id strings. A unit is a run of Parquet row groups of one
file; partition ``p`` of a shuffle is the folder ``<dir>/p{p:04d}/``, one file per writer task,
named after the task, so a retried task rewrites its own files (Arrow IPC, see ``write_part``).

    signature_task  unit      -> bands/p(key)     doc, band, key
    candidate pairs (``stages/_dedup_pairs.py``)   -> pairs/rN/p(a)   a, b   (round N)
    sets_task       unit      -> sets/p(doc)      doc, values      (involved documents only)
    join_left_task  partition -> joined/rN/p(b)   a, b, a_values   (or edges, when not verifying)
    score_task      partition -> edges/p(b)       a, b, jaccard    (verified edges only)

No task holds more than one partition of pairs or sets; the driver sees counts and the sorted
numbers of the documents that have candidates.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from stages import _minhash as mh

UNIT_BYTES = 8 * 2**20  # small row groups of one file are grouped up to this size into one task
PARTITION_BYTES = 256 * 2**20  # automatic partitions: one per this much input, 4 to 256
BATCH_ROWS = 2048  # rows shingled at once inside a task: bounds the shingle arrays


@dataclass(frozen=True)
class Unit:
    """Row groups ``groups`` of ``file``, holding documents ``first .. first + rows - 1``."""

    index: int
    file: str
    groups: tuple[int, ...]
    first: int
    rows: int
    nbytes: int


def plan_units(files: list[Path], first: int = 0, index: int = 0) -> list[Unit]:
    """Units over ``files`` in order, numbering their documents from ``first``."""
    units = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        rows = nbytes = 0
        for g in range(meta.num_row_groups):
            groups.append(g)
            rows += meta.row_group(g).num_rows
            nbytes += meta.row_group(g).total_byte_size
            if nbytes >= UNIT_BYTES or g == meta.num_row_groups - 1:
                units.append(Unit(index + len(units), str(path), tuple(groups), first, rows, nbytes))
                first += rows
                groups, rows, nbytes = [], 0, 0
    return units


def auto_partitions(units: list[Unit]) -> int:
    """Shuffle partitions for this input: enough for the workers, few enough that the files
    (one per writer and partition) stay few."""
    return int(np.clip(-(-sum(u.nbytes for u in units) // PARTITION_BYTES), 4, 256))


def largest_first(units: list[Unit]) -> list[Unit]:
    """Tasks start in submission order: the big ones first balance the workers."""
    return sorted(units, key=lambda u: -u.nbytes)


def read_unit(unit: Unit, columns: list[str]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(number of the first document, batch) over the unit, ``BATCH_ROWS`` rows at a time."""
    start = unit.first
    batches = pq.ParquetFile(unit.file).iter_batches(batch_size=BATCH_ROWS, columns=columns,
                                                     row_groups=list(unit.groups))
    for batch in batches:
        yield start, batch
        start += batch.num_rows


def folder(root: str, part: int) -> Path:
    return Path(root) / f"p{part:04d}"


def read_partition(root: str, part: int, schema: dict) -> pl.DataFrame:
    """All files of one partition (an empty frame of ``schema`` when there are none)."""
    files = sorted(folder(root, part).glob("*.arrow"))
    return pl.concat([pl.read_ipc(f) for f in files]) if files \
        else pl.DataFrame(schema=schema)


def write_part(frame: pl.DataFrame, root: str, part: int, name: str = "edges") -> None:
    """``frame`` as ``root/p{part}/name.arrow`` (nothing when empty). Arrow IPC, uncompressed:
    hashes do not compress, and Parquet's encoders cost more than the disk they would save."""
    if frame.height:
        path = folder(root, part) / f"{name}.arrow"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = io.temp_sibling(path)
        frame.write_ipc(tmp, compression="uncompressed")
        os.replace(tmp, path)


def write_partitioned(frame: pl.DataFrame, by: pl.Expr, partitions: int, root: str, name: str) -> None:
    """Rows of ``frame`` to ``root/p{by % partitions}/name.arrow``."""
    if not frame.height:
        return
    frame = frame.with_columns((by % partitions).cast(pl.Int64).alias("_part"))
    for (part,), chunk in frame.partition_by("_part", as_dict=True).items():
        write_part(chunk.drop("_part"), root, part, name)


def signature_task(unit: Unit, config, out: str) -> dict:
    """One key per (document, band) of the unit, shuffled by key."""
    bands, rows = config.band_params()
    a, b = mh.permutations(config.num_perm, config.seed, config.scheme)
    frames, empty, shingles = [], 0, 0
    for start, batch in read_unit(unit, [config.text_column]):
        values, offsets = mh.shingle_sets_of(batch.column(0), config.ngram, config.unit, unique=False)
        sig = mh.signatures(values, offsets, a, b, config.scheme == "legacy")
        keys = mh.band_keys(sig, bands, rows)
        has = np.diff(offsets) > 0
        docs = start + np.flatnonzero(has)
        frames.append(pl.DataFrame({"doc": np.repeat(docs, bands),
                                    "band": np.tile(np.arange(bands, dtype=np.int16), len(docs)),
                                    "key": keys[has].reshape(-1)}))
        empty += int((~has).sum())
        shingles += len(values)
    if frames:
        write_partitioned(pl.concat(frames), pl.col("key"), config.partitions, out,
                          f"u{unit.index:06d}")
    return {"docs": unit.rows, "empty": empty, "shingles": shingles}


def sets_task(unit: Unit, config, involved: np.ndarray, out: str) -> int:
    """The sorted shingle sets (``verify = "exact"``) or signatures (``"estimate"``) of the
    unit's documents that are in ``involved``, shuffled by document."""
    lo, hi = np.searchsorted(involved, [unit.first, unit.first + unit.rows])
    mine = involved[lo:hi]
    a, b = mh.permutations(config.num_perm, config.seed, config.scheme)
    tables = []
    for start, batch in read_unit(unit, [config.text_column]):
        local = mine[(mine >= start) & (mine < start + batch.num_rows)] - start
        if not len(local):
            continue
        text = batch.column(0).take(pa.array(local))
        values, offsets = mh.shingle_sets_of(text, config.ngram, config.unit,
                                             unique=config.verify == "exact")
        if config.verify == "estimate":
            values = mh.signatures(values, offsets, a, b, config.scheme == "legacy").reshape(-1)
            offsets = np.arange(len(local) + 1, dtype=np.int64) * config.num_perm
        lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()),
                                              pa.array(values, pa.uint64()))
        tables.append(pa.table({"doc": pa.array(start + local, pa.int64()), "values": lists}))
    if tables:
        write_partitioned(pl.from_arrow(pa.concat_tables(tables)), pl.col("doc"), config.partitions,
                          out, f"u{unit.index:06d}")
    return sum(t.num_rows for t in tables)


SETS = {"doc": pl.Int64, "values": pl.List(pl.UInt64)}
PAIRS = {"a": pl.Int64, "b": pl.Int64}


def join_left_task(part: int, pairs: str, seen: list[str], sets: str | None, out: str, config,
                   name: str) -> int:
    """Unique pairs of partition ``part`` not already in the ``seen`` pair folders (earlier
    rounds), with a's set, shuffled by b; without verification (``sets`` None), the pairs
    themselves are the edges (Jaccard taken as 1). Files are named ``name`` + the partition."""
    frame = read_partition(pairs, part, PAIRS).unique()
    for earlier in seen:
        frame = frame.join(read_partition(earlier, part, PAIRS), on=["a", "b"], how="anti")
    if sets is None:
        edges = frame.with_columns(pl.lit(1.0).alias("jaccard"))
        write_partitioned(edges, pl.col("b"), config.partitions, out, f"{name}{part:04d}")
        return edges.height
    left = read_partition(sets, part, SETS).rename({"doc": "a", "values": "a_values"})
    write_partitioned(frame.join(left, on="a"), pl.col("b"), config.partitions, out, f"{name}{part:04d}")
    return frame.height


def _flat(column: pl.Series) -> pa.LargeListArray:
    array = column.to_arrow()
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    return array.cast(pa.large_list(pa.uint64()))


def pair_scores(left: pl.Series, right: pl.Series, verify: str) -> np.ndarray:
    """Exact Jaccard of sorted shingle sets, or the share of equal signature values."""
    both = pa.concat_arrays([_flat(left), _flat(right)])
    values = both.values.to_numpy(zero_copy_only=False)
    offsets = both.offsets.to_numpy()
    n = len(left)
    if verify == "estimate":
        width = (offsets[1] - offsets[0]) if n else 0
        first = values[offsets[0]:offsets[n]].reshape(n, width)
        second = values[offsets[n]:offsets[2 * n]].reshape(n, width)
        return (first == second).mean(axis=1) if width else np.zeros(n)
    return mh.pair_jaccard(values, offsets, np.arange(n), np.arange(n, 2 * n))


def score_task(part: int, joined: str, sets: str, out: str, config, name: str) -> int:
    """Pairs of partition ``part`` joined with b's set and scored; those at or above the
    threshold are written to ``out`` as edges named ``name``."""
    frame = read_partition(joined, part, {**PAIRS, "a_values": pl.List(pl.UInt64)})
    right = read_partition(sets, part, SETS).rename({"doc": "b", "values": "b_values"})
    frame = frame.join(right, on="b")
    score = pair_scores(frame["a_values"], frame["b_values"], config.verify)
    edges = frame.select("a", "b").with_columns(pl.Series("jaccard", score, pl.Float64)) \
        .filter(pl.col("jaccard") >= config.threshold)
    write_part(edges, out, part, name)
    return edges.height


def column_of(units: list[Unit], docs: np.ndarray, column: str) -> list:
    """``column`` of documents ``docs`` (sorted numbers), read from the units holding them."""
    out = []
    for unit in units:
        lo, hi = np.searchsorted(docs, [unit.first, unit.first + unit.rows])
        if hi > lo:
            table = pq.ParquetFile(unit.file).read_row_groups(list(unit.groups), columns=[column])
            out.extend(table.column(0).take(pa.array(docs[lo:hi] - unit.first)).to_pylist())
    return out
