"""Word n-gram hashing and lookup for decontamination (compiled with numba).

Words are maximal runs of ASCII letters and digits or non-ASCII bytes; ASCII is lowercased
here, other text arrives folded by ``prepare``. An n-gram's hash is a rolling polynomial of its
words' hashes, so a window inside a long text hashes like the same words alone, and a text
shorter than ``n`` words is one n-gram of all its words.

An n-gram's *shape* hashes the same way with every word that is neither a number (no letter) nor
in a table of kept words (Python's keywords and builtins, see ``_decontam_index``) replaced by
one placeholder: ``for i in range len l`` and ``for a in range len arr`` share a shape.

The evaluation n-grams live in an open-addressing table (linear probing, key 0 = empty) whose
``owners`` array names the evaluation item of each slot; an owner below 0 keeps the slot but
makes it no evidence (an n-gram ignored by a rule).
"""

from __future__ import annotations

import re

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages._minhash import COMBINE, FNV_OFFSET, FNV_PRIME, _fmix64, bytes_hash_py

_U = np.uint64
NO_SHAPES = np.zeros(0, dtype=np.uint64)  # an empty table of kept words: no shapes hashed
SEPARATORS = r"[\p{P}\p{S}\p{Z}\p{C}]+"


def prepare(text: pa.Array) -> pa.Array:
    """Texts with non-ASCII characters lowercased by Arrow, every Unicode punctuation, symbol,
    separator and control character made a space; ASCII texts are folded in the kernel."""
    text = pc.fill_null(text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text, "")
    non_ascii = pc.invert(pc.string_is_ascii(text))
    if not pc.any(non_ascii).as_py():
        return text
    folded = pc.replace_substring_regex(pc.utf8_lower(text.filter(non_ascii)), SEPARATORS, " ")
    return pc.replace_with_mask(text, non_ascii, folded)


PLACEHOLDER = 0x5BD1E9955BD1E995  # the hash of any word a shape abstracts


def word_table(words: list[str]) -> np.ndarray:
    """The table of kept words for shapes: the hashes of the ASCII words in ``words``."""
    parts = {w for text in words for w in re.findall(r"[a-z0-9]+", text.lower())}
    values = np.array(sorted(bytes_hash_py(w.encode()) for w in parts), dtype=np.uint64)
    size = 1 << int(4 * len(values)).bit_length()
    return fill_table(values, np.zeros(len(values), np.int32), size)[0]


@numba.njit(cache=True)
def _grams(data, start, end, n, kept, out, spans, window, pos):
    """Rolling hashes of the word ``n``-grams of ``data[start:end]`` into ``out[:, 0]`` (never
    0), the byte span of each into ``spans[:, :2]`` and how many of its words hold a letter into
    ``spans[:, 2]``; returns how many. With a non-empty ``kept`` table (see ``fill_table``), also
    each n-gram's shape hash into ``out[:, 1]`` and how many of its words the shape keeps into
    ``spans[:, 3]``. ``window`` and ``pos`` (word start, holds a letter, kept) are scratch of at
    least ``n`` rows."""
    count, k, m, h, hs, letters, structure = 0, start, 0, _U(0), _U(0), 0, 0
    shaping = len(kept) > 0
    power = _U(1)
    for _ in range(n):
        power *= _U(COMBINE)
    while k < end:
        c = data[k]
        if not ((48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c >= 0x80):
            k += 1
            continue
        s, t, letter = k, _U(FNV_OFFSET), 0
        while k < end:
            c = data[k]
            if 65 <= c <= 90:
                c += 32
            elif not ((48 <= c <= 57) or (97 <= c <= 122) or c >= 0x80):
                break
            if c >= 97:
                letter = 1
            t = (t ^ _U(c)) * _U(FNV_PRIME)
            k += 1
        t = _fmix64(t)
        slot = count % n
        h = h * _U(COMBINE) + t
        if count >= n:  # the word leaving the window
            h -= window[slot, 0] * power
            letters -= pos[slot, 1]
        window[slot, 0], pos[slot, 0], pos[slot, 1] = t, s, letter
        letters += letter
        if shaping:
            keep = 1 if letter == 0 or kept[_slot(kept, t)] == t else 0
            ts = t if keep == 1 else _U(PLACEHOLDER)
            hs = hs * _U(COMBINE) + ts
            if count >= n:
                hs -= window[slot, 1] * power
                structure -= pos[slot, 2]
            window[slot, 1], pos[slot, 2] = ts, keep
            structure += keep
        count += 1
        if count >= n:
            _emit(out, spans, m, h, hs, pos[count % n, 0], k, letters, structure, shaping)
            m += 1
    if 0 < count < n:
        _emit(out, spans, 0, h, hs, pos[0, 0], k, letters, structure, shaping)
        m = 1
    return m


@numba.njit(cache=True, inline="always")
def _emit(out, spans, m, h, hs, begin, end, letters, structure, shaping):
    key = _fmix64(h)
    out[m, 0] = key if key != 0 else _U(1)
    spans[m, 0], spans[m, 1], spans[m, 2] = begin, end, letters
    if shaping:
        key = _fmix64(hs)
        out[m, 1] = key if key != 0 else _U(1)
        spans[m, 3] = structure


@numba.njit(cache=True)
def _scratch(offsets, n):
    longest = 1
    for d in range(len(offsets) - 1):
        longest = max(longest, (offsets[d + 1] - offsets[d] + 1) // 2 + 1)
    return (np.zeros((longest, 2), dtype=np.uint64), np.zeros((longest, 4), dtype=np.int64),
            np.zeros((n, 2), dtype=np.uint64), np.zeros((n, 3), dtype=np.int64))


@numba.njit(cache=True)
def gram_hashes(data, offsets, n, kept=NO_SHAPES):
    """Every document's ``n``-gram hashes: (values, per-document offsets, how many words of
    each n-gram hold a letter, shape hashes, how many words each shape keeps); the shapes are
    zeros when ``kept`` is empty. With ``n = 1`` the per-document counts are the word counts."""
    ndocs = len(offsets) - 1
    total = 0
    for d in range(ndocs):
        total += (offsets[d + 1] - offsets[d] + 1) // 2 + 1
    values = np.empty((total, 2), dtype=np.uint64)
    counts = np.empty((total, 2), dtype=np.int64)
    out_offsets = np.zeros(ndocs + 1, dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, n)
    for d in range(ndocs):
        m = _grams(data, offsets[d], offsets[d + 1], n, kept, grams, spans, window, pos)
        values[out_offsets[d]:out_offsets[d] + m] = grams[:m]
        counts[out_offsets[d]:out_offsets[d] + m] = spans[:m, 2:]
        out_offsets[d + 1] = out_offsets[d] + m
    end = out_offsets[-1]
    return (values[:end, 0].copy(), out_offsets, counts[:end, 0].copy(), values[:end, 1].copy(),
            counts[:end, 1].copy())


@numba.njit(cache=True)
def _slot(keys, key):
    mask = len(keys) - 1
    i = np.int64(key & _U(mask))
    while keys[i] != 0 and keys[i] != key:
        i = (i + 1) & mask
    return i


@numba.njit(cache=True)
def fill_table(values, owners, size):
    """The table (``size`` a power of two above ``len(values)``) of distinct ``values``."""
    keys = np.zeros(size, dtype=np.uint64)
    table_owner = np.full(size, -1, dtype=np.int32)
    for i in range(len(values)):
        j = _slot(keys, values[i])
        keys[j], table_owner[j] = values[i], owners[i]
    return keys, table_owner


@numba.njit(cache=True)
def document_counts(data, offsets, lengths, keys, kept, shape_keys):
    """Per slot of ``keys`` and of ``shape_keys``: how many documents hold its n-gram, or an
    n-gram of its shape (n-grams of every length in ``lengths``; a document counts once per
    slot). With an empty ``kept`` no shapes are hashed and their counts are zeros."""
    counts = np.zeros(len(keys), dtype=np.int64)
    last = np.full(len(keys), -1, dtype=np.int64)
    shape_counts = np.zeros(len(shape_keys), dtype=np.int64)
    shape_last = np.full(len(shape_keys), -1, dtype=np.int64)
    shaping = len(kept) > 0 and len(shape_keys) > 0
    grams, spans, window, pos = _scratch(offsets, lengths.max())
    for d in range(len(offsets) - 1):
        for n in lengths:
            m = _grams(data, offsets[d], offsets[d + 1], n, kept, grams, spans, window, pos)
            for i in range(m):
                j = _slot(keys, grams[i, 0])
                if keys[j] != 0 and last[j] != d:
                    last[j] = d
                    counts[j] += 1
                if shaping:
                    j = _slot(shape_keys, grams[i, 1])
                    if shape_keys[j] != 0 and shape_last[j] != d:
                        shape_last[j] = d
                        shape_counts[j] += 1
    return counts, shape_counts


@numba.njit(cache=True)
def first_hits(data, offsets, lengths, keys, owners):
    """Per document: the owner of its first n-gram found in the table with an owner (-1: none)
    and the byte span of that n-gram."""
    ndocs = len(offsets) - 1
    owner = np.full(ndocs, -1, dtype=np.int32)
    span = np.zeros((ndocs, 2), dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, lengths.max())
    for d in range(ndocs):
        for n in lengths:
            m = _grams(data, offsets[d], offsets[d + 1], n, NO_SHAPES, grams, spans, window, pos)
            for i in range(m):
                j = _slot(keys, grams[i, 0])
                if keys[j] != 0 and owners[j] >= 0:
                    owner[d] = owners[j]
                    span[d, 0], span[d, 1] = spans[i, 0], spans[i, 1]
                    break
            if owner[d] >= 0:
                break
    return owner, span
