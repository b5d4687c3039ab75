"""Character classes of Unicode code points, as bit flags the compiled text statistics read.

``SPACE`` is Python's ``str.isspace`` (what ``str.split()`` splits on), ``LETTER`` its
``str.isalpha`` (categories L*), ``PUNCT`` punctuation and symbols (categories P* and S*),
``TERMINAL`` the Unicode property Sentence_Terminal (``.``, ``!``, ``?``, ``。``, ``।`` and the
other scripts' full stops: the line-ending marks of FineWeb's filter), ``DIGIT`` ``str.isdecimal``.
The Basic Multilingual Plane is classified once per process; other planes as they are met.
"""

from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

SPACE, LETTER, PUNCT, TERMINAL, DIGIT = 1, 2, 4, 8, 16
BMP = 0x10000
_TERMINAL = regex.compile(r"\p{Sentence_Terminal}")


def _flags(chars: str) -> np.ndarray:
    category = unicodedata.category
    out = np.zeros(len(chars), dtype=np.uint8)
    for bit, test in ((SPACE, str.isspace), (LETTER, str.isalpha), (DIGIT, str.isdecimal),
                      (PUNCT, lambda c: category(c)[0] in "PS"),
                      (TERMINAL, lambda c: _TERMINAL.match(c) is not None)):
        out |= np.fromiter(map(test, chars), dtype=bool, count=len(chars)).astype(np.uint8) * bit
    return out


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    flags = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
    flags[:BMP] = _flags("".join(map(chr, range(BMP))))
    flags[BMP:] = 0xFF  # not classified yet
    return flags


def table_for(text: pa.Array) -> np.ndarray:
    """The flag table, with every code point of ``text`` beyond the BMP classified."""
    flags = _table()
    astral = pc.fill_null(pc.match_substring_regex(text, "[\U00010000-\U0010FFFF]"), False)
    if pc.any(astral).as_py():
        found = {c for t in text.filter(astral).to_pylist() for c in t if ord(c) >= BMP}
        new = sorted(c for c in found if flags[ord(c)] == 0xFF)
        if new:
            flags[[ord(c) for c in new]] = _flags("".join(new))
    return flags
