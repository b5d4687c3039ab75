"""Near-duplicate removal with MinHash LSH, candidates verified by exact Jaccard.

Steps, each a set of Ray tasks over row-group units or shuffle partitions (see
``stages/_dedup_shuffle.py``); documents travel as int64 numbers, and no process holds all
signatures, pairs or shingle sets:

1. signatures: per unit, normalized word 5-gram shingles (``unit = "char"`` for character
   n-grams), ``num_perm`` permutations bit-identical to ``datasketch.MinHash`` (see
   ``stages/_minhash.py``), then one 64-bit key per LSH band, shuffled to ``partitions``
   folders by key.
2. candidates: per partition, documents sharing a band key form a bucket, sorted in
   keep-policy order (the driver broadcasts the order: 8 bytes per document). A bucket of up
   to ``max_bucket`` members is paired in full; in a larger one every member is paired with
   the bucket's first member (``stages/_dedup_pairs.py``). Pairs are shuffled by their first
   document; the driver gets back only the numbers of the documents that have a pair.
3. verification: those numbers are broadcast once; per unit, the shingle sets of the involved
   documents are shuffled by document; per partition, pairs join the first document's set,
   are shuffled by the second, join its set and are scored: exact Jaccard (``verify =
   "exact"``, the default: the 128-permutation estimate is too noisy near the threshold), the
   MinHash estimate (``"estimate"``), or none. Only edges at or above the threshold remain.
4. clusters: documents are visited in keep-policy order (as in ``dedup_exact``); a document
   with a verified edge to an already kept document becomes a duplicate of the most similar
   one, otherwise it is kept. Every dropped document is within the threshold of the document it
   names, so clusters do not chain unrelated documents the way connected components over raw
   candidates do. ``clusters = "local"`` runs this greedy on the driver (numba; 20M edges in
   4 s, about 75 bytes of driver memory per edge); ``"distributed"`` reaches the same
   decisions in rounds over edge partitions (``stages/_dedup_graph.py``: 40 bytes per paired
   document on the driver, edges stay in their partitions; on 2 workers 10-15x slower than
   the driver at 2M edges, 3.5x at 20M); ``"auto"`` (the default) is local up to
   ``local_edges`` verified edges (20M: about 1.4 GB of driver memory) and rounds above,
   finishing on the driver once the undecided edges fit.
5. leader rounds, for buckets over ``max_bucket``: the members kept so far are paired with the
   kept members before them (a window of 2, 4, ... up to ``max_bucket``), pairs not compared
   before are verified, and the greedy runs again, until no new edge appears and every window
   covered its bucket. The kept documents are then those of the greedy over every pair of
   every bucket (in a bucket with more than ``max_bucket`` kept members, each is compared with
   the first ``max_bucket`` of them), so a cluster of n mutually similar copies keeps one, for
   about n pairs per round (100,000 copies of a 60-word text: one kept, the stage in about
   10 s on 2 cores).

Bands x rows come from datasketch's own optimizer for the threshold. Candidates are verified,
so a false positive costs one Jaccard computation while a false negative is a duplicate left
in: the optimizer weighs them 0.02 / 0.98 (Jaccard 0.8, 128 permutations: 17 bands of 7 rows,
a pair at exactly 0.8 becomes a candidate with probability 0.98); with ``verify = "none"`` the
weights are datasketch's 0.5 / 0.5 (9 bands of 13 rows, probability 0.40 at 0.8).
``reference`` names Parquet datasets (e.g. a previous run's output) to dedup against:
documents near-duplicating a reference document are dropped, the reference itself is never
touched (reference documents come first in the keep order and are never paired together).

Drop reasons: ``near_duplicate`` and ``reference_duplicate``, with ``duplicate_of`` and
``jaccard``. Every row gets ``cluster_id`` (its keeper) and kept rows keep ``cluster_size``.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch.lsh import _false_negative_probability, _false_positive_probability, _optimal_param
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import io
from pipeline.stage import DROP_REASON, Decisions, GlobalContext
from stages import _dedup_graph as gr
from stages import _dedup_pairs as pr
from stages import _dedup_shuffle as sh
from stages._clusters import KEPT, keep_order, size_histogram

VERSION = "2"
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
    partitions: int | None = Field(default=None, ge=1, description="shuffle partitions; default: "
                                   "one per 256 MB of input, 4 to 256")
    max_bucket: int = Field(default=50, ge=2, description="buckets up to this size are paired "
                            "in full; larger ones pair members with their earliest kept members")
    reference: list[str] = Field(default_factory=list)
    clusters: Literal["auto", "local", "distributed"] = "auto"
    local_edges: int = Field(default=20_000_000, ge=0, description="auto: most verified edges "
                             "clustered on the driver; above, rounds over Ray")

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


def _keep_order(ctx: GlobalContext, config: Config, inputs: int,
                refs: int) -> tuple[pl.Series, np.ndarray]:
    """Input ids in document order, and the keep-policy position of every document number
    (reference documents first, in their order)."""
    columns = ["id"] + {"longest": ["n_chars"], "highest": [config.column]}.get(config.keep, [])
    tables = [pq.read_table(f, columns=columns) for f in ctx.input_files]
    frame = pl.from_arrow(pa.concat_tables(tables, promote_options="permissive"))
    ranked = keep_order(frame.with_row_index("doc"), config.keep, config.column)
    order = np.empty(inputs + refs, dtype=np.int64)
    order[ranked["doc"].to_numpy()] = refs + ranked["rank"].to_numpy()
    order[inputs:] = np.arange(refs)
    return frame["id"], order


def _verify(ctx: GlobalContext, config: Config, work: dict, round_: int) -> tuple[int, int]:
    """The pairs of round ``round_`` not compared before, scored partition by partition;
    returns (new candidate pairs, edges)."""
    parts = list(range(config.partitions))
    pairs, seen = f"{work['pairs']}/r{round_}", [f"{work['pairs']}/r{r}" for r in range(1, round_)]
    if config.verify == "none":
        found = ctx.run_tasks(sh.join_left_task, parts, pairs=pairs, seen=seen, sets=None,
                              out=work["edges"], config=config, name=f"r{round_}-")
        return sum(found), sum(found)
    joined = f"{work['joined']}/r{round_}"
    new = ctx.run_tasks(sh.join_left_task, parts, pairs=pairs, seen=seen, sets=work["sets"],
                        out=joined, config=config, name="a")
    edges = ctx.run_tasks(sh.score_task, parts, joined=joined, sets=work["sets"],
                          out=work["edges"], config=config, name=f"r{round_}")
    return sum(new), sum(edges)


def _cluster(ctx: GlobalContext, config: Config, graph: gr.Graph, work: dict, edges: int,
             round_: int) -> tuple[np.ndarray, np.ndarray, str, int]:
    """The greedy over every edge so far: (keepers, similarities, mode, rounds over Ray)."""
    mode = config.clusters if config.clusters != "auto" else \
        ("local" if edges <= config.local_edges else "distributed")
    if mode == "local":
        return *gr.local(graph, work["edges"], config.partitions), mode, 0
    finish = config.local_edges if config.clusters == "auto" else -1
    keeper, best, rounds = gr.distributed(ctx, graph, work["edges"], f"{work['rounds']}/r{round_}",
                                          config.partitions, finish)
    return keeper, best, mode, rounds


def run(ctx: GlobalContext, config: Config) -> Decisions:
    bands, rows = config.band_params()
    clock = [time.perf_counter()]
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        timings[name] = round(clock[-1] - clock[-2], 3)

    work = {name: str(ctx.scratch_dir / name)
            for name in ("bands", "large", "pairs", "sets", "joined", "edges", "rounds")}
    units = sh.plan_units(ctx.input_files)
    inputs = sum(u.rows for u in units)
    ref_files = [p for r in config.reference for p in (io.parquet_parts(Path(r)) or [Path(r)])]
    ref_units = sh.plan_units(ref_files, first=inputs, index=len(units))
    tasks = sh.largest_first(units + ref_units)
    config = config.model_copy(update={"partitions": config.partitions or sh.auto_partitions(tasks)})
    parts = list(range(config.partitions))
    counts = ctx.run_tasks(sh.signature_task, tasks, config=config, out=work["bands"])
    empty = sum(c["empty"] for u, c in zip(tasks, counts) if u.index < len(units))
    lap("signatures_s")
    ids, order = _keep_order(ctx, config, inputs, sum(u.rows for u in ref_units))
    seen = ctx.run_tasks(pr.candidate_task, parts, bands=work["bands"], out=f"{work['pairs']}/r1",
                         large=work["large"], partitions=config.partitions,
                         max_bucket=config.max_bucket, inputs=inputs, order=order)
    involved = np.unique(np.concatenate([docs for docs, _ in seen]))
    large = sum(n for _, n in seen)
    lap("candidates_s")
    if config.verify != "none":
        needed = [u for u in tasks if np.searchsorted(involved, u.first + u.rows) >
                  np.searchsorted(involved, u.first)]
        ctx.run_tasks(sh.sets_task, needed, config=config, involved=involved, out=work["sets"])
    candidates, edges = _verify(ctx, config, work, 1)
    lap("verify_s")
    graph = gr.Graph.build(involved, order[involved])
    keeper, best, mode, rounds = _cluster(ctx, config, graph, work, edges, 1)
    lap("clusters_s")
    pairing, window = 1, 1
    while large:  # large buckets: each kept member against the kept members before it
        window = min(2 * window, config.max_bucket)
        kept = np.sort(graph.docs[keeper == KEPT])
        results = ctx.run_tasks(pr.leader_task, parts, large=work["large"],
                                out=f"{work['pairs']}/r{pairing + 1}", partitions=config.partitions,
                                window=window, max_bucket=config.max_bucket, inputs=inputs, kept=kept)
        wider = any(short for _, short in results)
        found = 0
        if any(n for n, _ in results):
            pairing += 1
            new, found = _verify(ctx, config, work, pairing)
            candidates, edges = candidates + new, edges + found
        if found:
            keeper, best, mode, rounds = _cluster(ctx, config, graph, work, edges, pairing)
        elif not wider:
            break
    lap("leader_rounds_s")
    table = gr.decisions(graph, keeper, best, ids, ref_units, REF)
    lap("decisions_s")
    info = {
        "bands": bands, "rows": rows, "num_perm": config.num_perm, "threshold": config.threshold,
        "shingle": f"{config.unit} {config.ngram}-grams", "scheme": config.scheme, "verify": config.verify,
        "false_positive_probability": _false_positive_probability(config.threshold, bands, rows),
        "false_negative_probability": _false_negative_probability(config.threshold, bands, rows),
        "documents": inputs, "empty_documents": empty, "candidate_pairs": candidates,
        "verified_pairs": edges, "large_bucket_rows": large, "pairing_rounds": pairing,
        "max_bucket": config.max_bucket,
        "clusters": mode, "cluster_rounds": rounds,
        "partitions": config.partitions, "units": len(tasks),
        "near_duplicates": int((table["drop_reason"] == "near_duplicate").sum()),
        "reference_duplicates": int((table["drop_reason"] == "reference_duplicate").sum()),
        "cluster_sizes": size_histogram(table), "timings": timings,
    }
    return Decisions(table=table.to_arrow().cast(pa.schema([
        ("id", pa.string()), (DROP_REASON, pa.string()), ("duplicate_of", pa.string()),
        ("jaccard", pa.float64()), ("cluster_id", pa.string()), ("cluster_size", pa.int64())])),
        info=info, rejected_only=("duplicate_of", "jaccard"))


def _pairing_line(info: dict) -> str:
    limit, rows, rounds = info.get("max_bucket", 50), info.get("large_bucket_rows", 0), \
        info.get("pairing_rounds", 1)
    if not rows:
        return f"every LSH bucket (at most {limit} documents) paired in full"
    return (f"buckets over {limit} documents ({rows:,} band rows) paired with their earliest kept "
            f"members, {rounds} round{'s' if rounds > 1 else ''}")


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
        f"{info.get('verified_pairs', 0):,}; {_pairing_line(info)}; clusters: " + (
            "greedy on the driver" if info.get("clusters", "local") == "local"
            else f"{info.get('cluster_rounds', 0)} rounds over Ray"), "",
        "![cluster sizes](plots/cluster_sizes.png)" if sizes else "",
    ])
