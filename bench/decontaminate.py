"""Decontamination benchmark: verbatim HumanEval leaks in real code, and false hits on it.

Corpus: the example job's sources, this interpreter's stdlib and site-packages ``.py`` files
(same includes and excludes, UTF-8, at most ingest's 1,000,000 characters). Leaks: each
HumanEval canonical solution pasted alone (without its prompt) at a random line of a random
stdlib file, and each prompt + solution pasted the same way; the leaks join the corpus as extra
documents. The stage runs on local Ray (2 workers) with its default settings (13-grams, n-grams
in more than 10 documents of the input, of a shape common under other names, and runs of
numbers ignored) twice, the first run cold (workers starting, kernels loading), then once with
the runs-of-numbers rule off (``min_letter_words = 0``) and once with the common-shape rule off
(``common_shape = false``) to show what each rule removes; the last is also the baseline of the
counting pass's time (it hashes no shapes).

Reported: the share of solution-only leaks caught (solutions of 13 words or more: shorter ones
have no 13-gram) and of prompt + solution leaks, the false hits among the corpus files, the
n-grams each rule ignored, and the seconds of the counting pass vs the matching pass (warm run;
the machine may be shared, so read the ratio). Writes
``bench/results/decontaminate.json``.

    python bench/decontaminate.py
"""

from __future__ import annotations

import logging
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from pipeline import evalsets  # noqa: E402
from pipeline.runner import RayGlobalContext  # noqa: E402
from stages import _ngrams as ng  # noqa: E402
from stages import decontaminate as dc  # noqa: E402
from stages._minhash import arrow_buffers  # noqa: E402

MAX_CHARS = 1_000_000  # ingest's max_chars in the example job
PARTS = 8
BATCH_SIZE = 2000  # the runner's default [ray] batch_size


def corpus() -> tuple[list[str], list[str]]:
    """(paths, texts) of the example job's two ``files`` sources."""
    paths = sysconfig.get_paths()
    sources = [(Path(paths["stdlib"]), lambda rel: rel.parts[0] != "site-packages"),
               (Path(paths["purelib"]), lambda rel: rel.parts[0] != "_distutils_hack"
                and not rel.parts[0].startswith("__editable__"))]
    names, texts = [], []
    for root, wanted in sources:
        for path in sorted(root.rglob("*.py")):
            if not path.is_file() or not wanted(path.relative_to(root)):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) <= MAX_CHARS:
                names.append(str(path))
                texts.append(text)
    return names, texts


def word_count(text: str) -> int:
    data, offsets = arrow_buffers(ng.prepare(pa.array([text])))
    return len(ng.gram_hashes(data, offsets, 1)[0])


def plant(problems: list[dict], hosts: list[str], rng: random.Random) -> dict[str, str]:
    """Leak documents by id: ``solution/<task>`` and ``both/<task>``."""
    def paste(snippet: str) -> str:
        lines = rng.choice(hosts).split("\n")
        at = rng.randrange(len(lines) + 1)
        return "\n".join(lines[:at] + [snippet.rstrip("\n")] + lines[at:])

    leaks = {}
    for p in problems:
        leaks[f"solution/{p['task_id']}"] = paste(p["canonical_solution"])
        leaks[f"both/{p['task_id']}"] = paste(p["prompt"] + p["canonical_solution"])
    return leaks


def write_parts(ids: list[str], texts: list[str], folder: Path) -> list[Path]:
    files = []
    for k in range(PARTS):
        path = folder / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({"id": ids[k::PARTS], "text": texts[k::PARTS]}), path,
                       row_group_size=1000)
        files.append(path)
    return files


def run_stage(files: list[Path], scratch: Path, config: dc.Config) -> tuple[dict, dict]:
    """(eval item per hit id, the stage's info)."""
    decisions = dc.run(RayGlobalContext(files, scratch, 0, BATCH_SIZE), config)
    table = decisions.table
    return dict(zip(table.column("id").to_pylist(), table.column("eval_item").to_pylist())), \
        decisions.info


def main() -> None:
    started = time.perf_counter()
    names, texts = corpus()
    problems = evalsets.humaneval_problems()
    stdlib = str(Path(sysconfig.get_paths()["stdlib"]))
    hosts = [t for n, t in zip(names, texts) if n.startswith(stdlib + "/")
             and "site-packages" not in n and 2_000 <= len(t) <= 50_000]
    leaks = plant(problems, hosts, random.Random(0))
    ids = [f"file/{k}" for k in range(len(texts))] + list(leaks)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_parts(ids, texts + list(leaks.values()), Path(tmp))
        _, cold = run_stage(files, Path(tmp) / "cold", dc.Config())  # workers start, kernels load
        hits, info = run_stage(files, Path(tmp) / "warm", dc.Config())
        numbers_off, _ = run_stage(files, Path(tmp) / "off", dc.Config(min_letter_words=0.0))
        shape_off, plain = run_stage(files, Path(tmp) / "plain", dc.Config(common_shape=False))
    ray.shutdown()

    long_enough = [p["task_id"] for p in problems if word_count(p["canonical_solution"]) >= 13]
    solution = [hits.get(f"solution/{t}") for t in long_enough]
    both = [hits.get(f"both/{p['task_id']}") for p in problems]
    false_hits = sorted((names[int(i.split("/")[1])], item) for i, item in hits.items()
                        if i.startswith("file/"))
    false_numbers_off = sum(i.startswith("file/") for i in numbers_off)
    false_shape_off = sorted(names[int(i.split("/")[1])] for i in shape_off if i.startswith("file/"))
    require(len(texts) > 1000, f"only {len(texts)} corpus files found")
    stats, timings = info["evalsets"]["humaneval"], info["timings"]
    write("decontaminate", {
        "main_corpus_files": len(texts),
        "main_corpus_mb": round(sum(len(t.encode()) for t in texts) / 1e6, 1),
        "solutions_of_13_words_or_more": len(long_enough),
        "solution_only_caught": round(sum(s is not None for s in solution) / len(solution), 4),
        "solution_only_caught_as_own_item": round(
            sum(s == t for s, t in zip(solution, long_enough)) / len(solution), 4),
        "prompt_and_solution_caught": round(sum(b is not None for b in both) / len(both), 4),
        "false_hits_main_corpus": len(false_hits),
        "false_hits": [f"{Path(n).relative_to(Path(n).parents[2])}: {item}" for n, item in false_hits],
        "false_hits_without_numbers_rule": false_numbers_off,
        "false_hits_without_shape_rule": [str(Path(n).relative_to(Path(n).parents[2]))
                                          for n in false_shape_off],
        "ngram": stats["ngram"],
        "ngrams_used": stats["ngrams"],
        "ignored_mostly_numbers": stats["ignored_mostly_numbers"],
        "ignored_common_items": stats["ignored_common_items"],
        "ignored_frequent_in_input": stats["ignored_frequent_in_input"],
        "ignored_common_shape": stats["ignored_common_shape"],
        "count_pass_s": timings["count_s"],
        "match_pass_s": timings["match_s"],
        "count_vs_match": round(timings["count_s"] / max(timings["match_s"], 1e-9), 2),
        "count_pass_without_shapes_s": plain["timings"]["count_s"],
        "count_vs_count_without_shapes": round(
            timings["count_s"] / max(plain["timings"]["count_s"], 1e-9), 2),
        "cold_count_pass_s": cold["timings"]["count_s"],
        "cold_match_pass_s": cold["timings"]["match_s"],
        "workers": 2,
        "total_s": round(time.perf_counter() - started, 1),
    })


if __name__ == "__main__":
    main()
