"""Word n-gram repetition statistics of Gopher (Rae et al. 2021, table A1), compiled.

Both take a document's word hashes and word lengths (characters). ``top_fraction``: the
characters of the most frequent n-gram (its words and the n-1 spaces between them; the first to
occur among equally frequent ones) times its count. ``dup_fraction``: the characters of the words
covered by an occurrence of an n-gram that occurred before, each word counted once.
"""

from __future__ import annotations

import numba
import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, inline="always")
def _mix(h):
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


@numba.njit(cache=True)
def _grams(word_hash, nwords, n):
    """N-gram hashes and an empty open-addressing table (at least twice their number)."""
    m = max(nwords - n + 1, 0)
    grams = np.empty(m, dtype=np.uint64)
    for i in range(m):
        h = np.uint64(0)
        for j in range(n):
            h = h * GOLDEN + word_hash[i + j]
        grams[i] = h
    size = 2
    while size < 2 * m:
        size *= 2
    return grams, np.empty(size, dtype=np.uint64), np.zeros(size, dtype=np.bool_)


@numba.njit(cache=True)
def _slot(keys, used, key):
    """Slot of ``key``: where it is, or the free one where it goes (linear probing)."""
    mask = np.int64(len(keys) - 1)
    i = np.int64(_mix(key) & np.uint64(mask))
    while used[i] and keys[i] != key:
        i = np.int64((i + 1) & mask)
    return i


@numba.njit(cache=True)
def top_fraction(word_hash, word_len, nwords, n):
    grams, keys, used = _grams(word_hash, nwords, n)
    if len(grams) == 0:
        return 0
    counts = np.zeros(len(keys), dtype=np.int64)
    best = 0
    for g in grams:
        j = _slot(keys, used, g)
        used[j], keys[j] = True, g
        counts[j] += 1
        best = max(best, counts[j])
    for i in range(len(grams)):
        if counts[_slot(keys, used, grams[i])] == best:
            chars = n - 1
            for j in range(n):
                chars += word_len[i + j]
            return best * chars
    return 0


@numba.njit(cache=True)
def dup_fraction(word_hash, word_len, nwords, n):
    grams, keys, used = _grams(word_hash, nwords, n)
    covered = np.zeros(nwords, dtype=np.bool_)
    any_dup = False
    for i in range(len(grams)):
        j = _slot(keys, used, grams[i])
        if used[j]:
            any_dup = True
            covered[i:i + n] = True
        else:
            used[j], keys[j] = True, grams[i]
    if not any_dup:
        return 0
    chars = 0
    for w in range(nwords):
        if covered[w]:
            chars += word_len[w]
    return chars
