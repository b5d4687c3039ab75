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


UNDECIDED, KEPT = -2, -1  # node states; a decided duplicate holds its keeper's node number


@numba.njit(cache=True)
def _greedy(early, late, sim, keeper, best):
    """Group the edges by their later node (a counting sort), then visit undecided nodes in
    order: a node with a kept earlier neighbour joins the most similar one (ties: the earliest),
    otherwise it is kept."""
    n = len(keeper)
    indptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(len(late)):
        indptr[late[k] + 1] += 1
    for v in range(n):
        indptr[v + 1] += indptr[v]
    fill = indptr[:-1].copy()
    earlier = np.empty(len(late), dtype=np.int64)
    score_of = np.empty(len(late), dtype=np.float64)
    for k in range(len(late)):
        earlier[fill[late[k]]] = early[k]
        score_of[fill[late[k]]] = sim[k]
        fill[late[k]] += 1
    for v in range(n):
        if keeper[v] != UNDECIDED:
            continue
        pick, score = KEPT, -1.0
        for k in range(indptr[v], indptr[v + 1]):
            u = earlier[k]
            if keeper[u] == KEPT and (score_of[k] > score or (score_of[k] == score and u < pick)):
                pick, score = u, score_of[k]
        keeper[v] = pick
        best[v] = score if pick >= 0 else 0.0


def greedy_clusters(early: np.ndarray, late: np.ndarray, sim: np.ndarray, keeper: np.ndarray,
                    best: np.ndarray) -> None:
    """Decide every ``UNDECIDED`` node of ``keeper`` in place from similarity edges
    (``early`` < ``late``, node numbers in keep-policy order); decided nodes keep their state.

    Each duplicate is within the edge similarity of a kept document, so clusters never chain
    unrelated documents the way connected components do.
    """
    _greedy(early.astype(np.int64, copy=False), late.astype(np.int64, copy=False),
            sim.astype(np.float64, copy=False), keeper, best)


def size_histogram(table: pl.DataFrame) -> dict[str, int]:
    """Number of clusters of each size, counted on kept documents."""
    kept = table.filter(pl.col("drop_reason").is_null())
    counts = kept.group_by("cluster_size").len().sort("cluster_size")
    return {str(k): int(v) for k, v in counts.iter_rows()}
