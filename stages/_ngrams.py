"""Word n-gram hashing and lookup for decontamination (compiled with numba).

Words are maximal runs of ASCII letters and digits or non-ASCII bytes; ASCII is lowercased
here, other text arrives folded by ``prepare``. An n-gram's hash is a rolling polynomial of its
words' hashes, so a window inside a long text hashes like the same words alone, and a text
shorter than ``n`` words is one n-gram of all its words.

The evaluation n-grams live in an open-addressing table (linear probing, key 0 = empty) whose
``owners`` array names the evaluation item of each slot; an owner below 0 keeps the slot but
makes it no evidence (an n-gram ignored by a rule).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages._minhash import COMBINE, FNV_OFFSET, FNV_PRIME, _fmix64

_U = np.uint64
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


@numba.njit(cache=True)
def _grams(data, start, end, n, out, spans, window, pos):
    """Rolling hashes of the word ``n``-grams of ``data[start:end]`` into ``out`` (never 0), the
    byte span of each into ``spans[:, :2]`` and how many of its words hold a letter into
    ``spans[:, 2]``; returns how many. ``window`` and ``pos`` (word start, holds a letter) are
    scratch of at least ``n`` rows."""
    count, k, m, h, letters = 0, start, 0, _U(0), 0
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
            h -= window[slot] * power
            letters -= pos[slot, 1]
        window[slot], pos[slot, 0], pos[slot, 1] = t, s, letter
        letters += letter
        count += 1
        if count >= n:
            key = _fmix64(h)
            out[m] = key if key != 0 else _U(1)
            spans[m, 0], spans[m, 1], spans[m, 2] = pos[count % n, 0], k, letters
            m += 1
    if 0 < count < n:
        key = _fmix64(h)
        out[0] = key if key != 0 else _U(1)
        spans[0, 0], spans[0, 1], spans[0, 2] = pos[0, 0], k, letters
        m = 1
    return m


@numba.njit(cache=True)
def _scratch(offsets, n):
    longest = 1
    for d in range(len(offsets) - 1):
        longest = max(longest, (offsets[d + 1] - offsets[d] + 1) // 2 + 1)
    return (np.empty(longest, dtype=np.uint64), np.empty((longest, 3), dtype=np.int64),
            np.zeros(n, dtype=np.uint64), np.zeros((n, 2), dtype=np.int64))


@numba.njit(cache=True)
def gram_hashes(data, offsets, n):
    """Every document's ``n``-gram hashes: (values, per-document offsets, how many words of
    each n-gram hold a letter). With ``n = 1`` the per-document counts are the word counts."""
    ndocs = len(offsets) - 1
    total = 0
    for d in range(ndocs):
        total += (offsets[d + 1] - offsets[d] + 1) // 2 + 1
    values = np.empty(total, dtype=np.uint64)
    letters = np.empty(total, dtype=np.int64)
    out_offsets = np.zeros(ndocs + 1, dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, n)
    for d in range(ndocs):
        m = _grams(data, offsets[d], offsets[d + 1], n, grams, spans, window, pos)
        values[out_offsets[d]:out_offsets[d] + m] = grams[:m]
        letters[out_offsets[d]:out_offsets[d] + m] = spans[:m, 2]
        out_offsets[d + 1] = out_offsets[d] + m
    end = out_offsets[-1]
    return values[:end].copy(), out_offsets, letters[:end].copy()


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
def document_counts(data, offsets, lengths, keys):
    """Per table slot: how many documents hold its n-gram (n-grams of every length in
    ``lengths``; a document counts once per slot)."""
    counts = np.zeros(len(keys), dtype=np.int64)
    last = np.full(len(keys), -1, dtype=np.int64)
    grams, spans, window, pos = _scratch(offsets, lengths.max())
    for d in range(len(offsets) - 1):
        for n in lengths:
            m = _grams(data, offsets[d], offsets[d + 1], n, grams, spans, window, pos)
            for i in range(m):
                j = _slot(keys, grams[i])
                if keys[j] != 0 and last[j] != d:
                    last[j] = d
                    counts[j] += 1
    return counts


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
            m = _grams(data, offsets[d], offsets[d + 1], n, grams, spans, window, pos)
            for i in range(m):
                j = _slot(keys, grams[i])
                if keys[j] != 0 and owners[j] >= 0:
                    owner[d] = owners[j]
                    span[d, 0], span[d, 1] = spans[i, 0], spans[i, 1]
                    break
            if owner[d] >= 0:
                break
    return owner, span
