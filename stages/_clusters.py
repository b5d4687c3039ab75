"""Keep policies and duplicate clusters, shared by the exact and MinHash dedup stages.

Keep policies order the documents; the first of a group is kept:
    first       input order (sources in config order, then path order)
    lowest_id   the smallest ``id``
    longest     the most characters (ties: input order)
    highest     the highest value of ``column`` (e.g. a quality score; ties: input order)
"""

from __future__ import annotations

import numba
import numpy as np
import polars as pl


def keep_order(frame: pl.DataFrame, keep: str, column: str | None = None) -> pl.DataFrame:
    """``frame`` (with ``id``) sorted best-first under the policy, with a ``rank`` column."""
    ranked = frame.with_row_index("_order")
    order = {
        "first": [pl.col("_order")],
        "lowest_id": [pl.col("id")],
        "longest": [-pl.col("n_chars"), pl.col("_order")] if keep == "longest" else [],
        "highest": [(-pl.col(column).cast(pl.Float64)).fill_null(float("inf")), pl.col("_order")]
        if keep == "highest" else [],
    }[keep]
    return ranked.sort(order).drop("_order").with_row_index("rank")


@numba.njit(cache=True)
def _greedy(indptr, earlier, sim, n):
    """Visit nodes in priority order; a node with a kept earlier neighbour joins the most
    similar one, otherwise it is kept. Returns (keeper index or -1, similarity)."""
    keeper = np.full(n, -1, dtype=np.int64)
    best_sim = np.zeros(n, dtype=np.float64)
    for v in range(n):
        best, score = -1, -1.0
        for k in range(indptr[v], indptr[v + 1]):
            u = earlier[k]
            if keeper[u] == -1 and sim[k] > score:
                best, score = u, sim[k]
        keeper[v] = best
        best_sim[v] = score if best >= 0 else 0.0
    return keeper, best_sim


def greedy_clusters(order: pl.DataFrame, edges: pl.DataFrame, ref_prefix: str) -> pl.DataFrame:
    """One verdict per document of ``order`` from similarity ``edges`` (a, b, jaccard).

    Reference documents (ids starting with ``ref_prefix``) come first and are never dropped.
    Returns id, drop_reason, duplicate_of, jaccard, cluster_id, cluster_size.
    """
    refs = pl.concat([edges.select(pl.col("a").alias("id")), edges.select(pl.col("b").alias("id"))]) \
        .unique().filter(pl.col("id").str.starts_with(ref_prefix)).sort("id")
    nodes = pl.concat([refs.with_columns(pl.lit(True).alias("ref")),
                       order.select("id").with_columns(pl.lit(False).alias("ref"))])
    nodes = nodes.with_row_index("node")
    index = nodes.select("id", "node")
    pairs = edges.join(index.rename({"id": "a", "node": "u"}), on="a") \
        .join(index.rename({"id": "b", "node": "v"}), on="b") \
        .select(pl.min_horizontal("u", "v").alias("early"), pl.max_horizontal("u", "v").alias("late"),
                "jaccard").sort("late", "early")
    n = nodes.height
    late = pairs["late"].to_numpy().astype(np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(indptr, late + 1, 1)
    indptr = np.cumsum(indptr)
    keeper, sim = _greedy(indptr, pairs["early"].to_numpy().astype(np.int64),
                          pairs["jaccard"].to_numpy().astype(np.float64), n)
    ids = nodes["id"]
    is_ref = nodes["ref"].to_numpy()
    cluster = np.where(keeper >= 0, keeper, np.arange(n))
    sizes = np.bincount(cluster[~is_ref], minlength=n) + is_ref.astype(np.int64)
    dropped = pl.Series(keeper >= 0)
    reason = pl.when(pl.Series(is_ref[cluster])).then(pl.lit("reference_duplicate")) \
        .otherwise(pl.lit("near_duplicate"))
    out = pl.DataFrame({"id": ids, "dropped": dropped, "keeper": ids.gather(cluster),
                        "jaccard": sim, "cluster_size": sizes[cluster].astype(np.int64)})
    out = out.with_columns(reason.alias("reason"))
    return out.filter(~pl.Series(is_ref)).select(
        "id",
        pl.when("dropped").then(pl.col("reason")).otherwise(None).alias("drop_reason"),
        pl.when("dropped").then(pl.col("keeper")).otherwise(None).alias("duplicate_of"),
        pl.when("dropped").then(pl.col("jaccard")).otherwise(None).alias("jaccard"),
        pl.col("keeper").alias("cluster_id"),
        "cluster_size",
    )


def size_histogram(table: pl.DataFrame) -> dict[str, int]:
    """Number of clusters of each size, counted on kept documents."""
    kept = table.filter(pl.col("drop_reason").is_null())
    counts = kept.group_by("cluster_size").len().sort("cluster_size")
    return {str(k): int(v) for k, v in counts.iter_rows()}
