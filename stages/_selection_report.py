"""What ``stages/lima.py`` reports: the ledger info of a selection and its dataset card section
(funnel, reasons, score histogram, category mix before and after, 2-D PCA plot)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.stage import DROP_REASON
from stages import _diversity as div

log = logging.getLogger("pipeline")


def reason_counts(reasons: pl.Series) -> dict[str, int]:
    """Rejections by reason, ``too_similar_to:<id>`` counted together."""
    grouped = pl.when(reasons.str.starts_with("too_similar_to:")).then(pl.lit("too_similar_to")) \
        .otherwise(reasons)
    counts = pl.select(grouped.alias("r")).to_series().drop_nulls().value_counts(sort=True)
    return dict(counts.rows())


def selection_info(frame: pl.DataFrame, pool: pl.DataFrame, status: np.ndarray,
                   vectors: np.ndarray, config, artifacts: Path) -> dict:
    """The ledger info of a selection; warns (log and terminal) when under the target."""
    reasons = frame[DROP_REASON]
    kept = int(reasons.is_null().sum())
    counts = reason_counts(reasons)
    rules = sum(v for k, v in counts.items() if k.startswith("rule:"))
    message = None
    if kept < config.target:
        message = (f"lima: selected {kept:,} of the {config.target:,} records asked for: of "
                   f"{frame.height:,} candidates {rules:,} failed a rule, "
                   f"{frame.height - rules - pool.height:,} were below quality or failed judging, "
                   f"{counts.get('too_similar_to', 0):,} too similar, {counts.get('quota_full', 0):,} "
                   "over a quota; add candidates or relax those settings")
        log.warning(message)
        print(message, file=sys.stderr, flush=True)

    def mix(part: pl.DataFrame) -> dict[str, int]:
        return dict(part["category"].value_counts().sort("category").rows())

    return {
        "target": config.target, "method": config.method, "message": message,
        "threshold": config.similarity_threshold,
        "funnel": {"candidates": frame.height, "after rules": frame.height - rules,
                   "after quality": pool.height, "embedded": len(vectors), "selected": kept},
        "reasons": counts,
        "judge_scores": {str(k): int((frame["judge_score"] == k).sum()) for k in range(1, 6)}
        if config.judge else {},
        "score_column": config.score_column,
        "score_histogram": [a.tolist() for a in np.histogram(frame["score"].drop_nulls().to_numpy(), 10)]
        if "score" in frame.columns and frame["score"].drop_nulls().len() else None,
        "categories_before": mix(frame), "categories_after": mix(frame.filter(reasons.is_null())),
        "projection": projection(pool, status, vectors, artifacts),
    }


def projection(pool: pl.DataFrame, status: np.ndarray, vectors: np.ndarray,
               artifacts: Path) -> str | None:
    """2-D PCA of the embedded candidates (at most 5,000 besides the selected), as Parquet."""
    n = len(vectors)
    if n < 3:
        return None
    chosen = status[:n] == div.SELECTED
    others = np.flatnonzero(~chosen)
    sample = np.random.default_rng(0).choice(others, min(len(others), 5000), replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(chosen), sample]))
    xy = div.pca2(vectors[keep])
    path = artifacts / "projection.parquet"
    pq.write_table(pa.table({"x": xy[:, 0], "y": xy[:, 1], "selected": chosen[keep],
                             "category": pool["category"].gather(keep).to_arrow()}), path)
    return str(path)


def _plots(info: dict, plot_dir: Path) -> list[str]:
    import matplotlib.pyplot as plt

    out = []
    judged, hist = info.get("judge_scores") or {}, info.get("score_histogram")
    if sum(judged.values()) or hist:
        fig, axes = plt.subplots(1, int(bool(sum(judged.values()))) + int(bool(hist)),
                                 figsize=(7, 3), squeeze=False)
        axes = list(axes[0])
        if sum(judged.values()):
            ax = axes.pop(0)
            ax.bar(list(judged), list(judged.values()), color="#4a7ab5")
            ax.set_xlabel("judge score")
            ax.set_ylabel("records")
        if hist:
            ax = axes.pop(0)
            counts, edges = hist
            ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#6a9a5b")
            ax.set_xlabel(info.get("score_column") or "score")
        fig.tight_layout()
        fig.savefig(plot_dir / "selection_scores.png", dpi=100)
        plt.close(fig)
        out.append("![selection scores](plots/selection_scores.png)")
    path = info.get("projection")
    if path and Path(path).is_file():
        points = pq.read_table(path).to_pydict()
        chosen = np.array(points["selected"], dtype=bool)
        x, y = np.array(points["x"]), np.array(points["y"])
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.scatter(x[~chosen], y[~chosen], s=6, color="#bbbbbb", label="candidates")
        ax.scatter(x[chosen], y[chosen], s=8, color="#c0504d", label="selected")
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.set_title("Embeddings (PCA): selected vs all")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_dir / "selection_pca.png", dpi=100)
        plt.close(fig)
        out.append("![selection PCA](plots/selection_pca.png)")
    return out


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    lines = [f"## LIMA selection (`{record['folder']}`)", "",
             f"Target {info.get('target', 0):,} records; diversity by {info.get('method')} over "
             f"all-MiniLM-L6-v2 embeddings, cosine threshold {info.get('threshold')}."]
    if info.get("message"):
        lines += ["", f"**{info['message']}**"]
    lines += ["", "| step | records |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in info.get("funnel", {}).items()]
    lines += ["", "| reason | records |", "|---|---:|"]
    lines += [f"| `{k}` | {v:,} |" for k, v in info.get("reasons", {}).items()]
    before, after = info.get("categories_before", {}), info.get("categories_after", {})
    if len(before) > 1:
        lines += ["", "| category | candidates | selected |", "|---|---:|---:|"]
        lines += [f"| {k} | {v:,} | {after.get(k, 0):,} |" for k, v in before.items()]
    plots = _plots(info, plot_dir)
    return "\n".join(lines + ([""] + plots if plots else []))
