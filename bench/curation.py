"""Curation benchmark: decontamination throughput, LIMA selection time, embedding throughput.

Decontamination: records/s in one process (one core) hashing every word 13-gram of this
interpreter's stdlib ``.py`` files (the corpus) and looking them up, against HumanEval (164
problems) and against a 10,000-document evaluation set (site-packages files, 4 KB each); the
baseline is the plain-Python way (a set of word-tuple 13-grams, each record's windows tested
against it), both timed on the first 1,500 records of the corpus for the ratio.

Selection: 100,000 candidates to 1,000 with precomputed embeddings (clustered unit vectors, so
that near-copies abound and the filter must scan far): the rules over the texts, the quality
sort and Deita's greedy filter (blocked matrix products + compiled in-block pass) or k-center;
the baseline is the filter as a loop over candidates (one matrix-vector product against the
selected set each). Embedding 100,000 texts with MiniLM on 2 CPU cores takes far longer than the
selection, so the embedding throughput is measured on its own and reported next to it.
Writes ``bench/results/curation.json``.

    python bench/curation.py
"""

from __future__ import annotations

import json
import re
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import evalsets  # noqa: E402
from pipeline.evalsets import EvalSet, EvalSpec  # noqa: E402
from stages import _diversity as div  # noqa: E402
from stages import decontaminate as dc  # noqa: E402
from stages.lima import Config as LimaConfig  # noqa: E402
from stages.lima import rule_reasons, selection_reasons  # noqa: E402

NGRAM, BASELINE_DOCS = 13, 1500
WORD = re.compile(r"[0-9a-z\x80-\U0010ffff]+")


def python_files(root: str, limit: int, max_chars: int | None = None) -> list[str]:
    texts = []
    for path in sorted(Path(root).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text[:max_chars] if max_chars else text)
        if len(texts) == limit:
            break
    return texts


def decontam_rate(texts: list[str], index: dc.EvalIndex) -> tuple[float, int]:
    batch = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    config = dc.Config()
    dc.find_batch(batch.slice(0, 10), index, config)  # compile
    start, hits = time.perf_counter(), 0
    for offset in range(0, batch.num_rows, 2000):
        hits += dc.find_batch(batch.slice(offset, 2000), index, config).num_rows
    return batch.num_rows / (time.perf_counter() - start), hits


def plain_python_rate(texts: list[str], eval_texts: list[str]) -> float:
    def grams(text: str) -> list[tuple]:
        words = WORD.findall(text.lower())
        return [tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]

    table = {g for text in eval_texts for g in grams(text)}
    start = time.perf_counter()
    for text in texts:
        any(g in table for g in grams(text))
    return len(texts) / (time.perf_counter() - start)


def decontamination() -> dict:
    corpus = python_files(sysconfig.get_paths()["stdlib"], 20000)
    mb = sum(len(t.encode()) for t in corpus) / 1e6
    humaneval = evalsets.load(EvalSpec(name="humaneval"))
    big_texts = python_files(sysconfig.get_paths()["purelib"], 10000, 4000)
    big = EvalSet("site-packages-10k", [str(i) for i in range(len(big_texts))], big_texts, "-")
    out = {"corpus_records": len(corpus), "corpus_mb": round(mb, 1)}
    for key, spec in (("humaneval", humaneval), ("10k", big)):
        start = time.perf_counter()
        index = dc.build_index([spec], NGRAM, common_items=5)
        built = time.perf_counter() - start
        rate, hits = decontam_rate(corpus, index)
        same, _ = decontam_rate(corpus[:BASELINE_DOCS], index)
        baseline = plain_python_rate(corpus[:BASELINE_DOCS], spec.texts)
        out[key] = {"eval_items": len(spec.texts), "eval_ngrams": int((index.keys != 0).sum()),
                    "index_build_s": round(built, 2), "records_per_s_per_core": round(rate, 1),
                    "mb_per_s_per_core": round(rate * mb / len(corpus), 1),
                    "records_contaminated": hits,
                    f"first_{BASELINE_DOCS}_records_per_s_per_core": round(same, 1),
                    f"plain_python_first_{BASELINE_DOCS}_records_per_s": round(baseline, 1),
                    "ratio_vs_plain_python": round(same / baseline, 1)}
    return out


def candidates(n: int, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """``n`` synthetic instruction records with judge scores and embeddings around 1,000
    centres (cosine about 0.93 within one: near-copies). The members of the last 10 centres all
    score 1, so they come last in quality order and the filter scans every candidate to reach
    1,000: the worst case for time."""
    rng = np.random.default_rng(seed)
    tail = n // 100
    centre = np.concatenate([rng.integers(0, 990, n - tail), rng.integers(990, 1000, tail)])
    score = np.concatenate([rng.integers(2, 6, n - tail), np.ones(tail, dtype=np.int64)])
    base = rng.normal(size=(1000, 384)).astype(np.float32)
    vectors = base[centre] + 0.27 * rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    frame = pl.DataFrame({
        "id": [f"r{i:06d}" for i in range(n)],
        "instruction": [f"Explain topic {c} in simple words." for c in centre],
        "response": [f"Topic {c} is explained here with an example, number {i}." for i, c in
                     enumerate(centre)],
        "judge_score": score, "category": rng.choice(["code", "math", "prose"], n),
    })
    return frame, vectors


def lima_select(frame: pl.DataFrame, vectors: np.ndarray, method: str) -> dict:
    """Seconds for rules + quality order + diversity filter + reasons (and for the filter
    alone); records selected; candidates visited."""
    config = LimaConfig(target=1000, method=method, max_category_fraction=0.5)
    start = time.perf_counter()
    rules = rule_reasons(frame, config)
    pool = pl.concat([frame, rules], how="horizontal").with_row_index("_row") \
        .filter(pl.col("drop_reason").is_null()).sort("judge_score", descending=True)
    order = pool["_row"].to_numpy()
    names = ["code", "math", "prose"]
    cats = pool["category"].replace_strict(names, [0, 1, 2], return_dtype=pl.Int64).to_numpy()
    caps = np.array([500, 500, 500])
    ordered = vectors[order]
    filter_start = time.perf_counter()
    if method == "kcenter":
        status, partner, sim, _ = div.kcenter(ordered, cats, caps, 1000, 0.9)
    else:
        status, partner, sim, _ = div.Greedy(1000, 0.9, caps).add(ordered, cats)
    filter_s = time.perf_counter() - filter_start
    selection_reasons(status, partner, sim, pool["id"].to_numpy(), pool, config)
    return {"s": time.perf_counter() - start, "filter_s": filter_s,
            "selected": int((status == div.SELECTED).sum()),
            "visited": int((status != div.NOT_REACHED).sum()), "order": order}


def plain_greedy_s(vectors: np.ndarray, target: int, threshold: float) -> float:
    start = time.perf_counter()
    chosen = np.zeros((target, vectors.shape[1]), dtype=np.float32)
    k = 0
    for v in vectors:
        if k == target:
            break
        if k == 0 or (chosen[:k] @ v).max() < threshold:
            chosen[k] = v
            k += 1
    return time.perf_counter() - start


def embedding_rate(n: int = 384) -> dict:
    import torch

    texts = [f"Write a Python function that returns the {i}th Fibonacci number, and explain "
             f"why the iterative version runs in linear time while the naive recursion does "
             f"not. Answer: use a loop that keeps the last two values; step {i}." for i in range(n)]
    start = time.perf_counter()
    div.embed(texts[:2])
    load = time.perf_counter() - start
    out = {"model_load_s": round(load, 1)}
    threads = torch.get_num_threads()
    for label, count in (("all_cores", threads), ("per_core", 1)):
        torch.set_num_threads(count)
        start = time.perf_counter()
        div.embed(texts)
        out[f"texts_per_s_{label}"] = round(n / (time.perf_counter() - start), 1)
    torch.set_num_threads(threads)
    out["cores"] = threads
    out["estimated_100k_min_all_cores"] = round(100_000 / out["texts_per_s_all_cores"] / 60, 1)
    return out


def measure() -> dict:
    results: dict = {}
    decon = decontamination()
    results["decontam_records_per_s_per_core"] = decon["humaneval"]["records_per_s_per_core"]
    results["decontam_10k_records_per_s_per_core"] = decon["10k"]["records_per_s_per_core"]
    results["decontam_ratio_vs_plain_python"] = decon["humaneval"]["ratio_vs_plain_python"]
    frame, vectors = candidates(100_000)
    div.Greedy(10, 0.9, np.array([-1, -1, -1])).add(vectors[:600], np.zeros(600, np.int64))  # compile
    greedy = lima_select(frame, vectors, "greedy")
    baseline = plain_greedy_s(vectors[greedy["order"]], 1000, 0.9)
    kcenter = lima_select(frame, vectors, "kcenter")
    results.update({
        "lima_select_s_100k_to_1k": round(greedy["s"], 2),
        "lima_selected": greedy["selected"], "lima_candidates_visited": greedy["visited"],
        "lima_filter_s": round(greedy["filter_s"], 2),
        "lima_plain_loop_filter_s": round(baseline, 2),
        "lima_filter_ratio_vs_plain_loop": round(baseline / greedy["filter_s"], 1),
        "lima_kcenter_s_100k_to_1k": round(kcenter["s"], 2),
        "lima_kcenter_selected": kcenter["selected"],
        "lima_timed_steps": "rules over the texts + quality sort + Deita greedy filter "
                            "(precomputed embeddings; quotas of 500 per category) + reasons",
        "embedding": embedding_rate(),
        "decontamination": decon,
    })
    return results


def main() -> None:
    text = json.dumps(measure(), indent=2)
    (ROOT / "bench" / "results" / "curation.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
