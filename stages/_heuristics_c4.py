"""C4's cleaning (Raffel et al. 2020, section 2.2; TFDS ``c4_utils.clean_page``), line by line.

Each line (``str.splitlines``, stripped, citation marks such as ``[1]`` or ``[edit]`` removed) is
kept only if it ends in a terminal mark (``.``, ``?``, ``!``, ``"`` or ``'``, not ``...``), has
at least 3 words and no word over 1,000 characters, and mentions neither "javascript" nor a
policy phrase ("terms of use", "uses cookies", ...). A document is dropped when a line that
reaches those checks contains "lorem ipsum" (``c4:lorem_ipsum``) or, past the javascript check, a
curly bracket (``c4:curly_bracket``), or when its kept lines hold fewer than 5 sentences
(``c4:too_few_sentences``). The kept text is the kept lines joined by newlines.

Sentences are counted as DataTrove's ``C4QualityFilter`` counts them (spaCy's rule-based
sentencizer over its English tokenizer; TFDS used NLTK's punkt model): a sentence ends at a
``.``, ``!`` or ``?`` token and the next one starts at the next word. ``sentence_count``
reproduces that without spaCy (the same count as spaCy on 99.9% of 3,000 lines of local
documentation): a period is its own token unless it closes an abbreviation ("e.g.", "Mr.",
"a.m.", single initials) or an ellipsis. Only documents with fewer kept lines than
``min_sentences`` need it (a kept line holds at least one sentence). Two details follow one
reference: the words of a line are counted after its citation marks are removed (TFDS;
DataTrove counts them before), and ``'`` ends a line like ``"`` (DataTrove; TFDS has ``"``
only, the paper says "end quotation mark").
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LINE_BREAKS = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\x{2028}\x{2029}]"  # str.splitlines
CITATION = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"
POLICY = r"terms of use|privacy policy|cookie policy|uses cookies|use of cookies|use cookies"
END_MARKS = r"[.?!\"']$"
# Words spaCy's English tokenizer keeps whole with their final period (its exceptions), lower case.
ABBREVIATIONS = frozenset("""
a.m. p.m. e.g. i.e. v.s. vs. co. adm. ak. ala. apr. ariz. ark. aug. bros. calif. colo. conn.
corp. d.c. dec. del. dr. feb. fla. ga. gen. gov. ia. id. ill. inc. ind. jan. jr. jul. jun. kan.
kans. ky. la. ltd. mar. mass. md. messrs. mich. minn. miss. mo. mont. mr. mrs. ms. mt. n.c. n.d.
n.h. n.j. n.m. n.y. neb. nebr. nev. nov. oct. okla. ore. pa. ph.d. prof. rep. rev. s.c. sen. sep.
sept. st. tenn. va. wash. wis.""".split())
_CLOSERS = "\"')]}»”’`"
_OPENERS = "\"'([{«“‘`"
_INFIX_STOP = re.compile(r"[a-z]\.[A-Z]")  # "end.Next": the tokenizer splits the period off
_WORD = re.compile(r"\S+")


def _ends_sentence(word: str) -> bool:
    """Whether a word ends in a sentence-final token (before any closing quotes/brackets)."""
    core = word.rstrip(_CLOSERS)
    if not core or core[-1] not in ".!?":
        return False
    if core[-1] in "!?":
        return True
    if core.endswith("..") or core.lstrip(_OPENERS).lower() in ABBREVIATIONS:
        return False
    before = core[:-1].lstrip(_OPENERS)
    if len(before) == 1 and before.isalpha():
        return False  # an initial
    if not before:
        return True
    prev = before[-1]
    # the tokenizer splits a period off after a lower-case letter, a digit, a mark or two capitals
    return (prev.islower() or prev.isdigit() or not prev.isalnum()
            or (len(before) >= 2 and before[-2:].isupper() and before[-2:].isalpha()))


def sentence_count(line: str) -> int:
    """Sentences in one line, the way spaCy's sentencizer splits it (see the module docstring)."""
    words = _WORD.findall(line)
    count = 1
    for i, word in enumerate(words):
        count += len(_INFIX_STOP.findall(word))
        if i + 1 < len(words) and _ends_sentence(word) and any(
                not _only_marks(w) for w in words[i + 1:]):
            count += 1
    return count


def _only_marks(word: str) -> bool:
    return not any(ch.isalnum() for ch in word)


def _mask(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def clean(text: pa.Array, config) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """(drop reason per document or None, cleaned text, lines removed per document)."""
    ndocs = len(text)
    lines = pc.split_pattern_regex(text, LINE_BREAKS)
    parent = np.asarray(pc.list_parent_indices(lines))
    line = pc.utf8_trim_whitespace(pc.list_flatten(lines))
    long_word = np.zeros(len(line), dtype=bool)
    for i in np.flatnonzero(_mask(pc.greater(pc.utf8_length(line), config.max_word_length))):
        long_word[i] = any(len(w) > config.max_word_length for w in line[i].as_py().split())
    if config.remove_citations:
        line = pc.replace_substring_regex(line, CITATION, "")
    candidate = ~long_word & (_mask(pc.match_substring_regex(line, END_MARKS))
                              & ~_mask(pc.ends_with(line, "..."))
                              if config.terminal_punctuation else True)
    words = np.asarray(pc.list_value_length(pc.utf8_split_whitespace(line)).fill_null(0))
    candidate &= words >= config.min_words_per_line
    lower = pc.utf8_lower(line)
    lorem = candidate & _mask(pc.match_substring(lower, "lorem ipsum")) & config.lorem_ipsum
    javascript = _mask(pc.match_substring(lower, "javascript")) & config.javascript
    curly = candidate & ~lorem & ~javascript & _mask(pc.match_substring(line, "{")) & config.curly_bracket
    policy = _mask(pc.match_substring_regex(lower, POLICY)) & config.policy
    kept = candidate & ~lorem & ~javascript & ~curly & ~policy

    first_drop = np.full(ndocs, len(line), dtype=np.int64)
    rows = np.arange(len(line))
    np.minimum.at(first_drop, parent[lorem | curly], rows[lorem | curly])
    reasons = np.full(ndocs, None, dtype=object)
    dropped = first_drop < len(line)
    reasons[dropped] = np.where(lorem[first_drop[dropped]], "lorem_ipsum", "curly_bracket")

    kept_per_doc = np.bincount(parent[kept], minlength=ndocs)
    sentences = kept_per_doc.copy()
    few = np.flatnonzero(~dropped & (kept_per_doc > 0) & (kept_per_doc < config.min_sentences))
    for i in np.flatnonzero(kept & np.isin(parent, few)):
        sentences[parent[i]] += sentence_count(line[i].as_py()) - 1
    reasons[~dropped & (sentences < config.min_sentences)] = "too_few_sentences"

    offsets = np.concatenate([[0], np.cumsum(kept_per_doc)])
    cleaned = pc.utf8_trim_whitespace(pc.binary_join(
        pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), line.filter(pa.array(kept))), pa.scalar("\n", line.type)))
    nonblank = _mask(pc.greater(pc.utf8_length(line), 0))
    removed = np.bincount(parent[nonblank], minlength=ndocs) - kept_per_doc
    return reasons, cleaned, removed
