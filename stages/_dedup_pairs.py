"""Candidate pairs of the MinHash dedup stage: LSH buckets paired in keep-policy order.

A bucket is the documents sharing one band key; its members are sorted in keep-policy order
(the ``order`` of each document number: reference documents first). Pairing is leader-based,
so its cost grows linearly with the bucket while every member still meets the documents that
could be its keeper, the earliest kept ones:

- round 1: a bucket of up to ``max_bucket`` members is paired in full; in a larger one, every
  member is paired with the bucket's first member, and the bucket is set aside (``large``);
- later rounds: in each large bucket, only the members kept by the clustering so far take
  part, each paired with the first ``window`` kept members before it (the window doubles each
  round, up to ``max_bucket``). Pairs compared in an earlier round are not compared again.

The rounds stop when no new pair comes up and every window covered its bucket: then every two
kept members of a bucket have been compared (in buckets holding more than ``max_bucket``
kept members, each is compared with the first ``max_bucket`` of them), so the kept documents
are those the greedy keeps over all pairs of every bucket, and a cluster of mutually similar
documents keeps one. A dropped document names the most similar kept document it was compared
with. A near-duplicate cluster of n copies costs about n pairs.

    candidate_task  partition -> pairs/r1/p(a), large/p(key)   (returns the documents seen)
    leader_task     partition -> pairs/rN/p(a)                  (returns pairs, window too small)
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl

from stages._dedup_shuffle import read_partition, write_part, write_partitioned

BANDS = {"doc": pl.Int64, "band": pl.Int16, "key": pl.UInt64}
LARGE = {**BANDS, "order": pl.Int64}


@numba.njit(cache=True)
def leader_pairs(docs, starts, windows):
    """Pairs of each bucket ``docs[starts[g]:starts[g + 1]]`` (in keep order): every member
    with the first ``windows[g]`` members before it."""
    count = 0
    for g in range(len(starts) - 1):
        n = starts[g + 1] - starts[g]
        w = min(windows[g], n)
        count += w * (w - 1) // 2 + (n - w) * w
    left = np.empty(count, dtype=np.int64)
    right = np.empty(count, dtype=np.int64)
    k = 0
    for g in range(len(starts) - 1):
        lo, hi = starts[g], starts[g + 1]
        for j in range(lo + 1, hi):
            for i in range(lo, min(j, lo + windows[g])):
                left[k] = docs[i]
                right[k] = docs[j]
                k += 1
    return left, right


def bucket_starts(frame: pl.DataFrame) -> np.ndarray:
    """Offsets of the buckets of ``frame`` (sorted by band, key): first rows, then the end."""
    band, key = frame["band"].to_numpy(), frame["key"].to_numpy()
    new = np.ones(frame.height, dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    return np.append(np.flatnonzero(new), frame.height).astype(np.int64)


def write_pairs(left: np.ndarray, right: np.ndarray, inputs: int, out: str, partitions: int,
                name: str) -> pl.DataFrame:
    """Unique pairs a < b, shuffled by a; pairs of two reference documents (numbered from
    ``inputs``) are left out."""
    a, b = np.minimum(left, right), np.maximum(left, right)
    mine = a < inputs
    pairs = pl.DataFrame({"a": a[mine], "b": b[mine]}).unique()
    write_partitioned(pairs, pl.col("a"), partitions, out, name)
    return pairs


def candidate_task(part: int, bands: str, out: str, large: str, partitions: int, max_bucket: int,
                   inputs: int, order: np.ndarray) -> tuple[np.ndarray, int]:
    """Round 1 over one band-key partition; buckets over ``max_bucket`` are written to
    ``large`` for the later rounds. Returns the sorted documents paired or in a large bucket,
    and the rows of the large buckets."""
    frame = read_partition(bands, part, BANDS)
    frame = frame.with_columns(pl.Series("order", order[frame["doc"].to_numpy()], pl.Int64)) \
        .sort("band", "key", "order")
    starts = bucket_starts(frame)
    sizes = np.diff(starts)
    windows = np.where(sizes <= max_bucket, sizes, 1)
    docs = frame["doc"].to_numpy()
    pairs = write_pairs(*leader_pairs(docs, starts, windows), inputs, out, partitions, f"c{part:04d}")
    big = np.repeat(sizes > max_bucket, sizes)
    write_part(frame.filter(pl.Series(big)), large, part, "large")
    docs = np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy(), docs[big]])
    return np.unique(docs), int(big.sum())


def leader_task(part: int, large: str, out: str, partitions: int, window: int, max_bucket: int,
                inputs: int, kept: np.ndarray) -> tuple[int, bool]:
    """A later round over one partition's large buckets: each kept member with the first
    ``window`` kept members before it. Returns (pairs written, whether some bucket holds more
    kept members than the window reached while it could still grow)."""
    frame = read_partition(large, part, LARGE)
    docs = frame["doc"].to_numpy()
    live = kept[np.minimum(np.searchsorted(kept, docs), len(kept) - 1)] == docs if len(kept) \
        else np.zeros(len(docs), dtype=bool)
    frame = frame.filter(pl.Series(live)).sort("band", "key", "order")
    starts = bucket_starts(frame)
    sizes = np.diff(starts)
    pairs = write_pairs(*leader_pairs(frame["doc"].to_numpy(), starts, np.full(len(sizes), window)),
                        inputs, out, partitions, f"c{part:04d}")
    return pairs.height, bool(window < max_bucket and (sizes > window + 1).any())
