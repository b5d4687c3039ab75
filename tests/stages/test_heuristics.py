"""Each heuristic rule on crafted texts: one that passes and ones that trip it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages._heuristics_c4 import sentence_count
from stages._text_stats import FIELDS, batch_stats
from stages.heuristics import Config, process

GOOD_PROSE = (
    "The water cycle describes how water moves between the oceans, the air and the land. "
    "Heat from the sun makes water evaporate, and the vapour rises and cools to form clouds.\n"
    "When the droplets in a cloud grow heavy enough, they fall back to the ground as rain or snow.\n"
    "Some of that water flows into rivers that carry it back to the sea, and some of it soaks "
    "into the soil, where plants take it up through their roots.\n"
    "Plants release water through their leaves, which adds more vapour to the air.\n"
    "Over long periods the same water has been part of oceans, glaciers and living things.\n"
    "Understanding this cycle helps us to predict droughts and floods and to manage water with care.\n"
)
GOOD_CODE = '''def mean(values):
    """Return the arithmetic mean of a non-empty list of numbers."""
    total = 0
    for value in values:
        total += value
    return total / len(values)
'''


def verdict(text: str, profile: str = "prose", **overrides) -> str | None:
    batch = pa.table({"text": [text], "path": ["x.py" if profile == "code" else "x.txt"]})
    out = process(batch, Config(profile=profile, **overrides))
    return out.column("drop_reason")[0].as_py()


def test_good_documents_pass():
    assert verdict(GOOD_PROSE) is None
    assert verdict(GOOD_CODE, "code") is None


@pytest.mark.parametrize("text, reason", [
    ("Too short to be a document.", "gopher_quality:word_count"),
    (" ".join(["extraordinarily"] * 30 + ["incomprehensibilities"] * 30) + ".",
     "gopher_quality:mean_word_length"),
    (GOOD_PROSE + " ".join(["#tag"] * 40), "gopher_quality:hash_ratio"),
    (GOOD_PROSE + " ".join(["wait..."] * 40), "gopher_quality:ellipsis_ratio"),
    ("\n".join(f"- the important element number {i} belongs with these" for i in range(30)),
     "gopher_quality:bullet_lines"),
    ("\n".join(f"and the strange story number {i} continues with more and more words ..."
               for i in range(30)), "gopher_quality:ellipsis_lines"),
    (GOOD_PROSE + " ".join(["1234", "5678", "%%", "42"] * 40), "gopher_quality:alpha_words"),
    (GOOD_PROSE + " ".join(["—", "€", "±", "Łódź"] * 40), "gopher_quality:alpha_words"),
    (" ".join(f"word{i} alpha beta gamma delta" for i in range(20)) + ".", "gopher_quality:stop_words"),
    # one stop word, however often, is not two
    (" ".join(f"the word{i} alpha beta gamma the" for i in range(20)) + ".", "gopher_quality:stop_words"),
])
def test_gopher_quality_rules(text, reason):
    assert verdict(text) == reason


def test_gopher_repetition_rules():
    line = "The cat sat on the mat and looked at the bird in the tree."
    assert verdict("\n".join([line] * 10 + [GOOD_PROSE])) == "gopher_repetition:dup_line_fraction"
    repeated = " ".join(["the cat and the dog"] * 40) + ". " + GOOD_PROSE
    assert verdict(repeated.replace("\n", " ")).startswith("gopher_repetition:")
    # a long text whose only repetition is one 5-gram a few times stays under every threshold
    assert verdict(GOOD_PROSE + " the sun and the rain." * 2) is None


def test_repetition_statistics_follow_the_definitions():
    stats = batch_stats(pa.array(["a b c a b c a b c x\nline\nline\n\npara\n\npara"]))[0]
    s = dict(zip(FIELDS, stats))
    assert s["rep_dup_lines"] == 2 and s["rep_dup_line_chars"] == 8  # the second "line" and "para"
    assert s["dup_paragraphs"] == 1 and s["dup_paragraph_chars"] == 4
    # words: a b c a b c a b c x line line para para -> "a b" (3 characters) occurs 3 times
    assert s["top2"] == 3 * 3
    assert s["words"] == 14 and s["content_chars"] == 10 + 16 and s["chars"] == 41


def test_gopher_symbol_rules_are_separate_and_ellipses_do_not_overlap():
    words = GOOD_PROSE.split()
    s = dict(zip(FIELDS, batch_stats(pa.array(["a..... b…"]))[0]))
    assert s["ellipses"] == 2  # "....." holds one "..." (not three overlapping ones), and "…"
    # 7% hashes and 7% ellipses: each under 0.1, their sum over it
    tagged = " ".join(w + (" #x" if i % 14 == 0 else " wait..." if i % 14 == 7 else "")
                      for i, w in enumerate(words))
    s = dict(zip(FIELDS, batch_stats(pa.array([tagged]))[0]))
    assert 0.1 < (s["hashes"] + s["ellipses"]) / s["words"] and verdict(tagged, prose_rules=[
        "gopher_quality"]) is None


def test_c4_and_fineweb_rules():
    assert verdict(GOOD_PROSE + "Lorem ipsum dolor sit amet.") == "c4:lorem_ipsum"
    assert verdict(GOOD_PROSE + "Use { braces } in this line.") == "c4:curly_bracket"
    assert verdict(GOOD_PROSE.replace(".\n", "\n")) == "c4:too_few_sentences"
    # a bracket or "lorem ipsum" in a line C4 removes anyway (no end mark, or too few words)
    assert verdict(GOOD_PROSE + "{ braces }\nLorem ipsum.\n") is None
    short = GOOD_PROSE + "\n".join(f"short line {i}." for i in range(40))
    assert verdict(short, prose_rules=["fineweb"]) == "fineweb:short_line_ratio"


@pytest.mark.parametrize("text, reason", [
    ("x = 1\n", "code:too_short"),
    (GOOD_CODE + "DATA = '" + "a" * 1200 + "'\n", "code:max_line_length"),
    ("# Code generated by protoc. DO NOT EDIT.\n" + GOOD_CODE, "code:autogenerated"),
    ("TABLE = [\n" + "\n".join("    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]," for _ in range(30)) + "\n]\n",
     "code:data_fraction"),
    ("\n".join("@@ ## %% && ** !! ~~ ^^ || ++" for _ in range(10)), "code:alnum_fraction"),
])
def test_code_rules(text, reason):
    assert verdict(text, "code") == reason


def test_auto_profile_uses_the_path_and_rules_are_configurable():
    batch = pa.table({"text": [GOOD_CODE, GOOD_CODE], "path": ["a.py", "notes.md"]})
    reasons = process(batch, Config()).column("drop_reason").to_pylist()
    assert reasons[0] is None and reasons[1].startswith("gopher_quality:")
    assert verdict("x = 1\n", "code", code_rules=[]) is None
    assert np.all(batch_stats(pa.array(["", "   "]))[:, FIELDS.index("words")] == 0)


def test_each_fineweb_rule_on_its_own():
    no_punct = "\n".join(f"a line about topic number {i} without an end mark and more words here"
                         for i in range(20))
    assert verdict(no_punct, prose_rules=["fineweb"]) == "fineweb:line_punct_ratio"
    dup = GOOD_PROSE + "\n".join(["This exact sentence repeats over and over again."] * 4)
    assert verdict(dup, prose_rules=["fineweb"]) == "fineweb:dup_line_char_ratio"
    lists = "\n".join(f"Item {i}." for i in range(30))
    assert verdict(lists, prose_rules=["fineweb"], fineweb={"max_short_line_ratio": 1.0}) \
        == "fineweb:newline_word_ratio"
    assert verdict(GOOD_PROSE, prose_rules=["fineweb"]) is None


def test_each_gopher_repetition_rule_on_its_own():
    rules = ["gopher_repetition"]
    para = "A paragraph that is said twice, word for word, in this text."
    text = GOOD_PROSE + "\n\n" + "\n\n".join([para] * 4)
    assert verdict(text, prose_rules=rules, gopher_repetition={"dup_line_fraction": 1.0}) \
        == "gopher_repetition:dup_paragraph_fraction"
    loose = {"dup_line_fraction": 1.0, "dup_paragraph_fraction": 1.0,
             "dup_line_char_fraction": 1.0, "dup_paragraph_char_fraction": 1.0}
    three = GOOD_PROSE.replace("\n", " ") + " " + "rain falls down " * 30
    assert verdict(three, prose_rules=rules, gopher_repetition={
        **loose, "top_ngram_char_fraction": [1.0, 0.18, 0.16]}) == "gopher_repetition:top_3gram_char_fraction"
    long = " ".join(GOOD_PROSE.split()[:60])
    assert verdict(GOOD_PROSE + " " + long, prose_rules=rules, gopher_repetition={
        **loose, "top_ngram_char_fraction": [1.0, 1.0, 1.0]}) == "gopher_repetition:dup_5gram_char_fraction"


def test_code_mean_line_length():
    wide = "\n".join("x = '" + "a" * 150 + "'" for _ in range(5))
    assert verdict(wide, "code") == "code:mean_line_length"


def c4_run(texts: list[str], **c4) -> pa.Table:
    batch = pa.table({"text": texts, "path": ["x.md"] * len(texts),
                      "n_chars": [len(t) for t in texts], "content_hash": ["h"] * len(texts)})
    return process(batch, Config(prose_rules=["c4"], c4=c4))


def test_c4_removes_lines_and_keeps_the_cleaned_text():
    noise = ["Please enable JavaScript to view this page.", "Home", "Read more",
             "This site uses cookies to improve your experience.", "See the notes [1] here.[2]"]
    lines = GOOD_PROSE.splitlines()
    out = c4_run(["\n".join(lines[:3] + noise[:3] + lines[3:] + noise[3:]) + "\n"])
    assert out.column("drop_reason")[0].as_py() is None
    text = out.column("text")[0].as_py()
    assert text == "\n".join(lines + ["See the notes  here."])
    assert out.column("c4_lines_removed")[0].as_py() == 4
    assert out.column("n_chars")[0].as_py() == len(text)
    assert out.column("content_hash")[0].as_py() != "h"


def test_c4_counts_sentences_not_lines():
    two_each = ["The river rises in spring. It floods the low fields.",
                "Farmers wait for the water to fall. Then they plant rice.",
                "The harvest comes in autumn. Everyone helps to bring it in."]
    out = c4_run(["\n".join(two_each), "\n".join(s.split(". ")[0] + "." for s in two_each)])
    assert out.column("drop_reason").to_pylist() == [None, "c4:too_few_sentences"]
    rejected_text = out.column("text")[1].as_py()
    assert rejected_text.count("\n") == 2  # a rejected document keeps its original text


@pytest.mark.parametrize("line, count", [
    ("Mr. Smith went home. He slept.", 2),
    ("Use a tool, e.g. a hammer, for this.", 1),
    ("It works (see below). Then it stops!", 2),
    ("Is it? yes it is.", 2),
    ("Wait... what happened here.", 1),
    ("Version 1.2. Next one is 1.3.", 2),
    ("Call foo.bar() first.", 1),
])
def test_sentence_count_splits_like_spacys_sentencizer(line, count):
    assert sentence_count(line) == count


def test_fineweb_definitions():
    quoted = "\n".join(f'He said "line number {i} of the quoted story"' for i in range(20))
    assert verdict(quoted, prose_rules=["fineweb"]) == "fineweb:line_punct_ratio"
    # one short line repeated once in a long text: over 1% of the characters
    once = GOOD_PROSE + "Thanks for reading.\n" * 2
    assert verdict(once, prose_rules=["fineweb"]) == "fineweb:dup_line_char_ratio"
    assert verdict(once, prose_rules=["fineweb"], fineweb={"max_dup_line_char_ratio": 0.1}) is None


def test_rules_agree_with_datatrove_on_crafted_documents():
    filters = pytest.importorskip("datatrove.pipeline.filters")
    from datatrove.data import Document

    docs = [GOOD_PROSE, GOOD_PROSE + "Please enable JavaScript.\n", GOOD_PROSE.replace(".\n", "\n"),
            GOOD_PROSE + "Thanks for reading.\n" * 2, "\n".join([GOOD_PROSE] * 3),
            " ".join(f"the word{i} alpha beta gamma the" for i in range(20)) + "."]
    pairs = [("c4", filters.C4QualityFilter()), ("fineweb", filters.FineWebQualityFilter()),
             ("gopher_quality", filters.GopherQualityFilter()),
             ("gopher_repetition", filters.GopherRepetitionFilter())]
    for rules, reference in pairs:
        for text in docs:
            doc = Document(text=text, id="d")
            verdict_dt = reference.filter(doc)
            kept_dt = verdict_dt is True or (isinstance(verdict_dt, tuple) and verdict_dt[0])
            out = process(pa.table({"text": [text]}), Config(profile="prose", prose_rules=[rules]))
            assert (out.column("drop_reason")[0].as_py() is None) == kept_dt, (rules, text[:60])
            if kept_dt and rules == "c4":
                assert out.column("text")[0].as_py() == doc.text


def test_large_string_text_and_empty_batches():
    texts = pa.array([GOOD_PROSE + "Home\n", GOOD_CODE], pa.large_string())
    out = process(pa.table({"text": texts, "path": ["a.md", "b.py"]}), Config())
    assert out.column("drop_reason").to_pylist() == [None, None]
    assert out.column("text")[0].as_py() == GOOD_PROSE.rstrip("\n")  # C4 removed "Home"
    assert out.column("c4_lines_removed").to_pylist() == [1, 0]
    assert process(pa.table({"text": pa.array([], pa.string())}), Config()).num_rows == 0
