"""Per-document text statistics for the heuristic filters, in one compiled pass per batch.

Texts are read as code points; character classes come from ``stages/_unicode_classes.py``.
Units, as the rule sets' references define them:

- words: whitespace-separated tokens (``str.split()``); a *content* word has a character that is
  neither punctuation nor symbol, its length counted without the punctuation at its ends (Gopher).
- Gopher quality: lines as ``str.splitlines()`` (blank ones included), hash and ellipsis counts
  (``...`` without overlap, and ``…``), distinct stop words among the words stripped of edge
  punctuation.
- tokens: the words split further as spaCy's English tokenizer splits them (punctuation at
  their ends, hyphenated words in three; see ``_tokens``), DataTrove's word units.
- Gopher repetition: lines split on runs of newlines, paragraphs on runs of two or more (of the
  stripped text), both unstripped; a duplicate is every occurrence after the first; n-grams of
  tokens; character fractions are taken of the whole text.
- FineWeb: the non-blank lines of ``text.split("\\n")``, unstripped; newlines per token.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from stages._minhash import arrow_buffers
from stages._text_ngrams import dup_fraction, top_fraction
from stages._unicode_classes import DIGIT, LETTER, PUNCT, SPACE, TERMINAL, table_for

GOPHER_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
FIELDS = [
    "chars", "words", "content_words", "content_chars", "alpha_words", "stop_words", "hashes",
    "ellipses", "tokens", "newlines", "all_lines", "bullet_lines", "ellipsis_lines",
    "fw_lines", "fw_punct_lines", "fw_short_lines", "fw_dup_line_chars",
    "rep_lines", "rep_dup_lines", "rep_dup_line_chars", "paragraphs", "dup_paragraphs",
    "dup_paragraph_chars", "nonempty_lines", "lines", "max_line", "alnum_chars", "data_chars",
    "top2", "top3", "top4", "dup5", "dup6", "dup7", "dup8", "dup9", "dup10",
]
# column indices, compile-time constants of the kernels
(
    CHARS, WORDS, CONTENT_WORDS, CONTENT_CHARS, ALPHA_WORDS, STOP_WORDS, HASHES, ELLIPSES, TOKENS,
    NEWLINES, ALL_LINES, BULLET_LINES, ELLIPSIS_LINES, FW_LINES, FW_PUNCT_LINES, FW_SHORT_LINES,
    FW_DUP_LINE_CHARS, REP_LINES, REP_DUP_LINES, REP_DUP_LINE_CHARS, PARAGRAPHS, DUP_PARAGRAPHS,
    DUP_PARAGRAPH_CHARS, NONEMPTY_LINES, LINES, MAX_LINE, ALNUM_CHARS, DATA_CHARS, TOP2, TOP3,
    TOP4, DUP5, DUP6, DUP7, DUP8, DUP9, DUP10
) = range(len(FIELDS))
NFIELDS = len(FIELDS)
FNV, PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _hash_str(word: str) -> np.uint64:
    h = int(FNV)
    for ch in word:
        h = ((h ^ ord(ch)) * int(PRIME)) & ((1 << 64) - 1)
    return np.uint64(h)


STOP_HASHES = np.array([_hash_str(w) for w in GOPHER_STOP_WORDS], dtype=np.uint64)


@numba.njit(cache=True)
def _decode(data, start, end, out):
    """UTF-8 bytes -> code points in ``out``; returns their count."""
    n, k = 0, start
    while k < end:
        c = np.int64(data[k])
        if c < 0x80:
            cp, k = c, k + 1
        elif c < 0xE0:
            cp, k = ((c & 0x1F) << 6) | (data[k + 1] & 0x3F), k + 2
        elif c < 0xF0:
            cp = ((c & 0x0F) << 12) | ((np.int64(data[k + 1]) & 0x3F) << 6) | (data[k + 2] & 0x3F)
            k += 3
        else:
            cp = (((c & 0x07) << 18) | ((np.int64(data[k + 1]) & 0x3F) << 12)
                  | ((np.int64(data[k + 2]) & 0x3F) << 6) | (data[k + 3] & 0x3F))
            k += 4
        out[n] = cp
        n += 1
    return n


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
def _span_hash(cp, a, b):
    h = FNV
    for j in range(a, b):
        h = (h ^ np.uint64(cp[j])) * PRIME
    return h


@numba.njit(cache=True)
def _emit(cp, a, b, tok_hash, tok_len, ntok):
    tok_hash[ntok], tok_len[ntok] = _span_hash(cp, a, b), b - a
    return ntok + 1


@numba.njit(cache=True)
def _tokens(cp, a, b, flags, tok_hash, tok_len, ntok):
    """Split the word ``cp[a:b]`` as spaCy's English tokenizer would (an approximation: marks
    at its ends split off one by one, "..." whole; a hyphen or "=" between letters and the
    endings 's 'd 'm n't split off), appending the tokens; returns the new token count."""
    content = False
    for j in range(a, b):
        if not flags[cp[j]] & PUNCT:
            content = True
            break
    if not content:  # runs of "-" or "." are one token, other marks one each
        j = a
        while j < b:
            c, start = cp[j], j
            j += 1
            if c == 45 or c == 46:
                while j < b and cp[j] == c:
                    j += 1
            ntok = _emit(cp, start, j, tok_hash, tok_len, ntok)
        return ntok
    while a < b and flags[cp[a]] & PUNCT and cp[a] != 45:
        ntok = _emit(cp, a, a + 1, tok_hash, tok_len, ntok)
        a += 1
    end = b  # the trailing marks are emitted after the core
    while b > a and flags[cp[b - 1]] & PUNCT:
        b -= 3 if cp[b - 1] == 46 and b - 3 >= a and cp[b - 2] == 46 and cp[b - 3] == 46 else 1
    ending = b
    if b - a > 2 and cp[b - 2] == 39 and (cp[b - 1] == 115 or cp[b - 1] == 100 or cp[b - 1] == 109):
        ending = b - 2  # 's 'd 'm
    elif b - a > 3 and cp[b - 3] == 110 and cp[b - 2] == 39 and cp[b - 1] == 116:
        ending = b - 3  # n't
    start = a
    for j in range(a + 1, ending - 1):  # a hyphen or "=" between letters splits the word
        if (cp[j] == 45 or cp[j] == 61) and flags[cp[j - 1]] & (LETTER | DIGIT) \
                and flags[cp[j + 1]] & LETTER:
            ntok = _emit(cp, start, j, tok_hash, tok_len, ntok)
            ntok = _emit(cp, j, j + 1, tok_hash, tok_len, ntok)
            start = j + 1
    ntok = _emit(cp, start, ending, tok_hash, tok_len, ntok)
    if ending < b:
        ntok = _emit(cp, ending, b, tok_hash, tok_len, ntok)
    j = b
    while j < end:
        step = 3 if cp[j] == 46 and j + 3 <= end and cp[j + 1] == 46 and cp[j + 2] == 46 else 1
        ntok = _emit(cp, j, j + step, tok_hash, tok_len, ntok)
        j += step
    return ntok


@numba.njit(cache=True)
def _words(cp, n, flags, row, tok_hash, tok_len):
    """Word statistics into ``row``; the hashes and lengths of the tokens (the n-grams' units)
    into ``tok_hash``/``tok_len``; returns the number of tokens."""
    nwords = ntok = seen = k = 0
    while k < n:
        while k < n and flags[cp[k]] & SPACE:
            k += 1
        if k >= n:
            break
        a = k
        alpha = False
        while k < n and not flags[cp[k]] & SPACE:
            alpha = alpha or (flags[cp[k]] & LETTER) != 0
            k += 1
        nwords += 1
        row[ALPHA_WORDS] += int(alpha)
        ntok = _tokens(cp, a, k, flags, tok_hash, tok_len, ntok)
        s, e = a, k
        while s < e and flags[cp[s]] & PUNCT:
            s += 1
        while e > s and flags[cp[e - 1]] & PUNCT:
            e -= 1
        if e > s:
            row[CONTENT_WORDS] += 1
            row[CONTENT_CHARS] += e - s
            h = _span_hash(cp, s, e)
            for i in range(len(STOP_HASHES)):
                if STOP_HASHES[i] == h:
                    seen |= 1 << i
    row[WORDS], row[TOKENS] = nwords, ntok
    while seen:
        row[STOP_WORDS] += seen & 1
        seen >>= 1
    return ntok


@numba.njit(cache=True)
def _characters(cp, n, flags, row):
    """Character counts: hashes, ellipses (without overlap), newlines, alphanumeric and data
    characters (the code rules')."""
    k = 0
    while k < n:
        c = cp[k]
        if c == 46 and k + 2 < n and cp[k + 1] == 46 and cp[k + 2] == 46:
            row[ELLIPSES] += 1
            row[DATA_CHARS] += 3
            k += 3
            continue
        row[ELLIPSES] += int(c == 0x2026)
        row[HASHES] += int(c == 35)
        row[NEWLINES] += int(c == 10)
        if (48 <= c <= 57) or flags[c] & LETTER:
            row[ALNUM_CHARS] += 1
        if (48 <= c <= 57) or c == 44 or c == 46 or c == 45 or flags[c] & SPACE or c == 91 \
                or c == 93 or c == 34 or c == 39 or c == 123 or c == 125:
            row[DATA_CHARS] += 1
        k += 1
    row[CHARS] = n


@numba.njit(cache=True)
def _lines(cp, n, flags, row, short_line, line_hash, line_len, fw_hash, fw_len, prose):
    """Line statistics of the three line definitions (see the module docstring); the code
    rules' counts only, unless ``prose``."""
    if n == 0:
        return
    nrep = nfw = 0
    if cp[0] == 10:  # re.split("\n+") yields an empty first piece
        line_hash[0], line_len[0], nrep = FNV, 0, 1
    ls = 0
    for k in range(n + 1):
        if k < n and cp[k] != 10:
            continue
        if k == n and k == ls:  # splitlines: no line after a final newline
            if cp[n - 1] == 10:
                line_hash[nrep], line_len[nrep] = FNV, 0  # re.split's empty last piece
                nrep += 1
            break
        row[ALL_LINES] += 1
        row[LINES] += 1
        row[MAX_LINE] = max(row[MAX_LINE], k - ls)
        s, e = ls, k
        while s < e and flags[cp[s]] & SPACE:
            s += 1
        while e > s and flags[cp[e - 1]] & SPACE:
            e -= 1
        if e > s:
            row[NONEMPTY_LINES] += 1
        if not prose:
            ls = k + 1
            continue
        if e > s:
            row[BULLET_LINES] += int(cp[s] == 0x2022 or cp[s] == 45)
            row[ELLIPSIS_LINES] += int(cp[e - 1] == 0x2026 or (
                e - s >= 3 and cp[e - 1] == 46 and cp[e - 2] == 46 and cp[e - 3] == 46))
            h = _span_hash(cp, ls, k)
            fw_hash[nfw], fw_len[nfw] = h, k - ls
            nfw += 1
            row[FW_PUNCT_LINES] += int((flags[cp[k - 1]] & TERMINAL) != 0)
            row[FW_SHORT_LINES] += int(k - ls <= short_line)
        if k > ls:
            line_hash[nrep], line_len[nrep] = _span_hash(cp, ls, k), k - ls
            nrep += 1
        ls = k + 1
    row[FW_LINES] = nfw
    row[FW_DUP_LINE_CHARS] = _dup_stats(fw_hash, fw_len, nfw)[1]
    row[REP_LINES] = nrep
    row[REP_DUP_LINES], row[REP_DUP_LINE_CHARS] = _dup_stats(line_hash, line_len, nrep)


@numba.njit(cache=True)
def _paragraphs(cp, n, flags, row, para_hash, para_len):
    """Paragraphs of the stripped text, split on runs of two or more newlines."""
    s, e = 0, n
    while s < e and flags[cp[s]] & SPACE:
        s += 1
    while e > s and flags[cp[e - 1]] & SPACE:
        e -= 1
    npara, start, k = 0, s, s
    while k <= e:
        run = 0
        while k + run < e and cp[k + run] == 10:
            run += 1
        if k == e or run >= 2:
            para_hash[npara], para_len[npara] = _span_hash(cp, start, k), k - start
            npara += 1
            if k == e:
                break
            start = k + run
            k = start
        else:
            k += max(run, 1)
    row[PARAGRAPHS] = npara
    row[DUP_PARAGRAPHS], row[DUP_PARAGRAPH_CHARS] = _dup_stats(para_hash, para_len, npara)


@numba.njit(cache=True)
def text_stats(data, offsets, flags, short_line, prose, ngrams):
    """One row of ``FIELDS`` per document (int64): the code rules' fields, the prose rules'
    where ``prose[d]``, the n-gram fields where ``ngrams[d]``."""
    ndocs = len(offsets) - 1
    out = np.zeros((ndocs, NFIELDS), dtype=np.int64)
    longest = 2
    for d in range(ndocs):
        longest = max(longest, offsets[d + 1] - offsets[d] + 2)
    cp = np.empty(longest, dtype=np.int64)
    hashes = np.empty((3, longest), dtype=np.uint64)
    lengths = np.empty((3, longest), dtype=np.int64)
    for d in range(ndocs):
        row = out[d]
        n = _decode(data, offsets[d], offsets[d + 1], cp)
        _characters(cp, n, flags, row)
        _lines(cp, n, flags, row, short_line, hashes[1], lengths[1], hashes[2], lengths[2], prose[d])
        if not prose[d]:
            continue
        ntok = _words(cp, n, flags, row, hashes[0], lengths[0])
        _paragraphs(cp, n, flags, row, hashes[1], lengths[1])
        if not ngrams[d]:
            continue
        for g in range(2, 5):
            row[TOP2 + g - 2] = top_fraction(hashes[0], lengths[0], ntok, g)
        for g in range(5, 11):  # no repeated n-gram means no repeated longer one either
            row[DUP5 + g - 5] = dup_fraction(hashes[0], lengths[0], ntok, g)
            if row[DUP5 + g - 5] == 0:
                break
    return out


def batch_stats(text: pa.Array, ngrams: np.ndarray | None = None, short_line: int = 30,
                prose: np.ndarray | None = None) -> np.ndarray:
    """Statistics of a string array. Per document (bool arrays, default all true): ``prose``
    asks for the prose rules' fields, ``ngrams`` for the costly n-gram ones."""
    data, offsets = arrow_buffers(text)
    every = np.ones(len(offsets) - 1, dtype=np.bool_)
    prose = every if prose is None else np.asarray(prose, dtype=np.bool_)
    ngrams = every if ngrams is None else np.asarray(ngrams, dtype=np.bool_) & prose
    return text_stats(data, offsets, table_for(text), short_line, prose, ngrams)
