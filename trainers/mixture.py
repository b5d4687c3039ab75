"""Pretraining mixtures by tokens: components drawn to exact token quotas, repeated if small.

A mixture is a set of tokenized components (``tokenize_to_shards`` folders) with weights. For a
stream of ``total`` tokens, component ``i`` gets ``round(w_i / sum(w) * total)`` tokens: its
documents in a seeded random order, a new order per pass when the quota exceeds what it holds
(the passes are its epochs), the last document cut at the quota. Then every chosen document of
every component is shuffled into one stream, written as a shard folder that ``PackedBlocks``
reads like any other, with ``mixture.json``: per component the requested and realized weight,
tokens, documents, distinct documents and epochs.

Options: documents whose text hash is in ``exclude`` are left out (held-out evaluation
documents), and ``upsample = "cluster_size"`` repeats each document as many times as its dedup
cluster had members, up to ``max_repeats`` (FineWeb-2's rehydration, which reweights documents
by their duplicate-cluster size; FineWeb-2 picks a weight per size bucket from each bucket's
filter rate, here the weight is the size itself, capped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import io
from trainers.data import DOC_DTYPE, INDEX, docs_path
from trainers.errors import TrainError

REPORT = "mixture.json"


@dataclass
class Component:
    name: str
    shard_dir: Path
    weight: float = 1.0


@dataclass
class _Docs:
    """Every document of a component: which shard, where it starts, its row in ``DOC_DTYPE``."""

    shard: np.ndarray
    start: np.ndarray
    rows: np.ndarray
    files: list[Path]
    dtype: np.dtype


def read_docs(shard_dir: Path) -> _Docs:
    """The per-document table of a tokenized folder (its shards' ``.docs.npy`` files)."""
    index = json.loads((shard_dir / INDEX).read_text())
    shard, start, rows, files = [], [], [], []
    for i, entry in enumerate(index["shards"]):
        path = shard_dir / entry["file"]
        table = np.load(docs_path(path)) if docs_path(path).is_file() else None
        if table is None:
            raise TrainError(f"{shard_dir} was tokenized without document tables; delete it to "
                             "tokenize again")
        files.append(path)
        shard.append(np.full(len(table), i, np.int32))
        start.append(np.concatenate([[0], np.cumsum(table["tokens"])[:-1]]).astype(np.int64))
        rows.append(table)
    return _Docs(_cat(shard, np.int32), _cat(start, np.int64), _cat(rows, DOC_DTYPE), files,
                 np.dtype(index["dtype"]))


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def hashes(shard_dir: Path) -> np.ndarray:
    """The text hashes of a tokenized folder's documents."""
    return read_docs(shard_dir).rows["hash"]


def _copies(rows: np.ndarray, upsample: str, max_repeats: int) -> np.ndarray:
    if upsample == "cluster_size":
        return np.clip(rows["cluster_size"], 1, max_repeats).astype(np.int64)
    return np.ones(len(rows), np.int64)


def _draw(tokens: np.ndarray, quota: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Documents (indices into ``tokens``) in seeded passes until ``quota`` tokens, and how many
    tokens of each to take (the last one cut); also the number of passes begun."""
    total = int(tokens.sum())
    if quota <= 0 or total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    passes = -(-quota // total)
    order = np.concatenate([rng.permutation(len(tokens)) for _ in range(passes)])
    ends = np.cumsum(tokens[order])
    last = int(np.searchsorted(ends, quota))
    order = order[:last + 1]
    take = tokens[order].copy()
    take[-1] -= int(ends[last]) - quota
    return order, take, passes


def realize(components: list[Component], total: int, out_dir: Path, seed: int,
            exclude: np.ndarray | None = None, upsample: str = "none",
            max_repeats: int = 5) -> dict:
    """Write a stream of exactly ``total`` tokens mixed by weight; return its report (reused
    when the components, weights and options are unchanged)."""
    if not components or any(c.weight <= 0 for c in components):
        raise TrainError("a mixture needs components with positive weights")
    fingerprint = io.fingerprint([[c.name, json.loads((c.shard_dir / INDEX).read_text())["fingerprint"],
                                   c.weight] for c in components]
                                 + [total, seed, upsample, max_repeats,
                                    io.fingerprint(sorted(int(h) for h in exclude))
                                    if exclude is not None and len(exclude) else None])
    report_path = out_dir / REPORT
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if report.get("fingerprint") == fingerprint:
            return report
    rng = np.random.default_rng(seed)
    weight_sum = sum(c.weight for c in components)
    quotas = [round(c.weight / weight_sum * total) for c in components]
    quotas[-1] = total - sum(quotas[:-1])
    pieces, summary = [], []
    for number, (comp, quota) in enumerate(zip(components, quotas)):
        docs = read_docs(comp.shard_dir)
        keep = ~np.isin(docs.rows["hash"], exclude) if exclude is not None and len(exclude) \
            else np.ones(len(docs.rows), bool)
        kept = np.flatnonzero(keep)
        copies = _copies(docs.rows[kept], upsample, max_repeats)
        expanded = np.repeat(kept, copies)  # a document of a cluster of n: n draws (capped)
        available = int(docs.rows["tokens"][expanded].sum())
        if available == 0:
            raise TrainError(f"mixture component {comp.name!r} has no document left "
                             f"({len(docs.rows)} tokenized, {int((~keep).sum())} held out)")
        order, take, passes = _draw(docs.rows["tokens"][expanded], quota, rng)
        chosen = expanded[order]
        pieces.append((np.stack([np.full(len(chosen), number), chosen, take], axis=1), docs))
        distinct = int(docs.rows["tokens"][kept].sum())
        summary.append({
            "name": comp.name, "weight": round(comp.weight / weight_sum, 6), "tokens": int(take.sum()),
            "documents": int(len(chosen)), "distinct_documents": int(len(np.unique(chosen))),
            "available_tokens": distinct, "pool_tokens": available,
            "held_out_documents": int((~keep).sum()),
            "epochs": round(int(take.sum()) / distinct, 4), "passes": passes})
    _write_stream(pieces, rng, out_dir, total)
    for item in summary:
        item["realized_weight"] = round(item["tokens"] / total, 6)
    report = {"fingerprint": fingerprint, "tokens": total, "seed": seed, "upsample": upsample,
              "max_repeats": max_repeats if upsample != "none" else None, "components": summary}
    io.write_text_atomic(report_path, json.dumps(report, indent=2))
    return report


def _write_stream(pieces: list[tuple[np.ndarray, _Docs]], rng: np.random.Generator, out_dir: Path, total: int) -> None:
    """Every chosen document of every component, shuffled, into ``shard-00000.bin``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*"):
        old.unlink()
    dtype = np.dtype(pieces[0][1].dtype)
    arrays = [[np.memmap(f, dtype=dtype, mode="r") if f.stat().st_size else np.empty(0, dtype)
               for f in docs.files] for _, docs in pieces]  # a shard of a file with no documents
    rows = np.concatenate([p for p, _ in pieces])
    rows = rows[rng.permutation(len(rows))]
    out = out_dir / "shard-00000.bin"
    written = 0
    with open(out, "wb") as fh:
        for number, doc, take in rows:
            docs = pieces[number][1]
            start = int(docs.start[doc])
            fh.write(np.asarray(arrays[number][int(docs.shard[doc])][start:start + int(take)]).tobytes())
            written += int(take)
    assert written == total, (written, total)
    vocab = max(json.loads((docs.files[0].parent / INDEX).read_text())["vocab_size"]
                for _, docs in pieces)
    index = {"fingerprint": None, "dtype": dtype.name, "vocab_size": vocab,
             "shards": [{"file": out.name, "tokens": total, "docs": int(len(rows))}],
             "tokens": total, "docs": int(len(rows))}
    io.write_text_atomic(out_dir / INDEX, json.dumps(index, indent=2))


def stream_tokens(loop, workers: int = 1) -> int:
    """Tokens a stream needs so that training ``max_steps`` steps reads each block once: the
    trained tokens plus the loop's held-out share plus one block."""
    trained = loop.max_steps * loop.micro_batch_size * loop.grad_accum * loop.seq_len * workers
    return int(trained / (1 - loop.eval_fraction)) + 2 * (loop.seq_len + 1)


def card_section(report: dict) -> list[str]:
    """Markdown lines for a model card: the realized mixture."""
    lines = ["## Data mixture", "",
             f"{report['tokens']:,} tokens drawn by weight (seed {report['seed']}"
             + (f", documents repeated by dedup cluster size up to {report['max_repeats']}x"
                if report.get("upsample") not in (None, "none") else "") + ").", "",
             "| component | requested | realized | tokens | documents (distinct) | epochs |",
             "|---|---:|---:|---:|---:|---:|"]
    for c in report["components"]:
        lines.append(f"| {c['name']} | {c['weight']:.2%} | {c['realized_weight']:.2%} | "
                     f"{c['tokens']:,} | {c['documents']:,} ({c['distinct_documents']:,}) | "
                     f"{c['epochs']:.2f} |")
    return lines
