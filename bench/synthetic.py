"""Synthetic-data benchmarks: the Self-Instruct novelty filter and generation through the LLM layer.

1. ROUGE-L filter: 1,000 candidate instructions screened against a pool of 50,000 (made from the
   paper's 175 seed tasks in ``../shared/data/self-instruct/seed_tasks.jsonl`` by seeded word
   substitutions, so lengths and vocabulary are realistic). Ours: ``stages/_rouge.RougePool``.
   The reference: the Self-Instruct code's loop, ``rouge_score`` over a 2-process pool for each
   candidate (a faithful re-implementation of its tokenizer and LCS table when the package is
   not installed), timed on a few candidates; both must give identical ROUGE-L values.
2. Generation: the ``self_instruct`` stage end to end (rounds, filters, classification,
   instances) against a local server answering after a fixed latency L = 0.2 s, through the LLM
   layer with ``max_concurrency`` C = 16. Ideal time = sum over the stage's LLM batches of
   ceil(n / C) x L; efficiency = ideal / measured.

Writes ``bench/results/synthetic.json``.

    python bench/synthetic.py
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from bench.llm_throughput import ServerProcess  # noqa: E402
from pipeline.llm import LLMClient, LLMConfig  # noqa: E402
from stages import self_instruct  # noqa: E402
from stages._rouge import RougePool  # noqa: E402

SEEDS = ROOT.parent / "shared" / "data" / "self-instruct" / "seed_tasks.jsonl"
POOL, CANDIDATES, REFERENCE_CANDIDATES = 50_000, 1_000, 2
LATENCY, CONCURRENCY = 0.2, 16


def paper_seeds() -> list[str]:
    return [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines() if line]


def variants(seeds: list[str], n: int, seed: int) -> list[str]:
    """Instructions like the seeds: each a seed with about a third of its words swapped."""
    pick = random.Random(seed)
    vocab = sorted({w for s in seeds for w in s.split()})
    out = []
    for _ in range(n):
        words = pick.choice(seeds).split()
        out.append(" ".join(pick.choice(vocab) if pick.random() < 0.35 else w for w in words))
    return out


try:
    from rouge_score import rouge_scorer

    REFERENCE = "rouge_score"
    _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def reference_score(target: str, prediction: str) -> float:
        return _SCORER.score(target, prediction)["rougeL"].fmeasure
except ImportError:  # the tests' re-implementation: the same tokenizer and LCS table
    from tests.stages.test_self_instruct import reference_rouge_l as reference_score

    REFERENCE = "rouge_score re-implementation"


def rouge_bench() -> dict:
    seeds = paper_seeds()
    pool_texts = variants(seeds, POOL, 1)
    candidates = variants(seeds, CANDIDATES, 2)
    pool = RougePool(pool_texts)
    started = time.perf_counter()
    verdicts = pool.screen(candidates, 0.7)
    ours_s = time.perf_counter() - started
    single = RougePool(pool_texts)
    started = time.perf_counter()
    for text in candidates[:20]:
        single.screen([text], 0.7)
    single_s = (time.perf_counter() - started) / 20
    ours = RougePool(pool_texts).scores(candidates[:REFERENCE_CANDIDATES])
    started = time.perf_counter()
    reference = []
    for text in candidates[:REFERENCE_CANDIDATES]:  # the reference loop: a pool map per candidate
        with Pool(2) as workers:
            reference.append(workers.map(partial(reference_score, text), pool_texts, chunksize=500))
    reference_s = (time.perf_counter() - started) / REFERENCE_CANDIDATES
    diff = float(np.abs(np.array(reference) - ours).max())
    per_candidate = ours_s / CANDIDATES
    return {"rouge_filter_s_50k_pool": round(per_candidate, 6),
            "candidates_per_s": round(CANDIDATES / ours_s, 1),
            "rouge_filter_batch_s": round(ours_s, 3), "rouge_filter_candidates": CANDIDATES,
            "rouge_filter_single_candidate_s": round(single_s, 5),
            "rouge_kept": sum(v.keep for v in verdicts),
            "reference": f"{REFERENCE}, 2-process pool", "reference_s_per_candidate": round(reference_s, 3),
            "speedup_vs_reference": round(reference_s / per_candidate, 1),
            "rouge_identical": diff == 0.0, "rouge_max_abs_diff": diff}


class ThreadLLM:
    """``llm.chat`` for a stage outside Ray: one LLM client on an event loop in a thread."""

    def __init__(self, client: LLMClient, model_name: str):
        self.client, self.model_name, self.batches = client, model_name, []
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def chat(self, requests, model=None):
        self.batches.append(len(requests))
        future = asyncio.run_coroutine_threadsafe(self.client.many(requests, "bench", model), self.loop)
        return future.result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


class Context:
    def __init__(self, llm):
        self.llm, self.seed = llm, 0


WORDS = sorted({w.strip(".,?!").lower() for w in " ".join(paper_seeds()).split() if w.isalpha()}) \
    if SEEDS.exists() else ["word"]


def _tasks(body: dict) -> str:
    prompt = body["messages"][-1]["content"]
    pick = random.Random(hashlib.sha256(prompt.encode()).digest())
    lines = [f"{9 + i}. {pick.choice(['Explain', 'Describe', 'Classify', 'List'])} "
             + " ".join(pick.choice(WORDS) for _ in range(pick.randint(6, 14))) + "."
             for i in range(8)]
    return "\n".join(lines)


ROUTES = [
    (r"Continue the numbered list from", _tasks),
    (r"Decide whether each task is a classification task",
     lambda body: "Yes" if re.findall(r"Task: (.*)", body["messages"][-1]["content"])[-1]
     .startswith("Classify") else "No"),
    (r"For a classification task", "Class label: A\nInput: first case\nClass label: B\nInput: second"),
    (r"Come up with examples", "Example 1\nInput: one\nOutput: two\nExample 2\nInput: three\nOutput: four"),
]


def generation_bench(folder: Path) -> dict:
    os.environ["SCRIPTED_ROUTES"] = "bench.synthetic:ROUTES"
    with ServerProcess(folder, LATENCY) as server:
        client = LLMClient(LLMConfig(model="scripted", max_concurrency=CONCURRENCY), server.base_url)
        llm = ThreadLLM(client, "scripted")
        config = self_instruct.Config(target_count=300, requests_per_round=CONCURRENCY, max_rounds=40)
        started = time.perf_counter()
        out = self_instruct.run(Context(llm), config)
        seconds = time.perf_counter() - started
        llm.close()
    ideal = sum(math.ceil(n / CONCURRENCY) * LATENCY for n in llm.batches)
    kept = sum(r is None for r in out.table.column("drop_reason").to_pylist())
    require(kept > 0 and out.info["machine_tasks"] > 0,
            f"Self-Instruct kept nothing ({out.info}); no figures are written")
    return {"generation_efficiency": round(ideal / seconds, 3), "generation_s": round(seconds, 2),
            "generation_ideal_s": round(ideal, 2), "generation_requests": sum(llm.batches),
            "generation_rounds": out.info["rounds"], "generation_tasks": out.info["machine_tasks"],
            "generation_instances_kept": kept, "latency_s": LATENCY, "max_concurrency": CONCURRENCY}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    write("synthetic", {**rouge_bench(), **generation_bench(folder)})


if __name__ == "__main__":
    main()
