"""Near-duplicate removal with MinHash LSH, candidates verified by exact Jaccard.

Steps (each on Ray; this module only describes them):

1. signatures: per batch, normalized word 5-gram shingles (``unit = "char"`` for character
   n-grams), ``num_perm`` permutations bit-identical to ``datasketch.MinHash`` (see
   ``stages/_minhash.py``), then one 64-bit key per LSH band, written to ``partitions`` shuffle
   folders by key, so no process holds all signatures.
2. candidates: per shuffle partition, documents sharing a band key are candidate pairs.
3. verification: per chunk of pairs, the exact Jaccard of the two shingle sets (``verify =
   "exact"``, the default: the 128-permutation estimate is too noisy near the threshold), the
   MinHash estimate (``"estimate"``), or none.
4. clusters: documents are visited in keep-policy order (as in ``dedup_exact``); a document
   with a verified edge to an already kept document becomes its duplicate, otherwise it is kept.
   Every dropped document is within the threshold of the document it names, so clusters do
   not chain unrelated documents the way connected components over raw candidates do.

Bands x rows come from datasketch's own optimizer for the threshold. Candidates are verified,
so a false positive costs one Jaccard computation while a false negative is a duplicate left
in: the optimizer weighs them 0.02 / 0.98 (Jaccard 0.8, 128 permutations: 17 bands of 7 rows,
a pair at exactly 0.8 becomes a candidate with probability 0.98); with ``verify = "none"`` the
weights are datasketch's 0.5 / 0.5 (9 bands of 13 rows, probability 0.40 at 0.8). ``reference`` names Parquet datasets (e.g. a previous
run's output) to dedup against: documents near-duplicating a reference document are dropped,
the reference itself is never touched.

Drop reasons: ``near_duplicate`` and ``reference_duplicate``, with ``duplicate_of`` and
``jaccard``. Every row gets ``cluster_id`` (its keeper) and kept rows keep ``cluster_size``.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import io
from pipeline.stage import DROP_REASON, Decisions, GlobalContext
from stages import _minhash as mh
from stages._clusters import greedy_clusters, keep_order, size_histogram

VERSION = "1"
REF = "ref/"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_column: str = "text"
    unit: Literal["word", "char"] = "word"
    ngram: int = Field(default=5, ge=1)
    num_perm: int = Field(default=128, ge=2)
    seed: int = 1
    scheme: Literal["affine64", "legacy"] = "affine64"
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0)
    bands: int | None = Field(default=None, ge=1)
    rows: int | None = Field(default=None, ge=1)
    false_positive_weight: float | None = Field(default=None, ge=0.0)
    false_negative_weight: float | None = Field(default=None, ge=0.0)
    verify: Literal["exact", "estimate", "none"] = "exact"
    keep: Literal["first", "lowest_id", "longest", "highest"] = "first"
    column: str | None = None
    partitions: int = Field(default=8, ge=1, description="shuffle partitions for bands and pairs")
    max_bucket: int = Field(default=50, ge=2, description="larger buckets pair neighbours only")
    reference: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they follow threshold)")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.keep == "highest" and not self.column:
            raise ValueError("keep = 'highest' needs column = '<name of a numeric column>'")
        return self

    def band_params(self) -> tuple[int, int]:
        if self.bands and self.rows:
            return self.bands, self.rows
        # Verified candidates cost a check, missed ones are lost: favour recall when verifying.
        fp, fn = (0.02, 0.98) if self.verify != "none" else (0.5, 0.5)
        return _lsh_params(self.threshold, self.num_perm,
                           fp if self.false_positive_weight is None else self.false_positive_weight,
                           fn if self.false_negative_weight is None else self.false_negative_weight)


@lru_cache(maxsize=64)
def _lsh_params(threshold: float, num_perm: int, fp: float, fn: float) -> tuple[int, int]:
    """datasketch's optimizer (numeric integrals: about 20 ms), once per worker, not per batch."""
    return _optimal_param(threshold, num_perm, fp, fn)


def signature_batch(batch: pa.Table, config: Config, out: str, prefix: str) -> pa.Table:
    """Band keys of a batch, written to ``out/p{partition}/``; returns per-document counts."""
    bands, rows = config.band_params()
    a, b = mh.permutations(config.num_perm, config.seed, config.scheme)
    values, offsets = mh.shingle_sets_of(batch.column(config.text_column), config.ngram,
                                         config.unit, unique=False)
    sig = mh.signatures(values, offsets, a, b, config.scheme == "legacy")
    keys = mh.band_keys(sig, bands, rows)
    ids = [prefix + i for i in batch.column("id").to_pylist()]
    has_shingles = np.diff(offsets) > 0
    frame = pl.DataFrame({
        "id": pl.Series(ids, dtype=pl.String).gather(np.repeat(np.flatnonzero(has_shingles), bands)),
        "band": np.tile(np.arange(bands, dtype=np.int16), int(has_shingles.sum())),
        "key": keys[has_shingles].reshape(-1),
    })
    tag = hashlib.blake2b(f"{prefix}{ids[0]}/{ids[-1]}/{len(ids)}".encode(), digest_size=8).hexdigest()
    frame = frame.with_columns((pl.col("key") % config.partitions).alias("part"))
    for (part,), chunk in frame.partition_by("part", as_dict=True).items():
        folder = Path(out) / f"p{part:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        io.write_parquet_atomic(chunk.drop("part").to_arrow(), folder / f"{tag}.parquet")
    return pa.table({"docs": [len(ids)], "empty": [int((~has_shingles).sum())],
                     "shingles": [int(len(values))]})


def bucket_pairs(part: int, out: str, max_bucket: int) -> pa.Table:
    """Candidate pairs of one shuffle partition: documents that share a band key."""
    folder = Path(out) / f"p{part:04d}"
    files = io.parquet_parts(folder)
    if not files:
        return pa.table({"a": pa.array([], pa.string()), "b": pa.array([], pa.string())})
    buckets = (pl.scan_parquet(files).group_by("band", "key").agg(pl.col("id").unique().sort())
               .filter(pl.col("id").list.len() > 1).collect())
    left, right = [], []
    for members in buckets.get_column("id").to_list():
        n = len(members)
        for i in range(n - 1):
            for j in range(i + 1, min(n, i + 1 + max_bucket) if n > max_bucket else n):
                left.append(members[i])
                right.append(members[j])
    return pa.table({"a": pa.array(left, pa.string()), "b": pa.array(right, pa.string())})


def shingles_of_ids(batch: pa.Table, config: Config, ids: set, prefix: str) -> pa.Table:
    """Sorted shingle sets of the documents of a batch whose id is in ``ids``."""
    mask = pc.is_in(pc.binary_join_element_wise(prefix, batch.column("id"), ""),
                    value_set=pa.array(sorted(ids), pa.string()))
    chosen = batch.filter(mask)
    values, offsets = mh.shingle_sets_of(chosen.column(config.text_column), config.ngram,
                                         config.unit, unique=True)
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values, pa.uint64()))
    ids_out = pc.binary_join_element_wise(prefix, chosen.column("id"), "")
    return pa.table({"id": ids_out, "shingles": lists})


def score_pairs(pairs: pl.DataFrame, sets: pa.Table, config: Config) -> pl.DataFrame:
    """Jaccard of each candidate pair, exact (shingle sets) or estimated (signatures)."""
    index = {doc: n for n, doc in enumerate(sets.column("id").to_pylist())}
    shingles = sets.column("shingles").combine_chunks() if sets.num_rows else pa.array([], pa.large_list(pa.uint64()))
    values = shingles.values.to_numpy() if sets.num_rows else np.zeros(0, np.uint64)
    offsets = shingles.offsets.to_numpy() if sets.num_rows else np.zeros(1, np.int64)
    left = np.array([index.get(x, -1) for x in pairs["a"].to_list()], dtype=np.int64)
    right = np.array([index.get(x, -1) for x in pairs["b"].to_list()], dtype=np.int64)
    found = (left >= 0) & (right >= 0)
    score = np.zeros(len(left))
    if config.verify == "estimate":
        a, b = mh.permutations(config.num_perm, config.seed, config.scheme)
        sig = mh.signatures(values, offsets, a, b, config.scheme == "legacy")
        score[found] = (sig[left[found]] == sig[right[found]]).mean(axis=1)
    else:
        score[found] = mh.pair_jaccard(values, offsets, left[found], right[found])
    return pairs.with_columns(pl.Series("jaccard", score))


def run(ctx: GlobalContext, config: Config) -> Decisions:
    bands, rows = config.band_params()
    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        timings[name] = round(clock[-1] - clock[-2], 3)

    out = str(ctx.scratch_dir / "bands")
    ref_files = [str(p) for r in config.reference for p in (io.parquet_parts(Path(r)) or [Path(r)])]
    counts = pl.from_arrow(ctx.map(signature_batch, columns=["id", config.text_column],
                                   config=config, out=out, prefix=""))
    if ref_files:
        ctx.map(signature_batch, columns=["id", config.text_column], files=[Path(f) for f in ref_files],
                config=config, out=out, prefix=REF)
    lap("signatures_s")
    pair_tables = ctx.run_tasks(bucket_pairs, list(range(config.partitions)), out=out,
                                max_bucket=config.max_bucket)
    pairs = pl.concat([pl.from_arrow(t) for t in pair_tables]) if pair_tables else pl.DataFrame()
    pairs = pairs.select(pl.min_horizontal("a", "b").alias("a"), pl.max_horizontal("a", "b").alias("b")) \
        .unique().filter(~(pl.col("a").str.starts_with(REF) & pl.col("b").str.starts_with(REF))) \
        .sort("a", "b")
    lap("candidates_s")
    if config.verify == "none":
        edges = pairs.with_columns(pl.lit(1.0).alias("jaccard"))
    else:
        involved = set(pairs["a"].to_list()) | set(pairs["b"].to_list())
        sets = [ctx.map(shingles_of_ids, columns=["id", config.text_column], config=config,
                        ids=involved, prefix="")] if pairs.height else []
        if ref_files and pairs.height:
            sets.append(ctx.map(shingles_of_ids, columns=["id", config.text_column],
                                files=[Path(f) for f in ref_files], config=config, ids=involved,
                                prefix=REF))
        sets = [t for t in sets if t.num_rows]
        table = pa.concat_tables(sets) if sets else pa.table({"id": pa.array([], pa.string())})
        edges = score_pairs(pairs, table, config).filter(pl.col("jaccard") >= config.threshold)
    lap("verify_s")
    columns = ["id"] + {"longest": ["n_chars"], "highest": [config.column]}.get(config.keep, [])
    order = keep_order(pl.from_arrow(ctx.read(columns)), config.keep, config.column)
    table = greedy_clusters(order, edges, REF)
    lap("clusters_s")
    info = {
        "bands": bands, "rows": rows, "num_perm": config.num_perm, "threshold": config.threshold,
        "shingle": f"{config.unit} {config.ngram}-grams", "scheme": config.scheme, "verify": config.verify,
        "false_positive_probability": _false_positive_probability(config.threshold, bands, rows),
        "false_negative_probability": _false_negative_probability(config.threshold, bands, rows),
        "documents": int(counts["docs"].sum()) if counts.height else 0,
        "empty_documents": int(counts["empty"].sum()) if counts.height else 0,
        "candidate_pairs": pairs.height, "verified_pairs": edges.height,
        "near_duplicates": int((table["drop_reason"] == "near_duplicate").sum()),
        "reference_duplicates": int((table["drop_reason"] == "reference_duplicate").sum()),
        "cluster_sizes": size_histogram(table), "timings": timings,
    }
    return Decisions(table=table.to_arrow().cast(pa.schema([
        ("id", pa.string()), (DROP_REASON, pa.string()), ("duplicate_of", pa.string()),
        ("jaccard", pa.float64()), ("cluster_id", pa.string()), ("cluster_size", pa.int64())])),
        info=info, rejected_only=("duplicate_of", "jaccard"))


def card_section(record: dict, plot_dir: Path) -> str:
    import matplotlib.pyplot as plt

    info = record.get("info", {})
    sizes = {int(k): v for k, v in info.get("cluster_sizes", {}).items()}
    if sizes:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar([str(k) for k in sorted(sizes)], [sizes[k] for k in sorted(sizes)], color="#4a7ab5")
        ax.set_yscale("log")
        ax.set_xlabel("cluster size (documents)")
        ax.set_ylabel("clusters")
        fig.tight_layout()
        fig.savefig(plot_dir / "cluster_sizes.png", dpi=100)
        plt.close(fig)
    return "\n".join([
        f"## Near-duplicate removal (`{record['folder']}`)", "",
        f"- removed: {info.get('near_duplicates', 0):,} near duplicates, "
        f"{info.get('reference_duplicates', 0):,} duplicates of reference datasets",
        f"- shingles: {info.get('shingle')}; MinHash: {info.get('num_perm')} permutations "
        f"({info.get('scheme')}), LSH {info.get('bands')} bands x {info.get('rows')} rows, "
        f"Jaccard threshold {info.get('threshold')}",
        f"- S-curve at the threshold: false positive probability "
        f"{info.get('false_positive_probability', 0):.4f}, false negative probability "
        f"{info.get('false_negative_probability', 0):.4f} (integrated, as datasketch optimizes them)",
        f"- candidates: {info.get('candidate_pairs', 0):,} pairs; verified ({info.get('verify')}): "
        f"{info.get('verified_pairs', 0):,}", "",
        "![cluster sizes](plots/cluster_sizes.png)" if sizes else "",
    ])
