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
  several documents: deduplication runs before this stage;
- common shape: an n-gram whose shape (``stages/_ngrams.py``: words other than Python's
  keywords, builtins and numbers made one placeholder) is found under other names, in input
  documents that do not hold the n-gram itself, in more than ``common_shape_documents`` (3)
  documents is an idiom, such as ``for i in range(len(l)): for j in range(i + 1, len(l))``.
  Those documents are not copies of the n-gram's text (copies of a leak count for the n-gram
  and its shape alike, and cancel out), so fewer of them suffice than GPT-3's 10 copies: on
  this interpreter's 26,000 library files that double loop has 6 such documents, and no
  pasted HumanEval solution is missed at 3 or 2 (one of 128 at 1). Only n-grams of which at
  least ``shape_min_kept`` (0.5) of the words are keywords, builtins or numbers have a shape:
  the shape of prose or of code made of its own names would match any text of that length.
  The first pass counts the documents per shape too; ``ignore_frequent`` applies both rules.
"""

from __future__ import annotations

import builtins
import dataclasses
import keyword
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
    for, per-set ``stats``; ``kept`` (the table of words a shape keeps, empty: no shapes),
    ``shape_keys`` (the table of shapes) and, per slot of ``keys``, its shape's slot (-1: none)."""

    keys: np.ndarray
    owners: np.ndarray
    items: list[tuple[str, str]]
    set_of_item: np.ndarray
    lengths: np.ndarray
    stats: dict
    kept: np.ndarray = dataclasses.field(default_factory=lambda: ng.NO_SHAPES)
    shape_keys: np.ndarray = dataclasses.field(default_factory=lambda: ng.NO_SHAPES)
    shape_of_slot: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def python_words() -> np.ndarray:
    """The table of words a shape keeps: Python's keywords, soft keywords and builtins."""
    return ng.word_table(keyword.kwlist + keyword.softkwlist + dir(builtins))


def set_ngram(word_counts: np.ndarray, ngram: int, min_ngram: int) -> int:
    """GPT-3's n for one set: the 5th-percentile item length, within [min_ngram, ngram]."""
    if not len(word_counts):
        return ngram
    fifth = int(np.percentile(word_counts, 5, method="lower"))
    return min(ngram, max(min_ngram, fifth))


def build_index(sets: list[evalsets.EvalSet], ngram: int = 13, min_ngram: int = 8,
                common_items: int = 5, min_letter_words: float = 0.6,
                common_shape: bool = True, shape_min_kept: float = 0.5) -> EvalIndex:
    floor = min(ngram, min_ngram)
    kept = python_words() if common_shape else ng.NO_SHAPES
    values, owners, shapes, lengths, stats = [], [], [], set(), {}
    first = 0
    for s in sets:
        data, offsets = arrow_buffers(ng.prepare(pa.array(s.texts, pa.string())))
        words = np.diff(ng.gram_hashes(data, offsets, 1)[1])
        n = set_ngram(words, ngram, min_ngram)
        grams, doc_offsets, letters, shape, structure = ng.gram_hashes(data, offsets, n, kept)
        item = np.repeat(np.arange(len(s.ids), dtype=np.int32), np.diff(doc_offsets))
        wordy = letters >= min_letter_words * np.minimum(words[item], n)
        coded = common_shape & (structure >= shape_min_kept * np.minimum(words[item], n))
        values.append(grams[wordy])
        owners.append(first + item[wordy])
        shapes.append(np.where(coded, shape, 0)[wordy])
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
    shape = np.concatenate(shapes) if shapes else np.zeros(0, np.uint64)
    order = np.lexsort((item, value))
    value, item, shape = value[order], item[order], shape[order]
    fresh = np.ones(len(value), dtype=bool)
    fresh[1:] = (value[1:] != value[:-1]) | (item[1:] != item[:-1])
    value, item, shape = value[fresh], item[fresh], shape[fresh]  # distinct (n-gram, item) pairs
    boundary = np.ones(len(value), dtype=bool)
    boundary[1:] = value[1:] != value[:-1]
    starts = np.flatnonzero(boundary)
    spread = np.diff(np.r_[starts, len(value)])
    keep = spread < common_items
    unique, owner = value[starts][keep], item[starts][keep]
    size = 1 << max(4, int(2 * len(unique)).bit_length())
    keys, table_owner = ng.fill_table(unique, owner, size)
    shape_keys, shape_of_slot = shape_table(unique, shape[starts][keep], size)
    common = Counter(set_of_item[item[starts][~keep]].tolist())
    per_set = Counter(set_of_item[owner].tolist())
    for k, s in enumerate(sets):
        stats[s.name].update(ngrams=per_set.get(k, 0), ignored_common_items=common.get(k, 0),
                             ignored_frequent_in_input=0, ignored_common_shape=0)
    return EvalIndex(keys, table_owner, items, set_of_item,
                     np.array(sorted(lengths or {ngram}), dtype=np.int64), stats, kept,
                     shape_keys, shape_of_slot)


def shape_table(unique: np.ndarray, shape: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The table of the distinct shapes (0: none) of the n-grams ``unique``, and per slot of
    the n-gram table (``size``, filled in the same order) the slot of its shape (-1: none)."""
    distinct, which = np.unique(shape, return_inverse=True)
    if len(distinct) and distinct[0] == 0:
        distinct, which = distinct[1:], which - 1
    shape_size = 1 << max(4, int(2 * len(distinct)).bit_length())
    shape_keys, shape_id = ng.fill_table(distinct, np.arange(len(distinct), dtype=np.int32),
                                         shape_size)
    slot_of_shape = np.empty(len(distinct), dtype=np.int64)
    filled = np.flatnonzero(shape_id >= 0)
    slot_of_shape[shape_id[filled]] = filled
    _, which_of_slot = ng.fill_table(unique, which.astype(np.int32), size)
    return shape_keys, np.append(slot_of_shape, -1)[which_of_slot]  # -1 stays -1


def ignore_frequent(index: EvalIndex, documents: np.ndarray, shape_documents: np.ndarray,
                    common_documents: int, common_shape_documents: int = 3) -> EvalIndex:
    """The index with the n-grams found in more than ``common_documents`` input documents
    (``documents``: per slot of ``keys``), then those whose shape is found in more than
    ``common_shape_documents`` others (``shape_documents``: per slot of ``shape_keys``), made
    no evidence, counted per set."""
    frequent = (documents > common_documents) & (index.owners >= 0)
    has_shape = index.shape_of_slot >= 0
    common = np.zeros(len(index.keys), dtype=bool)
    other_names = shape_documents[index.shape_of_slot[has_shape]] - documents[has_shape]
    common[has_shape] = other_names > common_shape_documents
    common &= ~frequent & (index.owners >= 0)
    owners = np.where(frequent | common, -1, index.owners).astype(np.int32)
    per_set = Counter(index.set_of_item[index.owners[frequent]].tolist())
    by_shape = Counter(index.set_of_item[index.owners[common]].tolist())
    stats = {name: {**s, "ignored_frequent_in_input": per_set.get(k, 0),
                    "ignored_common_shape": by_shape.get(k, 0),
                    "ngrams": s["ngrams"] - per_set.get(k, 0) - by_shape.get(k, 0)}
             for k, (name, s) in enumerate(index.stats.items())}
    return dataclasses.replace(index, owners=owners, stats=stats)
