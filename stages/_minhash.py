"""MinHash kernels (numba) shared by the MinHash dedup stage and its tests and benchmark.

Text is normalized with Arrow compute (lowercase, digits folded to ``0``, punctuation and
symbols to spaces, whitespace collapsed), then one compiled pass over the Arrow UTF-8 buffer
tokenizes, hashes every token once (FNV-1a 64 + MurmurHash3 fmix64), combines token hashes into
word n-gram shingle hashes with wrapping multiply-add, sorts and dedups each document's shingle
set, and applies the permutations. The permutation/min step reproduces ``datasketch.MinHash``
bit for bit for the same seed, ``num_perm`` and hash function:

- ``affine64`` (datasketch >= 2.0 with a 64-bit hash): ``a * fmix64(h) + b`` mod 2^64;
- ``legacy`` (datasketch < 2.0, and rensa/DataTrove's scheme): ``((a * h + b) mod (2^61 - 1))``
  truncated to 32 bits, the modulo done with the Mersenne-prime fold instead of a division.

``shingle_items`` and ``item_hash`` are the plain-Python reference of the same hashing, used as
the ``hashfunc`` of datasketch objects in the tests.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MASK64 = (1 << 64) - 1
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
COMBINE = 0x9E3779B97F4A7C15  # odd multiplier (2^64 / golden ratio) for combining token hashes
MERSENNE = (1 << 61) - 1
MAX32 = (1 << 32) - 1

_U = np.uint64


def normalize(text: pa.Array) -> pa.Array:
    """Lowercase; digits to ``0``; punctuation and symbols to spaces; whitespace runs to one space."""
    text = pc.utf8_lower(pc.fill_null(text, ""))
    text = pc.replace_substring_regex(text, r"\p{Nd}", "0")
    text = pc.replace_substring_regex(text, r"[\p{P}\p{S}]+", " ")
    return pc.replace_substring_regex(text, r"[\s\p{Z}]+", " ")


def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """The permutation parameters datasketch draws for this seed and scheme."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = [(gen.randint(1, MERSENNE, dtype=np.uint64), gen.randint(0, MERSENNE, dtype=np.uint64))
                 for _ in range(num_perm)]
        arr = np.array(pairs, dtype=np.uint64).T
        return arr[0].copy(), arr[1].copy()
    a = gen.randint(0, 1 << 63, num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = gen.randint(0, 1 << 64, num_perm, dtype=np.uint64)
    return a, b


# ---- plain-Python reference --------------------------------------------------------------


def fmix64_py(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def bytes_hash_py(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return fmix64_py(h)


def item_hash(item: tuple[bytes, ...] | bytes) -> int:
    """Hash of one shingle: a tuple of word tokens, or the bytes of a character n-gram."""
    if isinstance(item, bytes):
        return bytes_hash_py(item)
    h = 0
    for token in item:
        h = (h * COMBINE + bytes_hash_py(token)) & MASK64
    return fmix64_py(h)


def shingle_items(normalized: str, ngram: int, unit: str) -> list:
    """The shingles of one normalized text, as ``item_hash`` takes them."""
    if unit == "char":
        chars = normalized
        if not chars:
            return []
        if len(chars) < ngram:
            return [chars.encode()]
        return [chars[i:i + ngram].encode() for i in range(len(chars) - ngram + 1)]
    tokens = [t.encode() for t in normalized.split(" ") if t]
    if not tokens:
        return []
    if len(tokens) < ngram:
        return [tuple(tokens)]
    return [tuple(tokens[i:i + ngram]) for i in range(len(tokens) - ngram + 1)]


# ---- compiled kernels --------------------------------------------------------------------


@numba.njit(cache=True, inline="always")
def _fmix64(h):
    h ^= h >> _U(33)
    h *= _U(0xFF51AFD7ED558CCD)
    h ^= h >> _U(33)
    h *= _U(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U(33))


@numba.njit(cache=True)
def _span_hash(data, start, end):
    h = _U(FNV_OFFSET)
    for k in range(start, end):
        h = (h ^ _U(data[k])) * _U(FNV_PRIME)
    return _fmix64(h)


@numba.njit(cache=True)
def _doc_shingles(data, start, end, ngram, char_mode, out, tok_buf):
    """Write the shingle hashes of ``data[start:end]`` into ``out``; return how many."""
    n = 0
    if char_mode:
        # starts of code points (bytes that are not UTF-8 continuation bytes)
        count = 0
        for k in range(start, end):
            if (data[k] & 0xC0) != 0x80:
                tok_buf[count] = k
                count += 1
        if count == 0:
            return 0
        tok_buf[count] = end
        if count < ngram:
            out[0] = _span_hash(data, start, end)
            return 1
        for i in range(count - ngram + 1):
            out[n] = _span_hash(data, tok_buf[i], tok_buf[i + ngram])
            n += 1
        return n
    count = 0
    k = start
    while k < end:
        while k < end and data[k] == 32:
            k += 1
        if k >= end:
            break
        s = k
        while k < end and data[k] != 32:
            k += 1
        tok_buf[count] = _span_hash(data, s, k)
        count += 1
    if count == 0:
        return 0
    width = ngram if count >= ngram else count
    for i in range(count - width + 1):
        h = _U(0)
        for j in range(width):
            h = h * _U(COMBINE) + _U(tok_buf[i + j])
        out[n] = _fmix64(h)
        n += 1
    return n


@numba.njit(cache=True)
def _fold(data, start, end, out):
    """ASCII part of ``normalize`` into ``out``; returns the length. Idempotent on normalized
    text, so documents with non-ASCII characters are normalized by Arrow first."""
    n = 0
    in_gap = False
    for k in range(start, end):
        c = data[k]
        if c == 9 or c == 10 or c == 12 or c == 13 or c == 32 or (33 <= c <= 47) \
                or (58 <= c <= 64) or (91 <= c <= 96) or (123 <= c <= 126):
            if not in_gap:
                out[n] = 32
                n += 1
                in_gap = True
            continue
        in_gap = False
        if 65 <= c <= 90:
            c += 32
        elif 48 <= c <= 57:
            c = 48
        out[n] = c
        n += 1
    return n


@numba.njit(cache=True)
def shingle_sets(data, offsets, ngram, char_mode, unique):
    """Shingle hashes per document: (values, per-document offsets); sorted and unique when
    ``unique`` (exact Jaccard needs sets; signatures do not, since min ignores repeats)."""
    ndocs = len(offsets) - 1
    total = 0
    longest = 0
    for d in range(ndocs):
        span = offsets[d + 1] - offsets[d]
        total += span + 1
        longest = max(longest, span + 1)
    values = np.empty(total, dtype=np.uint64)
    out_offsets = np.zeros(ndocs + 1, dtype=np.int64)
    buf = np.empty(longest + 1, dtype=np.uint64)
    tok_buf = np.empty(longest + 2, dtype=np.uint64)
    text = np.empty(longest + 1, dtype=np.uint8)
    pos = 0
    for d in range(ndocs):
        length = _fold(data, offsets[d], offsets[d + 1], text)
        n = _doc_shingles(text, 0, length, ngram, char_mode, buf, tok_buf)
        if n > 0 and not unique:
            values[pos:pos + n] = buf[:n]
            pos += n
        elif n > 0:
            seg = np.sort(buf[:n])
            values[pos] = seg[0]
            pos += 1
            for i in range(1, n):
                if seg[i] != seg[i - 1]:
                    values[pos] = seg[i]
                    pos += 1
        out_offsets[d + 1] = pos
    return values[:pos].copy(), out_offsets


@numba.njit(cache=True)
def signatures(values, offsets, a, b, legacy):
    """MinHash signatures (ndocs x num_perm, uint64) of shingle sets; empty sets stay at max."""
    ndocs = len(offsets) - 1
    num_perm = len(a)
    empty = _U(MAX32) if legacy else _U(0xFFFFFFFFFFFFFFFF)
    sig = np.full((ndocs, num_perm), empty, dtype=np.uint64)
    mersenne = _U(MERSENNE)
    for d in range(ndocs):
        row = sig[d]
        for i in range(offsets[d], offsets[d + 1]):
            hv = values[i]
            if legacy:
                for p in range(num_perm):
                    x = hv * a[p] + b[p]
                    r = (x & mersenne) + (x >> _U(61))
                    if r >= mersenne:
                        r -= mersenne
                    r &= _U(MAX32)
                    if r < row[p]:
                        row[p] = r
            else:
                h = _fmix64(hv)
                for p in range(num_perm):
                    r = a[p] * h + b[p]
                    if r < row[p]:
                        row[p] = r
    return sig


@numba.njit(cache=True)
def band_keys(sig, bands, rows):
    """One 64-bit key per (document, band): a hash of the band's ``rows`` signature values."""
    ndocs = sig.shape[0]
    keys = np.empty((ndocs, bands), dtype=np.uint64)
    for d in range(ndocs):
        for band in range(bands):
            h = _U(band + 1)
            for r in range(band * rows, (band + 1) * rows):
                h = _fmix64(h * _U(COMBINE) + sig[d, r])
            keys[d, band] = h
    return keys


@numba.njit(cache=True)
def pair_jaccard(values, offsets, left, right):
    """Exact Jaccard of the sorted shingle sets of documents ``left[k]`` and ``right[k]``."""
    out = np.zeros(len(left), dtype=np.float64)
    for k in range(len(left)):
        i, iend = offsets[left[k]], offsets[left[k] + 1]
        j, jend = offsets[right[k]], offsets[right[k] + 1]
        na, nb = iend - i, jend - j
        if na == 0 or nb == 0:
            continue
        common = 0
        while i < iend and j < jend:
            if values[i] == values[j]:
                common += 1
                i += 1
                j += 1
            elif values[i] < values[j]:
                i += 1
            else:
                j += 1
        out[k] = common / (na + nb - common)
    return out


def arrow_buffers(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and int64 offsets of a string array, without copying per document."""
    text = text.cast(pa.large_string()) if not pa.types.is_large_string(text.type) else text
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if text.offset:
        text = pa.concat_arrays([text])
    _, offsets, data = text.buffers()
    offs = np.frombuffer(offsets, dtype=np.int64)[: len(text) + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return raw, offs


def prepare(text: pa.Array) -> pa.Array:
    """``normalize`` for documents with non-ASCII characters; ASCII ones are folded in the kernel."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    text = pc.fill_null(text, "")
    non_ascii = pc.invert(pc.string_is_ascii(text))
    if not pc.any(non_ascii).as_py():
        return text
    return pc.replace_with_mask(text, non_ascii, normalize(text.filter(non_ascii)))


def shingle_sets_of(text: pa.Array, ngram: int, unit: str,
                    unique: bool = True) -> tuple[np.ndarray, np.ndarray]:
    data, offsets = arrow_buffers(prepare(text))
    return shingle_sets(data, offsets, ngram, unit == "char", unique)
