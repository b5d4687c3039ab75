"""Per-document text statistics for the heuristic filters, in one compiled pass per batch.

Words are whitespace-separated tokens, lines split on ``\\n``, paragraphs on blank lines (the
Gopher paper's units). Character counts are code points. Statistics follow the definitions of
Rae et al. 2021 (Gopher, appendix A): a duplicate line/paragraph is every occurrence after the
first; the top n-gram character fraction is (occurrences x characters) of the most frequent
n-gram over all word characters; the duplicate n-gram character fraction counts the characters
of the words covered by any repeated occurrence of an n-gram, each word once.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from stages._minhash import arrow_buffers

STOP_WORDS = (b"the", b"be", b"to", b"of", b"and", b"that", b"have", b"with")
FIELDS = [
    "chars", "words", "word_chars", "alpha_words", "stop_words", "hashes", "ellipses",
    "max_word", "lines", "nonempty_lines", "bullet_lines", "ellipsis_lines", "punct_lines",
    "short_lines", "dup_lines", "dup_line_chars", "paragraphs", "dup_paragraphs",
    "dup_paragraph_chars", "max_line", "alnum_chars", "data_chars", "curly",
    "top2", "top3", "top4", "dup5", "dup6", "dup7", "dup8", "dup9", "dup10",
]
INDEX = {name: i for i, name in enumerate(FIELDS)}


def _hash_bytes(text: bytes) -> np.uint64:
    h = 0xCBF29CE484222325
    for byte in text:
        h = ((h ^ byte) * 0x100000001B3) & ((1 << 64) - 1)
    return np.uint64(h)


STOP_HASHES = np.array(sorted(_hash_bytes(w) for w in STOP_WORDS), dtype=np.uint64)


@numba.njit(cache=True, inline="always")
def _is_space(c):
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 12 or c == 11


@numba.njit(cache=True)
def _dup_stats(hashes, lengths, n):
    """(duplicate count, duplicate characters): occurrences after the first of each value."""
    if n == 0:
        return 0, 0
    order = np.argsort(hashes[:n], kind="mergesort")
    count, chars = 0, 0
    for k in range(1, n):
        if hashes[order[k]] == hashes[order[k - 1]]:
            count += 1
            chars += lengths[order[k]]
    return count, chars


@numba.njit(cache=True)
def _ngram_hashes(word_hash, nwords, n, out):
    m = nwords - n + 1
    for i in range(m):
        h = np.uint64(0)
        for j in range(n):
            h = h * np.uint64(0x9E3779B97F4A7C15) + word_hash[i + j]
        out[i] = h
    return m


@numba.njit(cache=True)
def _slot(keys, used, key):
    """Open-addressing slot of ``key`` (linear probing; the table is at least twice the items)."""
    mask = np.int64(len(keys) - 1)
    i = np.int64(_mix(key) & np.uint64(mask))
    while used[i] and keys[i] != key:
        i = np.int64((i + 1) & mask)
    return i


@numba.njit(cache=True, inline="always")
def _mix(h):
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


@numba.njit(cache=True)
def _table_for(word_hash, nwords, n, grams, used):
    """Hash the n-grams into ``grams``; clear a hash table for them; return (count, table size)."""
    m = _ngram_hashes(word_hash, nwords, n, grams)
    size = 1
    while size < 2 * m:
        size *= 2
    used[:size] = False
    return m, size


@numba.njit(cache=True)
def _top_fraction(word_hash, word_len, nwords, n, grams, keys, used, counts):
    """(occurrences x characters) of the most frequent n-gram, if it occurs twice or more."""
    m, size = _table_for(word_hash, nwords, n, grams, used)
    if m <= 1:
        return 0
    best, best_start = 1, -1
    for i in range(m):
        j = _slot(keys[:size], used[:size], grams[i])
        if used[j]:
            counts[j] += 1
            if counts[j] > best:
                best, best_start = counts[j], i
        else:
            used[j], keys[j], counts[j] = True, grams[i], 1
    if best_start < 0:
        return 0
    chars = 0
    for j in range(n):
        chars += word_len[best_start + j]
    return best * chars


@numba.njit(cache=True)
def _dup_fraction(word_hash, word_len, nwords, n, grams, covered, keys, used):
    """Characters of the words covered by every occurrence of an n-gram after its first."""
    m, size = _table_for(word_hash, nwords, n, grams, used)
    if m <= 1:
        return 0
    covered[:nwords] = False
    any_dup = False
    for i in range(m):
        j = _slot(keys[:size], used[:size], grams[i])
        if used[j]:
            any_dup = True
            for k in range(n):
                covered[i + k] = True
        else:
            used[j], keys[j] = True, grams[i]
    if not any_dup:
        return 0
    chars = 0
    for w in range(nwords):
        if covered[w]:
            chars += word_len[w]
    return chars


@numba.njit(cache=True)
def text_stats(data, offsets, stop_hashes, short_line, ngrams):
    """One row of ``FIELDS`` per document (int64); n-gram fields only where ``ngrams[d]``."""
    ndocs = len(offsets) - 1
    out = np.zeros((ndocs, 32), dtype=np.int64)
    longest = 1
    for d in range(ndocs):
        longest = max(longest, offsets[d + 1] - offsets[d] + 2)
    word_hash = np.empty(longest, dtype=np.uint64)
    word_len = np.empty(longest, dtype=np.int64)
    line_hash = np.empty(longest, dtype=np.uint64)
    line_len = np.empty(longest, dtype=np.int64)
    para_hash = np.empty(longest, dtype=np.uint64)
    para_len = np.empty(longest, dtype=np.int64)
    grams = np.empty(longest, dtype=np.uint64)
    covered = np.empty(longest, dtype=np.bool_)
    table = 1
    while table < 2 * longest:
        table *= 2
    keys = np.empty(table, dtype=np.uint64)
    used = np.zeros(table, dtype=np.bool_)
    counts = np.zeros(table, dtype=np.int64)
    for d in range(ndocs):
        row = out[d]
        start, end = offsets[d], offsets[d + 1]
        nwords = nlines = nparas = 0
        # words
        k = start
        while k < end:
            while k < end and _is_space(data[k]):
                k += 1
            if k >= end:
                break
            h = np.uint64(0xCBF29CE484222325)
            lower = np.uint64(0xCBF29CE484222325)
            chars, alpha = 0, False
            while k < end and not _is_space(data[k]):
                c = data[k]
                if (c & 0xC0) != 0x80:
                    chars += 1
                if (65 <= c <= 90) or (97 <= c <= 122) or c >= 0xC0:
                    alpha = True
                lc = c + 32 if 65 <= c <= 90 else c
                h = (h ^ np.uint64(c)) * np.uint64(0x100000001B3)
                lower = (lower ^ np.uint64(lc)) * np.uint64(0x100000001B3)
                k += 1
            word_hash[nwords] = h
            word_len[nwords] = chars
            nwords += 1
            row[2] += chars
            row[3] += alpha
            row[7] = max(row[7], chars)
            idx = np.searchsorted(stop_hashes, lower)
            if idx < len(stop_hashes) and stop_hashes[idx] == lower:
                row[4] += 1
        row[1] = nwords
        # characters, lines, paragraphs
        ls = start
        para_h, para_chars, blank_run = np.uint64(0), 0, 0
        for k in range(start, end + 1):
            if k < end:
                c = data[k]
                if (c & 0xC0) != 0x80:
                    row[0] += 1
                    if (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c >= 0xC0:
                        row[20] += 1
                    if (48 <= c <= 57) or c == 44 or c == 46 or c == 45 or _is_space(c) \
                            or c == 91 or c == 93 or c == 34 or c == 39 or c == 123 or c == 125:
                        row[21] += 1
                    if c == 35:
                        row[5] += 1
                    if c == 123:
                        row[22] += 1
                if c == 46 and k + 2 < end and data[k + 1] == 46 and data[k + 2] == 46:
                    row[6] += 1
                if c == 0xE2 and k + 2 < end and data[k + 1] == 0x80 and data[k + 2] == 0xA6:
                    row[6] += 1
                if c != 10:
                    continue
            # a line is data[ls:k]
            e = k
            while e > ls and (data[e - 1] == 32 or data[e - 1] == 9 or data[e - 1] == 13):
                e -= 1
            s = ls
            while s < e and (data[s] == 32 or data[s] == 9):
                s += 1
            chars = 0
            h = np.uint64(0xCBF29CE484222325)
            for j in range(s, e):
                if (data[j] & 0xC0) != 0x80:
                    chars += 1
                h = (h ^ np.uint64(data[j])) * np.uint64(0x100000001B3)
            row[19] = max(row[19], k - ls)
            row[8] += 1
            if chars > 0:
                line_hash[nlines] = h
                line_len[nlines] = chars
                nlines += 1
                first, last = data[s], data[e - 1]
                if first == 45 or first == 42 or (first == 0xE2 and e - s >= 3 and data[s + 1] == 0x80
                                                  and (data[s + 2] == 0xA2 or data[s + 2] == 0xA3)):
                    row[10] += 1
                if (e - s >= 3 and data[e - 1] == 46 and data[e - 2] == 46 and data[e - 3] == 46) or \
                        (e - s >= 3 and data[e - 3] == 0xE2 and data[e - 2] == 0x80 and data[e - 1] == 0xA6):
                    row[11] += 1
                if last == 46 or last == 33 or last == 63 or last == 34 or last == 39:
                    row[12] += 1
                if chars < short_line:
                    row[13] += 1
                para_h = para_h * np.uint64(0x9E3779B97F4A7C15) + h
                para_chars += chars
                blank_run = 0
            else:
                blank_run += 1
            if (blank_run == 1 or k == end) and para_chars > 0:
                para_hash[nparas] = para_h
                para_len[nparas] = para_chars
                nparas += 1
                para_h, para_chars = np.uint64(0), 0
            ls = k + 1
        row[9] = nlines
        row[14], row[15] = _dup_stats(line_hash, line_len, nlines)
        row[16] = nparas
        row[17], row[18] = _dup_stats(para_hash, para_len, nparas)
        if not ngrams[d]:
            continue
        for n in range(2, 5):
            row[21 + n] = _top_fraction(word_hash, word_len, nwords, n, grams, keys, used, counts)
        for n in range(5, 11):  # no repeated n-gram means no repeated longer one either
            row[21 + n] = _dup_fraction(word_hash, word_len, nwords, n, grams, covered, keys, used)
            if row[21 + n] == 0:
                break
    return out


def batch_stats(text: pa.Array, ngrams: np.ndarray | None = None, short_line: int = 30) -> np.ndarray:
    """Statistics of a string array; ``ngrams`` (bool per document) limits the costly n-gram
    fields to the documents whose rules need them."""
    data, offsets = arrow_buffers(text)
    if ngrams is None:
        ngrams = np.ones(len(offsets) - 1, dtype=np.bool_)
    return text_stats(data, offsets, STOP_HASHES, short_line, ngrams)
