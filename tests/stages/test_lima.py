"""LIMA selection: offline embeddings, the greedy and k-center filters, rules, and the stage
with its judge through the scripted server."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.config import load_config
from pipeline.llm import Result
from pipeline.run import run_pipeline
from stages import _diversity as div
from stages.lima import Config, judged, read_pairs, rule_reasons
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer

TOPICS = ["reverse a linked list in Python", "the causes of the French Revolution",
          "how photosynthesis stores energy", "a haiku about autumn rain",
          "compound interest on a savings account", "the rules of chess castling",
          "why the sky looks blue", "a SQL query for the top five customers by revenue",
          "the difference between TCP and UDP", "how vaccines train the immune system",
          "a packing list for a winter hike", "the plot of Hamlet in three sentences",
          "solving a quadratic equation", "the history of the printing press",
          "binary search and its running time", "how to brew pour-over coffee"]


def test_embedding_model_loads_offline(monkeypatch):
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    div._model.cache_clear()
    vectors = div.embed(["How do I sort a list in Python?", "How can I sort a Python list?",
                         "The French Revolution began in 1789."])
    assert attempts == []
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.8 > 0.3 > sims[0, 2]


def plain_greedy(vectors, cats, caps, target, threshold):
    """The filter as written in Deita: one candidate at a time against every selected one."""
    chosen, status, counts = [], [], {}
    for i, v in enumerate(vectors):
        if len(chosen) >= target:
            status.append(div.NOT_REACHED)
        elif caps[cats[i]] >= 0 and counts.get(cats[i], 0) >= caps[cats[i]]:
            status.append(div.QUOTA_FULL)
        elif chosen and max(float(v @ vectors[j]) for j in chosen) >= threshold:
            status.append(div.TOO_SIMILAR)
        else:
            chosen.append(i)
            counts[cats[i]] = counts.get(cats[i], 0) + 1
            status.append(div.SELECTED)
    return np.array(status)


def clustered(n: int, centers: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(centers, 384))
    points = base[rng.integers(0, centers, n)] + noise * rng.normal(size=(n, 384))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_greedy_blocks_and_chunks_equal_the_plain_loop_and_quotas_hold():
    vectors = clustered(1500, 300, 0.25)
    cats = np.random.default_rng(1).integers(0, 3, len(vectors))
    caps = np.array([40, -1, -1])
    expected = plain_greedy(vectors, cats, caps, 200, 0.9)
    greedy = div.Greedy(200, 0.9, caps, block=64)
    parts = [greedy.add(vectors[s:s + 500], cats[s:s + 500]) for s in range(0, len(vectors), 500)]
    status, partner, sim, rank = (np.concatenate(arrays) for arrays in zip(*parts))
    assert (status == expected).all()
    similar = np.flatnonzero(status == div.TOO_SIMILAR)
    assert (status[partner[similar]] == div.SELECTED).all() and (sim[similar] >= 0.9).all()
    assert np.allclose(sim[similar], (vectors[similar] * vectors[partner[similar]]).sum(axis=1), atol=1e-4)
    assert (rank[partner[similar]] < np.searchsorted(np.flatnonzero(status == 0), similar)).all()
    assert sorted(rank[status == div.SELECTED]) == list(range(200))
    assert (status == div.SELECTED).sum() == 200
    assert ((status == div.SELECTED) & (cats == 0)).sum() == 40
    assert {div.TOO_SIMILAR, div.QUOTA_FULL, div.NOT_REACHED} <= set(status.tolist())
    chosen = vectors[status == div.SELECTED]
    sims = chosen @ chosen.T
    assert sims[~np.eye(len(chosen), dtype=bool)].max() < 0.9


def test_kcenter_spreads_over_clusters_and_stops_at_near_copies():
    vectors = clustered(400, 8, 0.05)
    cats = np.zeros(len(vectors), dtype=np.int64)
    status, nearest, sim, rank = div.kcenter(vectors, cats, np.array([-1]), 50, 0.9)
    assert (status == div.SELECTED).sum() == 8  # one per cluster, then only near-copies remain
    assert (sim[status == div.TOO_SIMILAR] >= 0.9).all() and (status[nearest] == div.SELECTED).all()
    assert rank[0] == 0 and sorted(rank[status == div.SELECTED]) == list(range(8))
    status, _, _, _ = div.kcenter(vectors, cats, np.array([3]), 50, 0.9)
    assert (status == div.SELECTED).sum() == 3 and (status == div.QUOTA_FULL).sum() == 397


def test_rules_name_the_first_failure():
    frame = pl.DataFrame({
        "instruction": ["Explain X.", "", "Explain Y.", "Explain Z.", "Write code.", "Tell me.",
                        "List two."],
        "response": ["X is a well known thing, explained here.", "An answer without a question.",
                     "As an AI language model, I cannot have opinions about this topic.",
                     "Ok.", "```python\nprint('hi')\n", "It depends on the weather and",
                     "First, second."]})
    got = rule_reasons(frame, Config()).to_dicts()
    assert [r["drop_reason"] for r in got] == [None, "rule:empty", "rule:refusal", "rule:too_short",
                                               "rule:unfinished", "rule:unfinished", "rule:too_short"]
    assert "As an AI" in got[2]["drop_detail"]


def fixture_rows() -> list[dict]:
    rows = []
    for i, topic in enumerate(TOPICS):
        category = "code" if i % 3 == 0 else ("science" if i % 3 == 1 else "writing")
        rows.append({"instruction": f"Write a short explanation of {topic}.",
                     "output": f"Here is a clear explanation of {topic}, step by step, with an "
                               f"example that makes the idea concrete.", "category": category})
    # records the judge or the rules reject, and near-copies of the first two
    rows[0]["instruction"] += ' [[json:{"reason": "clear and correct", "score": 5}]]'
    rows[1]["instruction"] += ' [[json:{"reason": "clear and correct", "score": 5}]]'
    rows[2]["instruction"] += ' [[json:{"reason": "vague", "score": 2}]]'
    rows[3]["instruction"] += " [[badjson]]"
    rows[4]["instruction"] += " [[400]]"
    rows[5]["output"] = "I'm sorry, but I cannot help with that request."
    rows[6]["output"] = "The answer is that the light scatters because"
    rows.append({**rows[0], "instruction": "Please " + rows[0]["instruction"].lower()})
    rows.append({**rows[1], "instruction": rows[1]["instruction"].replace("short", "brief")})
    return rows


def test_lima_stage_with_judge_quotas_and_near_copies(tmp_path, ray_local, quiet_console):
    rows = fixture_rows()
    write_jsonl(tmp_path / "data" / "sft.jsonl", rows)
    stages = """
[stages.ingest]
[stages.lima]
target = 10
instruction_column = "text"     # the JSONL's instruction became ingest's text; the rest is in meta
category_column = "category"
quotas = { writing = 2 }
min_judge_score = 3
"""
    with ScriptedServer() as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
        path = make_config(tmp_path, '[[sources]]\nname = "sft"\nkind = "jsonl"\npath = "data"\n'
                           'text_field = "instruction"\n', stages,
                           '[datasets.sft]\nfrom = "lima"\n', extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
        rec = result.records[1]
        kept = read_folder(result.run_dir / "stages" / "02-lima").to_pylist()
        rejected = read_folder(result.run_dir / "rejected" / "02-lima").to_pylist()
        assert rec["rows_in"] == 18 and len(kept) == 10
        reasons = {r["drop_reason"].split(":")[0] for r in rejected}
        assert reasons >= {"rule", "below_quality", "llm_invalid_json", "llm_error",
                           "too_similar_to", "quota_full"}
        by_reason = rec["rejected_by_reason"]
        assert by_reason["rule:refusal"] == 1 and by_reason["rule:unfinished"] == 1
        assert by_reason["llm_error:400"] == 1 and by_reason["llm_invalid_json"] == 1
        ids = {json.loads(r["meta"])["line"]: r["id"] for r in kept + rejected}
        kept_ids = {r["id"] for r in kept}
        similar = {r["id"]: r["drop_reason"] for r in rejected
                   if r["drop_reason"].startswith("too_similar_to:")}
        for pair in ((ids[1], ids[17]), (ids[2], ids[18])):  # an original and its near-copy
            (winner,) = kept_ids & set(pair)
            (loser,) = set(pair) - {winner}
            assert similar[loser] == f"too_similar_to:{winner}"
        assert len(similar) == 2
        categories = [json.loads(r["meta"])["category"] for r in kept]
        assert categories.count("writing") == 2  # the quota
        assert sorted(r["selection_rank"] for r in kept) == list(range(10))
        assert {r["judge_score"] for r in kept} <= {3, 5} and kept[0]["judge_reason"]
        info = rec["info"]
        assert info["funnel"]["selected"] == 10 and info["message"] is None
        card = (result.datasets["sft"] / "README.md").read_text()
        assert "## LIMA selection" in card and "| writing | 5 | 2 |" in card
        plots = result.datasets["sft"] / "plots"
        assert (plots / "selection_pca.png").is_file() and (plots / "selection_scores.png").is_file()
        # a rerun asks nothing new; a target out of reach keeps every candidate, with a message;
        # embedding in Ray tasks (parallel_min = 1) gives the same vectors, so the same selection
        before = srv.requests
        again = run_pipeline(load_config(path, ["stages.lima.target=50", "stages.lima.parallel_min=1"]),
                             console=quiet_console)
        assert srv.requests - before == 1  # the failed 400 call only
    rec = again.records[1]
    assert rec["rows_kept"] == 10 and "selected 10 of the 50 records asked for" in rec["info"]["message"]
    assert {r["id"] for r in read_folder(again.run_dir / "stages" / "02-lima").to_pylist()} == kept_ids


def test_chat_messages_and_input_columns():
    table = pa.table({
        "id": ["a", "b"],
        "messages": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                      {"role": "assistant", "content": "Hello."}],
                     [{"role": "user", "content": "Only a question"}]]})
    frame = read_pairs(table, Config())
    assert frame["instruction"].to_list() == ["Hi?", "Only a question"]
    assert frame["response"].to_list() == ["Hello.", ""]
    table = pa.table({"id": ["a", "b"], "instruction": ["Sum these.", "Say hi."],
                      "input": ["1, 2", None], "output": ["3", "Hi"]})
    assert read_pairs(table, Config())["instruction"].to_list() == ["Sum these.\n\n1, 2", "Say hi."]


class FakeLLM:
    """Scores each pair by the digit at the end of its instruction."""

    def __init__(self):
        self.asked = 0

    def chat(self, requests, model):
        self.asked += len(requests)
        out = []
        for request in requests:
            text = request.messages[0]["content"].split("Response:")[0].strip(" <>\n")
            out.append(Result(texts=["{}"], parsed=model(reason="r", score=int(text[-1]))))
        return out


def test_judge_limit_spends_the_budget_on_the_longest_candidates():
    frame = pl.DataFrame({"id": [f"r{i}" for i in range(6)],
                          "instruction": [f"Task {i}" for i in [5, 4, 2, 5, 1, 3]],
                          "response": ["x" * (20 + 10 * i) for i in range(6)]})
    frame = frame.with_columns(score=pl.lit(None, pl.Float64), _length=pl.col("response").str.len_chars(),
                               _key=pl.col("id").hash(), drop_reason=pl.lit(None, pl.String),
                               drop_detail=pl.lit(None, pl.String))
    ctx = SimpleNamespace(llm=FakeLLM())
    out = judged(ctx, frame, Config(judge_limit=4, min_judge_score=3))
    assert ctx.llm.asked == 4
    assert out["judge_score"].to_list() == [None, None, 2, 5, 1, 3]
    assert out["drop_reason"].to_list() == ["below_quality"] * 3 + [None, "below_quality", None]
    assert out["drop_detail"][0].startswith("not judged")


def test_no_teacher_is_needed_without_the_judge(tmp_path):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "x"}])
    sources = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n'
    for judge, needed in (("true", True), ("false", False)):
        cfg = load_config(make_config(tmp_path, sources, f"[stages.ingest]\n[stages.lima]\njudge = {judge}\n"))
        assert cfg.needs_llm() is needed


def test_default_threshold_rejects_a_task_asked_twice_and_keeps_related_tasks():
    """The MiniLM threshold (calibrated in bench/selection.py): a paraphrased task is too
    similar to its original; a different task on the same topic is not."""
    originals = [
        "How do I brew green tea?\n\nHeat water to about 80 °C, steep one teaspoon of leaves for "
        "two to three minutes, then strain.",
        "Write a Python function that returns the largest number in a list.\n\n"
        "def largest(numbers):\n    return max(numbers)",
        "Explain what inflation is.\n\nInflation is a general rise in prices over time, which "
        "means each unit of money buys less than before."]
    paraphrases = [
        "What is the right way to make green tea?\n\nUse water at around 80 °C, let a teaspoon "
        "of tea steep for 2-3 minutes and pour it through a strainer.",
        "Implement a Python function to find the maximum value in a list.\n\n"
        "def find_max(values):\n    return max(values)",
        "What does inflation mean in economics?\n\nIt is the ongoing increase of the overall "
        "price level, so the same amount of money purchases fewer goods."]
    related = [
        "How do I make cold brew coffee?\n\nStir coarse ground coffee into cold water, leave it in "
        "the fridge for 12 to 18 hours, then filter it.",
        "Write a Python function that removes duplicates from a list.\n\n"
        "def unique(items):\n    return list(dict.fromkeys(items))",
        "Explain what a recession is.\n\nA recession is a significant decline in economic "
        "activity lasting more than a few months, visible in output, jobs and income."]
    vectors = div.embed(originals + related + paraphrases)
    greedy = div.Greedy(9, Config().similarity_threshold, np.array([-1]))
    status, partner, sim, _ = greedy.add(vectors, np.zeros(9, dtype=np.int64))
    assert (status[:6] == div.SELECTED).all()
    assert (status[6:] == div.TOO_SIMILAR).all() and partner[6:].tolist() == [0, 1, 2]
