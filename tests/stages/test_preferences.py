from __future__ import annotations

import json
import re
import threading
from collections import Counter

from pipeline.config import load_config
from pipeline.run import run_pipeline
from stages.preferences import decide
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer

QUALITY = {"terse": 2, "plain": 5, "thorough": 9}


ASKED: Counter = Counter()
LOCK = threading.Lock()


def answer(body: dict) -> str:
    """The k samples of a prompt are a terse, a plain and a thorough answer, in the order asked;
    prompts steer the failure cases."""
    prompt = body["messages"][-1]["content"]
    if "samesame" in prompt:
        return "The same answer every time."
    with LOCK:
        ASKED[prompt] += 1
        n = ASKED[prompt]
    return ["terse", "plain", "thorough"][(n - 1) % 3] + f" answer to: {prompt[:30]}"


def judge(body: dict) -> str:
    prompt = body["messages"][0]["content"]
    response = re.search(r"Answer:\n<<<\n(.*?)\n>>>", prompt, re.S).group(1)
    if "tie please" in prompt:
        return '{"rationale": "all alike", "score": 6}'
    if "judge breaks" in prompt:
        return "I refuse to grade this."
    return json.dumps({"rationale": "ok", "score": QUALITY[response.split()[0]]})


ROUTES = [(r"You are grading one answer", judge), (r".", answer)]


def test_decide_picks_best_and_worst_and_flags_ties():
    values, reason, _ = decide(["a", "b", "c"], [4, 9, 2], [], 1)
    assert reason is None and values == {"chosen": "b", "rejected": "c", "chosen_score": 9,
                                         "rejected_score": 2}
    assert decide(["a", "b"], [5, 5], [], 1)[1] == "tie"
    assert decide(["a", "b"], [5, 6], [], 2)[1] == "tie"
    assert decide(["a", "b"], [5, None], ["llm_invalid_json"], 1)[1] == "judge_failed"


def test_decide_random_rejected_is_one_of_the_others_fixed_by_the_seed():
    texts, scores = ["a", "b", "c", "d"], [4, 9, 2, 6]
    picks = {decide(texts, scores, [], 1, "random", seed)[0]["rejected"] for seed in range(40)}
    assert picks == {"a", "c", "d"}  # never the chosen one, every other one for some seed
    assert decide(texts, scores, [], 1, "random", 7) == decide(texts, scores, [], 1, "random", 7)


def test_preference_pairs_through_the_llm_layer(tmp_path, ray_local, quiet_console):
    rows = [{"text": f"Explain topic number {i}."} for i in range(8)]
    rows[1]["text"] = "Explain ties: tie please"
    rows[2]["text"] = "Explain this: samesame"
    rows[3]["text"] = "Explain failure [[500]]"
    rows[4]["text"] = "Explain why the judge breaks"
    write_jsonl(tmp_path / "in" / "x.jsonl", rows)
    sources = f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n'
    stages = ('[stages.ingest]\n[stages.preferences]\nprompt_columns = ["text"]\nk = 3\n'
              'temperature = 0.9\n')
    datasets = ('[datasets.preferences]\nfrom = "preferences"\n'
                'columns = ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"]\n')
    with ScriptedServer(routes=ROUTES) as srv:
        extra = (f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
                 'max_retries = 1\nrepair_attempts = 1\n')
        path = make_config(tmp_path, sources, stages, datasets, extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
        before = srv.requests
        run_pipeline(load_config(path), force=["preferences"], console=quiet_console)
        repeated = srv.requests - before
    rec = result.records[1]
    assert rec["rejected_by_reason"] == {"tie": 1, "identical_completions": 1,
                                         "generation_failed": 1, "judge_failed": 1}
    kept = read_folder(result.run_dir / "stages" / "02-preferences").to_pylist()
    assert len(kept) == 4
    for r in kept:
        assert r["chosen"].startswith("thorough") and r["rejected"].startswith("terse")
        assert (r["chosen_score"], r["rejected_score"]) == (9, 2) and sorted(r["scores"]) == [2, 5, 9]
        assert r["prompt"] == r["text"] and r["judge_model"] == "scripted" and r["completions"] == 3
        assert r["judge_prompt"] == "preference_judge" and len(r["judge_prompt_hash"]) == 12
    rejected = read_folder(result.run_dir / "rejected" / "02-preferences").to_pylist()
    failed = next(r for r in rejected if r["drop_reason"] == "generation_failed")
    assert "llm_error:500" in failed["drop_detail"]
    assert repeated == 3 * 2  # only the 3 failed samples are asked again (2 tries each)
    card = (result.datasets["preferences"] / "README.md").read_text()
    assert "Preference pairs" in card and "preference_judge" in card
