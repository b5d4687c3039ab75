"""Decontamination: planted HumanEval problems, code idioms, user sets, the rolling hash."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline import evalsets
from pipeline.config import load_config
from pipeline.evalsets import EvalSet, EvalSpec
from pipeline.run import run_pipeline
from stages import _decontam_index as dci
from stages import _ngrams as ng
from stages import decontaminate as dc
from tests.conftest import make_config, read_folder, write_jsonl

IDIOMS = '''from typing import List


def tidy(values: List[int]) -> List[int]:
    """Return the values sorted, without duplicates."""
    result = []
    for i in range(len(values)):
        if values[i] not in result:
            result.append(values[i])
    return sorted(result)


if __name__ == "__main__":
    import doctest
    doctest.testmod()
'''


LOOP = "for i in range(len(l)):\n    for j in range(i + 1, len(l)):\n"  # a 13-gram of HumanEval/40


def hashes(text: str, n: int) -> list[int]:
    data, offsets = dc.arrow_buffers(ng.prepare(pa.array([text])))
    return ng.gram_hashes(data, offsets, n)[0].tolist()


def humaneval_index(**rules) -> dci.EvalIndex:
    return dci.build_index([evalsets.load(EvalSpec(name="humaneval"))], **rules)


def counted(index: dci.EvalIndex, texts: list[str], common_documents: int,
            common_shape_documents: int = 3) -> dci.EvalIndex:
    """The index after the first pass over ``texts`` in batches of 4 documents."""
    documents = np.zeros(len(index.keys) + len(index.shape_keys), dtype=np.int64)
    for i in range(0, len(texts), 4):
        batch = pa.table({"id": [str(k) for k in range(i, i + len(texts[i:i + 4]))],
                          "text": texts[i:i + 4]})
        part = dc.count_batch(batch, index, dc.Config())
        np.add.at(documents, part.column("slot").to_numpy(), part.column("documents").to_numpy())
    size = len(index.keys)
    return dci.ignore_frequent(index, documents[:size], documents[size:], common_documents,
                               common_shape_documents)


def found(index: dci.EvalIndex, texts: list[str]) -> list[tuple[int, str]]:
    batch = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    return [(int(h["id"]), h["eval_item"]) for h in dc.find_batch(batch, index, dc.Config()).to_pylist()]


def test_rolling_hash_equals_each_window_hashed_alone():
    words = "Alpha, beta_gamma (delta) 42 x.y zeta eta theta".replace(",", " ,").split()
    text = " ".join(words)
    tokens = ["alpha", "beta", "gamma", "delta", "42", "x", "y", "zeta", "eta", "theta"]
    got = hashes(text, 4)
    assert len(got) == len(tokens) - 3
    assert got == [hashes(" ".join(tokens[i:i + 4]), 4)[0] for i in range(len(got))]
    assert hashes("Ünïcode—Text «quoted» ok", 3) == hashes("ünïcode text quoted ok", 3)
    assert len(hashes("two words", 13)) == 1 and hashes("", 13) == []
    data, offsets = dc.arrow_buffers(ng.prepare(pa.array(["0 1 2 a 3 b4 cc", "x"])))
    _, per_doc, letters, _, _ = ng.gram_hashes(data, offsets, 3)
    assert per_doc.tolist() == [0, 5, 6]
    assert letters.tolist() == [0, 1, 1, 2, 2, 1]  # words holding a letter, per window


def test_humaneval_problems_load_from_the_installed_package():
    problems = evalsets.humaneval_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert set(problems[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    with pytest.raises(evalsets.EvalSetError, match="no built-in evaluation set"):
        evalsets.load(EvalSpec(name="mbpp"))


def test_planted_problems_caught_one_letter_code_included():
    problems = evalsets.humaneval_problems()
    index = humaneval_index()
    planted = ("Notes from a study group.\n\n" + problems[12]["prompt"].replace("    ", "\t")
               + problems[12]["canonical_solution"] + "\nWe then discussed other topics at length.")
    texts = [planted, IDIOMS, problems[0]["canonical_solution"],
             "def size(s):\n" + problems[23]["canonical_solution"],  # one line: under 13 words
             "import itertools\n\n" + problems[40]["canonical_solution"] + "\nprint(1)\n"]
    hits = found(index, texts)
    assert hits == [(0, "HumanEval/12"), (2, "HumanEval/0"), (4, "HumanEval/40")]
    batch = pa.table({"id": ["planted"], "text": [planted]})
    detail = dc.find_batch(batch, index, dc.Config()).column("drop_detail")[0].as_py()
    assert detail.startswith("HumanEval/12: 'from typing import List")


def test_ngrams_frequent_in_the_input_are_idioms():
    problems = evalsets.humaneval_problems()
    index = humaneval_index()
    loops = [f"def pairs_{k}(l):\n    {LOOP.replace(chr(10), chr(10) + '    ')}"
             f"        if l[i] == l[j]:\n            yield {k}\n" for k in range(11)]
    leak = "import sys\n" + problems[40]["canonical_solution"]
    assert found(index, loops[:1]) == [(0, "HumanEval/40")]  # alone, the shared 13-gram is evidence
    # in 11 documents (more than 10) it is an idiom; the leak still shares other 13-grams
    frequent = counted(index, loops + [leak], common_documents=10)
    assert found(frequent, loops + [leak]) == [(11, "HumanEval/40")]
    assert frequent.stats["humaneval"]["ignored_frequent_in_input"] >= 1
    # in 10 documents it is not: the threshold is "more than"
    rare = counted(index, loops[:9] + [leak], common_documents=10)
    assert [h for h, _ in found(rare, loops[:9] + [leak])] == list(range(10))
    assert rare.stats["humaneval"]["ignored_frequent_in_input"] == 0


def test_ngrams_of_a_common_shape_are_idioms():
    problems = evalsets.humaneval_problems()
    index = humaneval_index()
    rare = ("def coprime(l):\n    " + LOOP.replace("\n", "\n    ")
            + "            if gcd(l[i], l[j]) != 1:\n")
    names = [("a", "arr", "b"), ("x", "xs", "y"), ("p", "pts", "q"), ("u", "us", "v"),
             ("m", "row", "n")]
    renamed = [f"def pairs(values):\n    for {i} in range(len({seq})):\n        for {j} in range("
               f"{i} + 1, len({seq})):\n            print({seq}[{i}], {k})\n"
               for k, (i, seq, j) in enumerate(names)]
    leak = "import sys\n" + problems[40]["canonical_solution"]
    texts = [rare] + renamed + [leak]
    assert found(index, texts) == [(0, "HumanEval/40"), (6, "HumanEval/40")]
    # its exact words in one document, its shape under other names in more than 3 others: an idiom
    idioms = counted(index, texts, common_documents=10)
    assert found(idioms, texts) == [(6, "HumanEval/40")]
    assert idioms.stats["humaneval"]["ignored_common_shape"] >= 2  # both 13-grams of the loop
    assert idioms.stats["humaneval"]["ignored_frequent_in_input"] == 0
    # under other names in 3 documents: not more than 3, still evidence
    assert [h for h, _ in found(counted(index, texts[:4] + [leak], 10), texts)] == [0, 6]
    # copies of the rare text count for the n-gram and its shape alike: no idiom
    copies = [rare] * 4 + [leak]
    assert [h for h, _ in found(counted(index, copies, 10), copies)] == [0, 1, 2, 3, 4]
    # without the rule, or for n-grams with too few keywords to have a shape, it stays evidence
    for off in (humaneval_index(common_shape=False), humaneval_index(shape_min_kept=0.8)):
        assert [h for h, _ in found(counted(off, texts, 10), texts)] == [0, 6]


def test_runs_of_numbers_are_no_evidence():
    problems = evalsets.humaneval_problems()
    table = "HEX = [" + ", ".join(repr(c) for c in "0123456789ABCDEF") + "]\n"
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9, A, B, C" in problems[78]["prompt"]
    assert found(humaneval_index(min_letter_words=0.0), [table]) == [(0, "HumanEval/78")]
    index = humaneval_index()
    assert found(index, [table]) == []
    assert index.stats["humaneval"]["ignored_mostly_numbers"] > 0


def test_sets_of_short_items_get_shorter_ngrams():
    texts = [f"which river did expedition {w} follow upstream in spring" for w in
             ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]]
    texts += ["name the capital city of peru", "the orinoco river floods each year in may and june"]
    items = EvalSet("quiz", [f"q{i}" for i in range(len(texts))], texts, "fp")
    index = dci.build_index([items], 13, 8)
    assert index.stats["quiz"]["ngram"] == 8  # the 5th-percentile item has 6 words: floor of 8
    assert index.stats["quiz"]["items_shorter"] == 1 and index.stats["quiz"]["items_exact_only"] == 1
    assert index.lengths.tolist() == [8]
    record = "In our notes: Which river did expedition Gamma follow upstream, in spring? Nobody knew."
    assert found(index, [record, "Name the capital city of Peru.", "name the capital city of peru now",
                         "the orinoco river floods each year in may"]) \
        == [(0, "q2"), (1, "q8"), (3, "q9")]


def test_ngrams_common_to_many_items_are_ignored():
    shared = "licensed under the apache license version two point zero see the notice file"
    items = EvalSet("bench", [f"b{i}" for i in range(6)],
                    [f"{shared} item {i} " + f"unique{i} " * 14 for i in range(6)], "fp")
    index = dci.build_index([items], 13, 8, 5)
    assert index.stats["bench"]["ignored_common_items"] >= 1
    batch = pa.table({"id": ["boiler", "copy"],
                      "text": [f"{shared} and more of our own words", "x " + items.texts[3]]})
    hits = dc.find_batch(batch, index, dc.Config()).to_pylist()
    assert [(h["id"], h["eval_item"]) for h in hits] == [("copy", "b3")]


def test_stage_on_ray_with_a_user_set_and_instruction_fields(tmp_path, ray_local, quiet_console):
    problems = evalsets.humaneval_problems()
    quiz = [{"qid": f"q{i}", "question": f"In the year {1900 + i} which river did the expedition "
             f"number {i} follow upstream for the first time, and why did they turn back?",
             "answer": f"The Orinoco, because of floods in month {i % 12}."} for i in range(30)]
    write_jsonl(tmp_path / "quiz.jsonl", quiz)
    rows = [{"instruction": f"Explain step {i} of sorting.", "output": f"Step {i}: compare pairs."}
            for i in range(40)]
    rows[3]["output"] = "Here it is:\n" + problems[2]["prompt"] + problems[2]["canonical_solution"]
    rows[9]["instruction"] = "Answer: " + quiz[17]["question"]
    rows[11]["output"] = IDIOMS
    for k in range(20, 32):  # 12 records over 3 batches of 10 share a loop header with HumanEval/40
        rows[k]["output"] = f"def pairs(l):\n    {LOOP}        if l[i] == l[j]:\n            yield {k}\n"
    write_jsonl(tmp_path / "data" / "sft.jsonl", rows)
    sources = ('[[sources]]\nname = "sft"\nkind = "jsonl"\npath = "data"\n'
               'text_field = "instruction"\n')
    stages = f"""
[stages.ingest]
[stages.decontaminate]
fields = ["text", "output"]     # "output" is read from the JSON meta column ingest writes
[[stages.decontaminate.evalsets]]
name = "humaneval"
[[stages.decontaminate.evalsets]]
name = "quiz"
path = "{tmp_path / 'quiz.jsonl'}"
fields = ["question", "answer"]
id_field = "qid"
"""
    path = make_config(tmp_path, sources, stages, '[datasets.clean]\nfrom = "decontaminate"\n',
                       batch_size=10)
    result = run_pipeline(load_config(path), console=quiet_console)
    rec = result.records[1]
    assert rec["rows_in"] == 40
    assert rec["rejected_by_reason"] == {"contaminated:humaneval": 1, "contaminated:quiz": 1}
    rejected = read_folder(result.run_dir / "rejected" / "02-decontaminate").to_pylist()
    assert sorted(r["eval_item"] for r in rejected) == ["HumanEval/2", "q17"]
    kept = read_folder(result.run_dir / "stages" / "02-decontaminate")
    assert "eval_item" not in kept.column_names and kept.num_rows == 38
    card = (result.datasets["clean"] / "README.md").read_text()
    assert "## Decontamination" in card and "| `quiz` | 30 |" in card
    humaneval = rec["info"]["evalsets"]["humaneval"]
    assert humaneval["ignored_frequent_in_input"] >= 1 and humaneval["ignored_mostly_numbers"] > 0
    assert (f"| {humaneval['ignored_frequent_in_input']:,} "
            f"| {humaneval['ignored_common_shape']:,} | 1 | 1 |") in card
    # the benchmark file is part of the stage's identity: editing it recomputes the stage
    write_jsonl(tmp_path / "quiz.jsonl", quiz[:17])
    again = run_pipeline(load_config(path), console=quiet_console)
    assert "decontaminate" in again.ran
    assert again.records[1]["rejected_by_reason"] == {"contaminated:humaneval": 1}
