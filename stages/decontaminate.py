"""Decontamination: drop records that share a word n-gram with an evaluation set.

The standard test is a shared 13-gram (GPT-3, Brown et al. 2020, appendix C: words after
ignoring punctuation, whitespace and case; phi-1, Gunasekar et al. 2023, section 5, checks
HumanEval the same way). Words are maximal runs of letters and digits; digits are kept (a
doctest's numbers are evidence); see ``stages/_ngrams.py`` for the normalization and the
rolling hash. Sets of short items get shorter n-grams, down to 8 words, as in GPT-3 (see
``stages/_decontam_index.py``).

The evaluation n-grams (``evalsets``: the built-in ``humaneval``, prompts and canonical
solutions, and any JSONL/Parquet set with named fields, see ``pipeline/evalsets.py``) are hashed
once, on the driver, into an open-addressing table that travels to every worker with the batch
function. Four kinds of n-grams are no evidence: runs of numbers (under ``min_letter_words``
of their words hold a letter), those in ``common_items`` or more evaluation items, those
found in more than ``common_documents`` documents of the input (GPT-3's rule: idioms of the
corpus such as loop headers and license lines), and, with ``common_shape``, those whose shape
(names other than Python's keywords and builtins abstracted) is in more than
``common_shape_documents`` other documents: the same idiom written with other names. Two passes
over the input, each over every batch in parallel: the first counts, per evaluation n-gram and
per shape, the documents that hold it (per batch, summed on the driver); the second finds each
record's first n-gram that is still evidence.

Drop reason: ``contaminated:<eval set name>``; ``drop_detail`` names the evaluation item and
quotes the matching words of the record; rejected rows carry ``eval_item``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline import evalsets
from pipeline.evalsets import EvalSpec
from pipeline.stage import DROP_DETAIL, DROP_REASON, Decisions, GlobalContext
from stages import _ngrams as ng
from stages._decontam_index import EvalIndex, build_index, ignore_frequent
from stages._minhash import arrow_buffers

VERSION = "3"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1)
    ngram: int = Field(default=13, ge=1)  # the n-gram size, for sets whose items are long enough
    min_ngram: int = Field(default=8, ge=1)  # the smallest size a set of short items gets
    evalsets: list[EvalSpec] = Field(default_factory=lambda: [EvalSpec(name="humaneval")],
                                     min_length=1)
    min_letter_words: float = Field(default=0.6, ge=0.0, le=1.0)  # fewer: a table of numbers
    common_items: int = Field(default=5, ge=2)  # n-grams in this many eval items are ignored
    common_documents: int = Field(default=10, ge=1)  # n-grams in more input documents: ignored
    common_shape: bool = True  # also ignore n-grams whose shape is common under other names
    common_shape_documents: int = Field(default=3, ge=0)  # ... in more documents than this
    shape_min_kept: float = Field(default=0.5, ge=0.0, le=1.0)  # keyword share to have a shape
    detail_chars: int = Field(default=300, ge=40)


def _buffers(batch: pa.Table, config: Config) -> tuple[np.ndarray, np.ndarray]:
    return arrow_buffers(ng.prepare(evalsets.field_text(batch, config.fields)))


def count_batch(batch: pa.Table, index: EvalIndex, config: Config) -> pa.Table:
    """How many documents of the batch hold each evaluation n-gram or shape: slot (of ``keys``,
    then of ``shape_keys`` numbered on from ``len(keys)``), documents."""
    data, offsets = _buffers(batch, config)
    counts = np.concatenate(ng.document_counts(data, offsets, index.lengths, index.keys,
                                               index.kept, index.shape_keys))
    slots = np.flatnonzero(counts)
    return pa.table({"slot": pa.array(slots, pa.int64()),
                     "documents": pa.array(counts[slots], pa.int64())})


def find_batch(batch: pa.Table, index: EvalIndex, config: Config) -> pa.Table:
    """The contaminated rows of a batch: id, reason, detail, evaluation item."""
    data, offsets = _buffers(batch, config)
    owner, span = ng.first_hits(data, offsets, index.lengths, index.keys, index.owners)
    rows = np.flatnonzero(owner >= 0)
    reasons, details, items = [], [], []
    for r in rows.tolist():
        name, item = index.items[owner[r]]
        quoted = bytes(data[span[r, 0]:span[r, 1]]).decode("utf-8", "replace")
        quoted = quoted[: config.detail_chars]
        reasons.append(f"contaminated:{name}")
        details.append(f"{item}: {quoted!r}")
        items.append(item)
    return pa.table({"id": pc.take(batch.column("id"), pa.array(rows, pa.int64())),
                     DROP_REASON: pa.array(reasons, pa.string()),
                     DROP_DETAIL: pa.array(details, pa.string()),
                     "eval_item": pa.array(items, pa.string())})


def hash_extra(config: Config) -> list[str]:
    """The evaluation sets' contents join the config hash: a changed benchmark reruns the stage."""
    return [evalsets.fingerprint(spec) for spec in config.evalsets]


def _report(index: EvalIndex, hits: pa.Table) -> dict:
    reasons, items = hits.column(DROP_REASON).to_pylist(), hits.column("eval_item").to_pylist()
    details = hits.column(DROP_DETAIL).to_pylist()
    report = {}
    for name, stats in index.stats.items():
        mine = [i for r, i in zip(reasons, items) if r == f"contaminated:{name}"]
        example = next((d for r, d in zip(reasons, details) if r == f"contaminated:{name}"), None)
        report[name] = {**stats, "records": len(mine), "items_hit": len(set(mine)),
                        "top_items": Counter(mine).most_common(10), "example": example}
    return report


def run(ctx: GlobalContext, config: Config) -> Decisions:
    names = [spec.name for spec in config.evalsets]
    if len(set(names)) != len(names):
        raise ValueError(f"evalsets: each name once, got {names}")
    index = build_index([evalsets.load(spec) for spec in config.evalsets], config.ngram,
                        config.min_ngram, config.common_items, config.min_letter_words,
                        config.common_shape, config.shape_min_kept)
    available = pq.read_schema(ctx.input_files[0]).names if ctx.input_files else ["id"]
    columns = ["id"] + evalsets.columns_for(config.fields, available)
    start = time.perf_counter()
    counted = ctx.map(count_batch, columns=columns, index=index, config=config)
    documents = np.zeros(len(index.keys) + len(index.shape_keys), dtype=np.int64)
    if counted.num_rows:
        np.add.at(documents, counted.column("slot").to_numpy(),
                  counted.column("documents").to_numpy())
    index = ignore_frequent(index, documents[:len(index.keys)], documents[len(index.keys):],
                            config.common_documents, config.common_shape_documents)
    counted_at = time.perf_counter()
    hits = ctx.map(find_batch, columns=columns, index=index, config=config)
    if not hits.num_rows:
        hits = find_batch(pa.table({c: pa.array([], pa.string()) for c in columns}), index, config)
    timings = {"count_s": round(counted_at - start, 3),
               "match_s": round(time.perf_counter() - counted_at, 3)}
    info = {"ngram": config.ngram, "min_ngram": config.min_ngram, "fields": config.fields,
            "min_letter_words": config.min_letter_words, "common_items": config.common_items,
            "common_documents": config.common_documents, "common_shape": config.common_shape,
            "shape_min_kept": config.shape_min_kept,
            "common_shape_documents": config.common_shape_documents,
            "evalsets": _report(index, hits), "timings": timings}
    return Decisions(table=hits, info=info, rejected_only=("eval_item",))


def _shape_sentence(info: dict) -> str:
    if not info.get("common_shape"):
        return ""
    return (f", and so were those whose shape (names other than Python's keywords and builtins "
            f"made one placeholder; n-grams of at least {info.get('shape_min_kept', 0):.0%} "
            f"keywords, builtins and numbers) is in more than "
            f"{info.get('common_shape_documents')} input documents that do not hold the n-gram "
            f"itself: the same idiom with other names")


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    lines = [f"## Decontamination (`{record['folder']}`)", "",
             f"Records sharing a word n-gram (fields "
             f"{', '.join(f'`{f}`' for f in info.get('fields', []))}, lowercased, punctuation "
             f"ignored) with an evaluation set were dropped. N-grams have {info.get('ngram')} "
             f"words, fewer (down to {info.get('min_ngram')}) for a set whose 5th-percentile item is "
             f"shorter; an item shorter than that is matched whole. N-grams in which under "
             f"{info.get('min_letter_words', 0):.0%} of the words hold a letter (runs of numbers), "
             f"found in {info.get('common_items')} or more evaluation items, or in more than "
             f"{info.get('common_documents')} input documents (idioms of the corpus) were "
             f"ignored as no evidence{_shape_sentence(info)}.", "",
             "| eval set | items | n | items matched whole | n-grams used | ignored: mostly "
             "numbers | ignored: in many eval items | ignored: frequent in input "
             "| ignored: common shape | records dropped | items hit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    sets = info.get("evalsets", {})
    for name, s in sets.items():
        lines.append(f"| `{name}` | {s['items']:,} | {s['ngram']} | {s['items_shorter']:,} "
                     f"| {s['ngrams']:,} | {s['ignored_mostly_numbers']:,} "
                     f"| {s['ignored_common_items']:,} "
                     f"| {s['ignored_frequent_in_input']:,} "
                     f"| {s.get('ignored_common_shape', 0):,} | {s['records']:,} "
                     f"| {s['items_hit']:,} |")
    for name, s in sets.items():
        if s["records"]:
            top = ", ".join(f"`{item}` ({n})" for item, n in s["top_items"])
            lines += ["", f"`{name}`: most matched items {top}; for example {s['example']}"]
    return "\n".join(lines)
