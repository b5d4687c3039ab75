"""Decontamination: drop records that share a word n-gram with an evaluation set.

The standard test is a shared 13-gram (GPT-3, Brown et al. 2020, appendix C: at most 13 words
after ignoring punctuation, whitespace and case; phi-1, Gunasekar et al. 2023, section 5, checks
HumanEval the same way). Normalization: words are maximal runs of letters and digits; ASCII is
lowercased in the compiled pass; a text with other characters is first lowercased by Arrow with
every Unicode punctuation, symbol, separator and control character made a space. Digits are kept
(a doctest's numbers are evidence). A text shorter than ``ngram`` words is one n-gram of all its
words, so it matches only a text that is exactly those words.

The evaluation n-grams (``evalsets``: the built-in ``humaneval``, prompts and canonical
solutions, and any JSONL/Parquet set with named fields, see ``pipeline/evalsets.py``) are hashed
once, on the driver, into an open-addressing table that travels to every worker through Ray's
object store with the batch function; workers hash each record's n-grams in one compiled pass
over the Arrow buffer and look them up. Two kinds of n-grams are no evidence and are ignored:
those found in ``common_items`` or more different evaluation items (license lines, shared
headers), and those whose words average under ``min_mean_word_length`` characters (3, Gopher's
lower bound on mean word length, Rae et al. 2021): runs of digits, hex tables and one-letter
loop idioms such as ``for i in range(len(l)): for j in range(i + 1, len(l))``.

Drop reason: ``contaminated:<eval set name>``; ``drop_detail`` names the evaluation item and
quotes the matching words of the record; rejected rows carry ``eval_item``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline import evalsets
from pipeline.evalsets import EvalSpec
from pipeline.stage import DROP_DETAIL, DROP_REASON, Decisions, GlobalContext
from stages._minhash import COMBINE, FNV_OFFSET, FNV_PRIME, _fmix64, arrow_buffers

VERSION = "1"
_U = np.uint64
SEPARATORS = r"[\p{P}\p{S}\p{Z}\p{C}]+"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1)
    ngram: int = Field(default=13, ge=1)
    evalsets: list[EvalSpec] = Field(default_factory=lambda: [EvalSpec(name="humaneval")],
                                     min_length=1)
    common_items: int = Field(default=5, ge=2)  # n-grams in this many eval items are ignored
    min_mean_word_length: float = Field(default=3.0, ge=0.0)  # shorter n-grams are no evidence
    detail_chars: int = Field(default=300, ge=40)


# ---- compiled kernels --------------------------------------------------------------------


@numba.njit(cache=True)
def _grams(data, start, end, n, min_mean, out, spans, window, pos):
    """Rolling hashes of the word ``n``-grams of ``data[start:end]`` into ``out`` (never 0) and
    the byte span of each into ``spans``; returns how many. N-grams whose words average under
    ``min_mean`` characters are skipped. ``window`` (n) and ``pos`` (n x 2: word start, length)
    are scratch."""
    count, k, m, h, chars = 0, start, 0, _U(0), 0
    power = _U(1)
    for _ in range(n):
        power *= _U(COMBINE)
    while k < end:
        c = data[k]
        if not ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c >= 0x80):
            k += 1
            continue
        s, t = k, _U(FNV_OFFSET)
        while k < end:
            c = data[k]
            if 65 <= c <= 90:
                c += 32
            elif not ((48 <= c <= 57) or (97 <= c <= 122) or c >= 0x80):
                break
            t = (t ^ _U(c)) * _U(FNV_PRIME)
            k += 1
        t = _fmix64(t)
        slot = count % n
        h = h * _U(COMBINE) + t
        if count >= n:  # the word leaving the window
            h -= window[slot] * power
            chars -= pos[slot, 1]
        window[slot], pos[slot, 0], pos[slot, 1] = t, s, k - s
        chars += k - s
        count += 1
        if count >= n and chars >= min_mean * n:
            key = _fmix64(h)
            out[m] = key if key != 0 else _U(1)
            spans[m, 0], spans[m, 1] = pos[count % n, 0], k
            m += 1
    if 0 < count < n and chars >= min_mean * count:
        key = _fmix64(h)
        out[0] = key if key != 0 else _U(1)
        spans[0, 0], spans[0, 1] = pos[0, 0], k
        m = 1
    return m


@numba.njit(cache=True)
def _scratch(offsets, n):
    longest = 1
    for d in range(len(offsets) - 1):
        longest = max(longest, (offsets[d + 1] - offsets[d] + 1) // 2 + 1)
    return (np.empty(longest, dtype=np.uint64), np.empty((longest, 2), dtype=np.int64),
            np.zeros(n, dtype=np.uint64), np.zeros((n, 2), dtype=np.int64))


@numba.njit(cache=True)
def gram_hashes(data, offsets, n, min_mean):
    """Every document's n-gram hashes: (values, per-document offsets)."""
    ndocs = len(offsets) - 1
    total = 0
    for d in range(ndocs):
        total += (offsets[d + 1] - offsets[d] + 1) // 2 + 1
    values = np.empty(total, dtype=np.uint64)
    out_offsets = np.zeros(ndocs + 1, dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, n)
    for d in range(ndocs):
        m = _grams(data, offsets[d], offsets[d + 1], n, min_mean, grams, spans, window, pos)
        values[out_offsets[d]:out_offsets[d] + m] = grams[:m]
        out_offsets[d + 1] = out_offsets[d] + m
    return values[:out_offsets[-1]].copy(), out_offsets


@numba.njit(cache=True)
def _slot(keys, key):
    mask = len(keys) - 1
    i = np.int64(key & _U(mask))
    while keys[i] != 0 and keys[i] != key:
        i = (i + 1) & mask
    return i


@numba.njit(cache=True)
def fill_table(values, owners, size):
    """Open-addressing table (linear probing, 0 = empty) of distinct ``values`` -> owner."""
    keys = np.zeros(size, dtype=np.uint64)
    table_owner = np.full(size, -1, dtype=np.int32)
    for i in range(len(values)):
        j = _slot(keys, values[i])
        keys[j], table_owner[j] = values[i], owners[i]
    return keys, table_owner


@numba.njit(cache=True)
def first_hits(data, offsets, n, min_mean, keys, table_owner):
    """Per document: the owner of its first n-gram found in the table (-1: none) and the byte
    span of that n-gram."""
    ndocs = len(offsets) - 1
    owner = np.full(ndocs, -1, dtype=np.int32)
    span = np.zeros((ndocs, 2), dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, n)
    for d in range(ndocs):
        m = _grams(data, offsets[d], offsets[d + 1], n, min_mean, grams, spans, window, pos)
        for i in range(m):
            j = _slot(keys, grams[i])
            if keys[j] != 0:
                owner[d] = table_owner[j]
                span[d, 0], span[d, 1] = spans[i, 0], spans[i, 1]
                break
    return owner, span


# ---- the evaluation index ----------------------------------------------------------------


def prepare(text: pa.Array) -> pa.Array:
    """Texts with non-ASCII characters lowercased, separators made spaces (see the module doc)."""
    text = pc.fill_null(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text, "")
    non_ascii = pc.invert(pc.string_is_ascii(text))
    if not pc.any(non_ascii).as_py():
        return text
    folded = pc.replace_substring_regex(pc.utf8_lower(text.filter(non_ascii)), SEPARATORS, " ")
    return pc.replace_with_mask(text, non_ascii, folded)


@dataclass
class EvalIndex:
    """The hashed n-grams of every evaluation item; ``items`` = (set name, item id)."""

    keys: np.ndarray
    owners: np.ndarray
    items: list[tuple[str, str]]
    stats: dict


def build_index(sets: list[evalsets.EvalSet], ngram: int, common_items: int,
                min_mean: float = 3.0) -> EvalIndex:
    items = [(s.name, i) for s in sets for i in s.ids]
    texts = pa.array([t for s in sets for t in s.texts], pa.string())
    data, offsets = arrow_buffers(prepare(texts))
    values, doc_offsets = gram_hashes(data, offsets, ngram, min_mean)
    item = np.repeat(np.arange(len(items), dtype=np.int32), np.diff(doc_offsets))
    order = np.lexsort((item, values))
    values, item = values[order], item[order]
    fresh = np.ones(len(values), dtype=bool)
    fresh[1:] = (values[1:] != values[:-1]) | (item[1:] != item[:-1])
    values, item = values[fresh], item[fresh]  # distinct (n-gram, item) pairs
    boundary = np.ones(len(values), dtype=bool)
    boundary[1:] = values[1:] != values[:-1]
    starts = np.flatnonzero(boundary)
    spread = np.diff(np.r_[starts, len(values)])
    keep = spread < common_items
    unique, owner = values[starts][keep], item[starts][keep]
    size = 1 << max(4, int(2 * len(unique)).bit_length())
    keys, table_owner = fill_table(unique, owner, size)
    set_of = np.array([k for k, s in enumerate(sets) for _ in s.ids], dtype=np.int64)
    common = Counter(set_of[item[starts][~keep]].tolist())
    per_set = Counter(set_of[owner].tolist())
    stats = {s.name: {"items": len(s.ids), "ngrams": per_set.get(k, 0),
                      "common_ngrams_ignored": common.get(k, 0), "fingerprint": s.fingerprint}
             for k, s in enumerate(sets)}
    return EvalIndex(keys, table_owner, items, stats)


# ---- the stage ---------------------------------------------------------------------------


def find_batch(batch: pa.Table, index: EvalIndex, config: Config) -> pa.Table:
    """The contaminated rows of a batch: id, reason, detail, evaluation item."""
    text = prepare(evalsets.field_text(batch, config.fields))
    data, offsets = arrow_buffers(text)
    owner, span = first_hits(data, offsets, config.ngram, config.min_mean_word_length, index.keys,
                             index.owners)
    rows = np.flatnonzero(owner >= 0)
    reasons, details, items = [], [], []
    for r in rows.tolist():
        name, item = index.items[owner[r]]
        quoted = bytes(data[span[r, 0]:span[r, 1]]).decode("utf-8", "replace")[: config.detail_chars]
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


def run(ctx: GlobalContext, config: Config) -> Decisions:
    names = [spec.name for spec in config.evalsets]
    if len(set(names)) != len(names):
        raise ValueError(f"evalsets: each name once, got {names}")
    index = build_index([evalsets.load(spec) for spec in config.evalsets], config.ngram,
                        config.common_items, config.min_mean_word_length)
    available = pq.read_schema(ctx.input_files[0]).names if ctx.input_files else ["id"]
    columns = evalsets.columns_for(config.fields, available)
    hits = ctx.map(find_batch, columns=["id"] + columns, index=index, config=config)
    if not hits.num_rows:
        empty = {c: pa.array([], pa.string()) for c in ["id"] + columns}
        hits = find_batch(pa.table(empty), index, config)
    report = {}
    for name, stats in index.stats.items():
        mine = [i for r, i in zip(hits.column(DROP_REASON).to_pylist(),
                                  hits.column("eval_item").to_pylist()) if r == f"contaminated:{name}"]
        example = next((d for r, d in zip(hits.column(DROP_REASON).to_pylist(),
                                          hits.column(DROP_DETAIL).to_pylist())
                        if r == f"contaminated:{name}"), None)
        report[name] = {**stats, "records": len(mine), "items_hit": len(set(mine)),
                        "top_items": Counter(mine).most_common(10), "example": example}
    info = {"ngram": config.ngram, "fields": config.fields, "common_items": config.common_items,
            "min_mean_word_length": config.min_mean_word_length,
            "evalsets": report}
    return Decisions(table=hits, info=info, rejected_only=("eval_item",))


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    lines = [f"## Decontamination (`{record['folder']}`)", "",
             f"Records sharing a word {info.get('ngram')}-gram (fields "
             f"{', '.join(f'`{f}`' for f in info.get('fields', []))}, "
             f"lowercased, punctuation ignored) with an evaluation set were dropped; n-grams "
             f"found in {info.get('common_items')} or more evaluation items, or whose words "
             f"average under {info.get('min_mean_word_length')} characters, were ignored.", "",
             "| eval set | items | n-grams | ignored as common | records dropped | items hit |",
             "|---|---:|---:|---:|---:|---:|"]
    sets = info.get("evalsets", {})
    for name, s in sets.items():
        lines.append(f"| `{name}` | {s['items']:,} | {s['ngrams']:,} | {s['common_ngrams_ignored']:,} "
                     f"| {s['records']:,} | {s['items_hit']:,} |")
    for name, s in sets.items():
        if s["records"]:
            top = ", ".join(f"`{item}` ({n})" for item, n in s["top_items"])
            lines += ["", f"`{name}`: most matched items {top}; for example {s['example']}"]
    return "\n".join(lines)
