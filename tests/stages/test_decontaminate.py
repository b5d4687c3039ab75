"""Decontamination: planted HumanEval problems, code idioms, user sets, the rolling hash."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import evalsets
from pipeline.config import load_config
from pipeline.evalsets import EvalSet, EvalSpec
from pipeline.run import run_pipeline
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


def hashes(text: str, n: int, min_mean: float = 0.0) -> list[int]:
    data, offsets = dc.arrow_buffers(dc.prepare(pa.array([text])))
    return dc.gram_hashes(data, offsets, n, min_mean)[0].tolist()


def test_rolling_hash_equals_each_window_hashed_alone():
    words = "Alpha, beta_gamma (delta) 42 x.y zeta eta theta".replace(",", " ,").split()
    text = " ".join(words)
    tokens = ["alpha", "beta", "gamma", "delta", "42", "x", "y", "zeta", "eta", "theta"]
    got = hashes(text, 4)
    assert len(got) == len(tokens) - 3
    assert got == [hashes(" ".join(tokens[i:i + 4]), 4)[0] for i in range(len(got))]
    assert hashes("Ünïcode—Text «quoted» ok", 3) == hashes("ünïcode text quoted ok", 3)
    assert len(hashes("two words", 13)) == 1 and hashes("", 13) == []
    assert len(hashes("0 1 2 3 4 5 6 7 8 9 a b c d e", 13, 3.0)) == 0  # no evidence
    assert len(hashes("zero one two three four five six seven eight nine ten", 3, 3.0)) == 9


def test_humaneval_problems_load_from_the_installed_package():
    problems = evalsets.humaneval_problems()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    assert set(problems[0]) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    with pytest.raises(evalsets.EvalSetError, match="no built-in evaluation set"):
        evalsets.load(EvalSpec(name="mbpp"))


def test_planted_problem_caught_idioms_ignored():
    problems = evalsets.humaneval_problems()
    index = dc.build_index([evalsets.load(EvalSpec(name="humaneval"))], 13, 5)
    planted = ("Notes from a study group.\n\n" + problems[12]["prompt"].replace("    ", "\t")
               + problems[12]["canonical_solution"] + "\nWe then discussed other topics at length.")
    batch = pa.table({"id": ["planted", "idioms", "solution", "one_liner", "loops"],
                      "text": [planted, IDIOMS, problems[0]["canonical_solution"],
                               "def size(s):\n" + problems[23]["canonical_solution"],
                               problems[40]["canonical_solution"]]})
    hits = dc.find_batch(batch, index, dc.Config()).to_pylist()
    # a one-line body, and nested `for i in range(len(l))` loops of one-letter names, are no evidence
    assert [h["id"] for h in hits] == ["planted", "solution"]
    assert hits[0]["drop_reason"] == "contaminated:humaneval"
    assert hits[0]["eval_item"] == "HumanEval/12"
    assert hits[0]["drop_detail"].startswith("HumanEval/12: 'from typing import List")


def test_ngrams_common_to_many_items_are_ignored():
    shared = "licensed under the apache license version two point zero see the notice file"
    items = EvalSet("bench", [f"b{i}" for i in range(6)],
                    [f"{shared} item {i} " + f"unique{i} " * 14 for i in range(6)], "fp")
    index = dc.build_index([items], 13, 5)
    assert index.stats["bench"]["common_ngrams_ignored"] >= 1
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
    path = make_config(tmp_path, sources, stages, '[datasets.clean]\nfrom = "decontaminate"\n')
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
    # the benchmark file is part of the stage's identity: editing it recomputes the stage
    write_jsonl(tmp_path / "quiz.jsonl", quiz[:17])
    again = run_pipeline(load_config(path), console=quiet_console)
    assert "decontaminate" in again.ran
    assert again.records[1]["rejected_by_reason"] == {"contaminated:humaneval": 1}
