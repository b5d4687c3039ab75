"""The evaluation n-gram index of decontamination, and the two rules that make n-grams no
evidence.

N-gram size per evaluation set (GPT-3, Brown et al. 2020, appendix C): the 5th percentile of
its items' lengths in words, at least ``min_ngram`` (8: shorter n-grams collide by chance) and
at most ``ngram`` (13). An item shorter than its set's size is one n-gram of all its words,
found as that many consecutive words of a record; one shorter than ``min_ngram`` words matches
only a record (field) of exactly those words.

Rules, each counted per set for the card:

- mostly numbers: an n-gram in which fewer than ``min_letter_words`` (0.6) of the words hold a
  letter is a table or a run of numbers (hex digits, bit grids, ``1: "One", 2: "Two"``), not
  code or prose. Gopher's document rule (Rae et al. 2021) asks 80% of words with a letter;
  on an n-gram that also drops code with numeric literals (pasted HumanEval solutions caught
  91% at 0.8, 100% at 0.6, with the same false hits on this interpreter's Python files);
- common to evaluation items: an n-gram in ``common_items`` or more items (license lines,
  shared headers) is left out of the index;
- frequent in the input: an n-gram found in more than ``common_documents`` input documents
  (GPT-3: more than 10 training documents) is an idiom of the corpus, such as a loop header or
  a license line, not a leak. ``document_counts`` runs over the input first; ``ignore_frequent``
  then keeps those slots in the table with no owner. Duplicated copies of one leak count as
  several documents: deduplication runs before this stage.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import evalsets
from stages import _ngrams as ng
from stages._minhash import arrow_buffers


@dataclass
class EvalIndex:
    """Hashed n-grams of every evaluation item: ``keys``/``owners`` (index into ``items``, the
    (set name, item id) pairs; -1 no evidence), the n-gram ``lengths`` a record is scanned
    for, and per-set ``stats``."""

    keys: np.ndarray
    owners: np.ndarray
    items: list[tuple[str, str]]
    set_of_item: np.ndarray
    lengths: np.ndarray
    stats: dict


def set_ngram(word_counts: np.ndarray, ngram: int, min_ngram: int) -> int:
    """GPT-3's n for one set: the 5th-percentile item length, within [min_ngram, ngram]."""
    if not len(word_counts):
        return ngram
    fifth = int(np.percentile(word_counts, 5, method="lower"))
    return min(ngram, max(min_ngram, fifth))


def build_index(sets: list[evalsets.EvalSet], ngram: int = 13, min_ngram: int = 8,
                common_items: int = 5, min_letter_words: float = 0.6) -> EvalIndex:
    floor = min(ngram, min_ngram)
    values, owners, lengths, stats = [], [], set(), {}
    first = 0
    for s in sets:
        data, offsets = arrow_buffers(ng.prepare(pa.array(s.texts, pa.string())))
        words = np.diff(ng.gram_hashes(data, offsets, 1)[1])
        n = set_ngram(words, ngram, min_ngram)
        grams, doc_offsets, letters = ng.gram_hashes(data, offsets, n)
        item = np.repeat(np.arange(len(s.ids), dtype=np.int32), np.diff(doc_offsets))
        wordy = letters >= min_letter_words * np.minimum(words[item], n)
        values.append(grams[wordy])
        owners.append(first + item[wordy])
        short = words[(words > 0) & (words < n)]
        lengths |= {n, *(int(k) for k in short[short >= floor])}
        stats[s.name] = {"items": len(s.ids), "ngram": n,
                         "items_shorter": int(len(short)),
                         "items_exact_only": int((short < floor).sum()),
                         "ignored_mostly_numbers": len(np.unique(grams[~wordy])),
                         "fingerprint": s.fingerprint}
        first += len(s.ids)
    items = [(s.name, i) for s in sets for i in s.ids]
    set_of_item = np.array([k for k, s in enumerate(sets) for _ in s.ids], dtype=np.int64)
    value = np.concatenate(values) if values else np.zeros(0, np.uint64)
    item = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    order = np.lexsort((item, value))
    value, item = value[order], item[order]
    fresh = np.ones(len(value), dtype=bool)
    fresh[1:] = (value[1:] != value[:-1]) | (item[1:] != item[:-1])
    value, item = value[fresh], item[fresh]  # distinct (n-gram, item) pairs
    boundary = np.ones(len(value), dtype=bool)
    boundary[1:] = value[1:] != value[:-1]
    starts = np.flatnonzero(boundary)
    spread = np.diff(np.r_[starts, len(value)])
    keep = spread < common_items
    unique, owner = value[starts][keep], item[starts][keep]
    size = 1 << max(4, int(2 * len(unique)).bit_length())
    keys, table_owner = ng.fill_table(unique, owner, size)
    common = Counter(set_of_item[item[starts][~keep]].tolist())
    per_set = Counter(set_of_item[owner].tolist())
    for k, s in enumerate(sets):
        stats[s.name].update(ngrams=per_set.get(k, 0), ignored_common_items=common.get(k, 0),
                             ignored_frequent_in_input=0)
    return EvalIndex(keys, table_owner, items, set_of_item,
                     np.array(sorted(lengths or {ngram}), dtype=np.int64), stats)


def ignore_frequent(index: EvalIndex, documents: np.ndarray, common_documents: int) -> EvalIndex:
    """The index with the n-grams found in more than ``common_documents`` input documents
    (``documents``: per table slot) made no evidence, counted per set."""
    frequent = (documents > common_documents) & (index.owners >= 0)
    owners = np.where(frequent, -1, index.owners).astype(np.int32)
    per_set = Counter(index.set_of_item[index.owners[frequent]].tolist())
    stats = {name: {**s, "ignored_frequent_in_input": per_set.get(k, 0),
                    "ngrams": s["ngrams"] - per_set.get(k, 0)}
             for k, (name, s) in enumerate(index.stats.items())}
    return dataclasses.replace(index, owners=owners, stats=stats)
