from __future__ import annotations

import hashlib
import re

import pytest

from pipeline.config import load_config
from pipeline.run import run_pipeline
from stages import _instruct as si
from stages._rouge import RougePool
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer

SENTENCES = [
    "Give three tips for staying healthy.",
    "Give three tips for staying healthy and happy.",
    "What are three tips for staying healthy?",
    "Explain why the sky looks blue during the day.",
    "Rewrite the following sentence in the passive voice.",
    "Rewrite the sentence below using the passive voice, please!",
    "Classify the sentiment of this product review as positive, negative or neutral.",
    "Is the sentiment of the review positive or negative?",
    "Write a Python function that returns the largest of three numbers.",
    "Write a function in Python that finds the largest number in a list.",
    "Summarize the main argument of the paragraph in one sentence.",
    "Suggest a name for a bakery that sells only bread.",
    "",
    "!!! ???",
    "Café crème brûlée is a French dessert; describe its history (in 2 sentences).",
]


def reference_rouge_l(target: str, prediction: str) -> float:
    """ROUGE-L F as rouge_score computes it: tokens, LCS table, precision/recall/F."""
    def tokens(text):
        return [t for t in re.sub(r"[^a-z0-9]+", " ", text.lower()).split() if t]

    t, p = tokens(target), tokens(prediction)
    if not t or not p:
        return 0.0
    table = [[0] * (len(p) + 1) for _ in range(len(t) + 1)]
    for i in range(1, len(t) + 1):
        for j in range(1, len(p) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if t[i - 1] == p[j - 1] \
                else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    precision, recall = lcs / len(p), lcs / len(t)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def test_rouge_l_is_identical_to_the_reference_on_real_sentences():
    pool = RougePool(SENTENCES)
    scores = pool.scores(SENTENCES)
    for i, a in enumerate(SENTENCES):
        for j, b in enumerate(SENTENCES):
            assert scores[i, j] == reference_rouge_l(a, b), (a, b)
    assert scores[0, 1] > 0.7 and scores[0, 3] < 0.3


def test_screen_compares_with_the_pool_and_earlier_candidates_of_the_batch():
    pool = RougePool(SENTENCES[:4])
    verdicts = pool.screen(["Give three tips for staying healthy and fit.",
                            "Describe the water cycle to a ten year old child.",
                            "Describe the water cycle to a ten year old student."], 0.7)
    assert [v.keep for v in verdicts] == [False, True, False]
    assert pool.texts[verdicts[0].most_similar].startswith("Give three tips")
    assert pool.texts[verdicts[2].most_similar] == "Describe the water cycle to a ten year old child."
    assert len(pool) == 5


@pytest.mark.parametrize("text,reason", [
    ("Say hi", "too_short"),
    (" ".join(["word"] * 151), "too_long"),
    ("Draw a picture of your house with crayons.", "blacklisted_keyword"),
    ("Open the file and count the words in it.", "blacklisted_keyword"),
    ("Tell me how to go to the station from here.", "blacklisted_keyword"),
    ("Write a program that prints the prime numbers below 100.", "write_a_program"),
    ("- List five fruits that grow on trees.", "starts_with_punctuation"),
    ("Ékrivez une phrase sur le printemps, s'il vous plaît.", "non_ascii_start"),
    ("List five fruits that grow on trees in cold climates.", None),
])
def test_instruction_filters(text, reason):
    problem = si.instruction_problem(si.clean(text), 4, 150, si.BLACKLIST)
    assert (problem[0] if problem else None) == reason


def test_reply_parsing_and_instance_screening():
    reply = "Sure, here are new tasks:\n9. Name a river in Asia.\n10) Describe a sunset\n  over the sea.\n11. Plan a trip."
    assert [(si.clean(p), lead) for p, lead in si.split_numbered(reply)] == [
        ("Sure, here are new tasks:", True), ("Name a river in Asia.", False),
        ("Describe a sunset over the sea.", False), ("Plan a trip.", False)]
    assert si.parse_input_first("Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nOutput: 9") == \
        [("2 + 2", "4"), ("", "9")]
    assert si.parse_output_first("Class label: Yes\nInput: 81\nClass label: No\nInput: 52\n\n"
                                 "Task: Name a colour.\nClass label: Red") == [("81", "Yes"), ("52", "No")]
    assert si.parse_input_first("Input: 25 C\nOutput: 77 F\n\nTask: Find the longest word.") == \
        [("25 C", "77 F")]
    assert si.is_yes(" Yes, it is") and not si.is_yes("Nope") and not si.is_yes("")
    screened = si.screen_instances([("a", "b"), ("a", "b"), ("c", "c"), ("d", ""), ("e:", "f"),
                                    ("g", "h"), ("i", "j")], truncated=True, limit=1)
    assert [r for _, _, r in screened] == [None, "duplicate_instance", "same_input_output",
                                           "empty_output", "incomplete_instance",
                                           "over_instance_limit", "truncated_item"]
    conflict = si.screen_instances([("x", "1"), ("x", "2"), ("y", "3")], False, 5)
    assert {r for _, _, r in conflict} == {"conflicting_instances"}
    assert si.parse_alpaca(" Name a bird.\n2. Input:\n<noinput>\n2. Output:\nRobin\n###\n3. Instruction: x", 2) \
        == [("Name a bird.", "", "Robin"), None]


NOUNS = ["river", "violin", "volcano", "bicycle", "glacier", "library", "orchard", "comet",
         "harbour", "lantern", "meadow", "tunnel", "cactus", "museum", "compass", "reef"]
VERBS = ["Describe", "Compare", "Summarize", "Explain", "Invent", "Criticize", "Praise", "Outline"]


def bootstrap_reply(body: dict):
    """New tasks that depend only on the prompt: novel ones, near-copies and filtered ones."""
    prompt = body["messages"][-1]["content"]
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    pick = [(h >> (4 * k)) % len(NOUNS) for k in range(12)]
    items = [f"{VERBS[pick[0] % 8]} how a {NOUNS[pick[1]]} changes near a {NOUNS[pick[2]]} in winter.",
             f"Classify the {NOUNS[pick[3]]} as ancient or modern, given a short description.",
             f"{VERBS[pick[4] % 8]} a {NOUNS[pick[5]]} conflict story involving a {NOUNS[pick[6]]}.",
             "Give three practical tips for falling asleep more easily.",  # a seed task
             "Draw a map of your neighbourhood.", "Say hello", "Write a program to sort numbers.",
             f"Write a silent poem about a {NOUNS[pick[7]]} and a {NOUNS[pick[8]]} at dawn.",
             f"List what a {NOUNS[pick[9]]} and a {NOUNS[pick[10]]} have in common"]
    text = "Here are new tasks:\n" + "\n".join(f"{9 + i}. {item}" for i, item in enumerate(items))
    return text, ("length" if h % 3 == 0 else "stop")


def task_of(body: dict) -> str:
    return re.findall(r"Task: (.*)", body["messages"][-1]["content"])[-1]


def input_first_reply(body: dict) -> str:
    task = task_of(body)
    if "conflict" in task:
        return "Example 1\nInput: a quarrel\nOutput: sad ending\nExample 2\nInput: a quarrel\nOutput: happy ending"
    if "silent" in task:
        return "I cannot think of any examples."
    return "Example 1\nInput: a cold morning\nOutput: Ice forms.\nExample 2\nOutput: Birds leave."


ROUTES = [
    (r"Continue the numbered list from", bootstrap_reply),
    (r"Decide whether each task is a classification task",
     lambda body: "Yes" if task_of(body).startswith("Classify") else "No"),
    (r"For a classification task, first write",
     "Class label: Ancient\nInput: A clay pot from 3000 BC.\nClass label: Modern\nInput: A phone."),
    (r"Come up with examples for the task", input_first_reply),
    (r"come up with a set of \d+ diverse task instructions",
     "Name a bird that cannot fly.\n5. Input:\n<noinput>\n5. Output:\nThe penguin.\n###\n"
     "6. Instruction: Put the numbers in ascending order.\n6. Input:\n3, 1, 2\n6. Output:\n1, 2, 3"),
]

STAGES = """
[stages.ingest]
[stages.self_instruct]
target_count = {target}
requests_per_round = 3
max_rounds = 6
[stages.alpaca]
kind = "self_instruct"
input = "ingest"
mode = "alpaca"
prompt_tasks = 4
machine_tasks = 0
target_count = 2
"""


def test_bootstrap_filters_instances_and_resume(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "unused by self_instruct"}])
    sources = f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n'
    with ScriptedServer(routes=ROUTES) as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\n'

        def run(folder, target, **kw):
            path = make_config(folder, sources, STAGES.format(target=target),
                               '[datasets.instructions]\nfrom = "self_instruct"\n', extra=extra)
            before = srv.requests
            result = run_pipeline(load_config(path), console=quiet_console, **kw)
            return result, srv.requests - before

        (tmp_path / "a").mkdir()
        small, asked_small = run(tmp_path / "a", 4)
        resumed, asked_resumed = run(tmp_path / "a", 10)
        (tmp_path / "b").mkdir()
        fresh, asked_fresh = run(tmp_path / "b", 10)
        _, asked_again = run(tmp_path / "b", 10, force=["self_instruct", "alpaca"])

    assert asked_small + asked_resumed == asked_fresh  # earlier rounds came from the cache
    assert asked_again == 0
    rec = fresh.records[1]
    reasons = rec["rejected_by_reason"]
    for reason in ("rouge_too_similar", "blacklisted_keyword", "too_short", "write_a_program",
                   "truncated_item", "conflicting_instances", "no_instances", "lead_in"):
        assert reasons.get(reason, 0) > 0, (reason, reasons)
    kept = read_folder(fresh.run_dir / "stages" / "02-self_instruct")
    again = read_folder(resumed.run_dir / "stages" / "02-self_instruct")
    assert sorted(kept.column("id").to_pylist()) == sorted(again.column("id").to_pylist())
    rows = kept.to_pylist()
    assert rec["info"]["machine_tasks"] >= 10 and rec["rows_kept"] == len(rows)
    clf = [r for r in rows if r["is_classification"]]
    assert clf and all(r["output"] in ("Ancient", "Modern") for r in clf)  # output-first
    assert {r["output"] for r in rows if not r["is_classification"]} == {"Ice forms.", "Birds leave."}
    assert all(r["max_rouge"] <= 0.7 and r["model"] == "scripted" for r in rows)
    assert all(r["prompt"].startswith("self_instruct_tasks+self_instruct_is_clf+") for r in rows)
    assert {len(h) for r in rows for h in r["prompt_hash"].split("+")} == {12}
    alpaca = read_folder(fresh.run_dir / "stages" / "03-alpaca").to_pylist()
    assert {(r["instruction"], r["input"], r["output"]) for r in alpaca} >= {
        ("Name a bird that cannot fly.", "", "The penguin."), ("Put the numbers in ascending order.", "3, 1, 2", "1, 2, 3")}
    card = (fresh.datasets["instructions"] / "README.md").read_text()
    assert "## Self-Instruct" in card and "rouge_too_similar" in card


def test_builtin_seed_tasks_are_in_the_paper_format():
    tasks, text = si.load_seed_tasks("builtin")
    assert len(tasks) >= 100 and len({t["instruction"] for t in tasks}) == len(tasks)
    assert 0.15 < sum(t["is_classification"] for t in tasks) / len(tasks) < 0.4
    assert all(t["instances"] and t["instances"][0]["output"] for t in tasks)
    with pytest.raises(si.SeedError, match="not found"):
        si.load_seed_tasks("/no/such/seeds.jsonl")


@pytest.mark.teacher
@pytest.mark.timeout(600)
def test_embedded_teacher_bootstraps_new_tasks(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "unused"}])
    path = make_config(tmp_path, '[[sources]]\nname = "x"\nkind = "jsonl"\npath = "in"\n',
                       "[stages.ingest]\n[stages.self_instruct]\ntarget_count = 3\n"
                       "requests_per_round = 2\nmax_rounds = 4\nmax_tokens = 200\n"
                       "instance_max_tokens = 120\n")
    result = run_pipeline(load_config(path), console=quiet_console)
    rec = result.records[1]
    assert rec["info"]["machine_tasks"] >= 3
    assert rec["rows_kept"] >= 1, rec["rejected_by_reason"]
    kept = read_folder(result.run_dir / "stages" / "02-self_instruct").to_pylist()
    assert all(r["instruction"] and r["output"] for r in kept)


def test_alpaca_mode_defaults_are_alpaca_s_own_and_explicit_keys_win():
    from stages import self_instruct

    alpaca = self_instruct.Config(mode="alpaca")
    assert (alpaca.prompt_tasks, alpaca.machine_tasks, alpaca.temperature, alpaca.top_p,
            alpaca.max_tokens) == (3, 0, 1.0, 1.0, 3072)
    assert "music" in alpaca.blacklist and alpaca.stop == ["\n20", "20.", "20 ."]
    assert self_instruct.Config(mode="alpaca", prompt_tasks=4, temperature=0.5).prompt_tasks == 4
    plain = self_instruct.Config()
    assert plain.prompt_tasks == 8 and "music" not in plain.blacklist
    assert (plain.top_p, plain.presence_penalty, plain.stop) == (0.5, 2.0, ["\n16", "16.", "16 ."])


LEAD_INS = ["Sure! Here are some new tasks for you", "Of course, happy to help with this one",
            "Absolutely. Below you will find what you asked for"]
SIGN_OFFS = ["I hope these are useful for your project!", "Let me know if you would like more",
             "Feel free to ask for another batch."]


def chatty(reply):
    """A chat model's habit: a lead-in sentence before the answer, a sign-off after it."""
    def answer(body: dict) -> str:
        text = reply(body) if callable(reply) else reply
        text = text[0] if isinstance(text, tuple) else text
        h = int(hashlib.sha256(body["messages"][-1]["content"].encode()).hexdigest(), 16)
        return f"{LEAD_INS[h % 3]}\n\n{text}\n\n{SIGN_OFFS[h % 7 % 3]}"
    return answer


def markdown_tasks(body: dict) -> str:
    """New tasks numbered the ways chat models number them, restarting at the prompt's 9."""
    reply, _ = bootstrap_reply(body)
    items = reply.split("\n")[1:]
    styles = ["**{n}.** {t}", "{n}. **{t}**", "Task {n}: {t}", "{n}) {t}", "### {n}. {t}"]
    return "\n".join(styles[i % 5].format(n=9 + i, t=item.split(". ", 1)[1])
                     for i, item in enumerate(items))


CHATTY_ROUTES = [
    (r"Continue the numbered list from", chatty(markdown_tasks)),
    (r"Decide whether each task is a classification task",
     lambda body: "Yes" if task_of(body).startswith("Classify") else "No"),
    (r"For a classification task, first write",
     chatty("**Class label:** Ancient\nInput: A clay pot from 3000 BC.\n\n"
            "**Class label:** Modern\nInput: A phone.")),
    (r"Come up with examples for the task",
     chatty("**Example 1:**\n**Input:** a cold morning\n**Output:** Ice forms.\n\n"
            "Example 2:\nOutput: Birds leave.")),
    (r"come up with a set of \d+ diverse task instructions",
     chatty("###\n5. Instruction: Name a bird that cannot fly.\n5. Input:\n<noinput>\n5. Output:\n"
            "The penguin.\n###\n6. Instruction: Put the numbers in ascending order.\n6. Input:\n"
            "3, 1, 2\n6. Output:\n1, 2, 3")),
]


def test_a_chat_teacher_s_lead_ins_sign_offs_and_markdown_never_reach_kept_records(
        tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "unused by self_instruct"}])
    sources = f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n'
    with ScriptedServer(routes=CHATTY_ROUTES) as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\n'
        path = make_config(tmp_path, sources, STAGES.format(target=10), extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
    rows = (read_folder(result.run_dir / "stages" / "02-self_instruct").to_pylist()
            + read_folder(result.run_dir / "stages" / "03-alpaca").to_pylist())
    assert len(rows) > 20
    chatter = ["Sure!", "Here are some", "happy to help", "Absolutely", "you will find",
               "I hope", "useful for your", "Let me know", "would like more", "Feel free",
               "another batch", "**", "Task 1", "###"]
    leaked = [(r["instruction"], r["input"], r["output"]) for r in rows
              if any(c in (r[k] or "") for c in chatter for k in ("instruction", "input", "output"))]
    assert leaked == []
    tasks = {r["instruction"] for r in rows}
    assert any(t.startswith("Classify the") for t in tasks)  # a "Task 10:" item, unwrapped
    assert {r["output"] for r in rows if not r["is_classification"]} >= {"Ice forms.", "Birds leave.",
                                                                        "The penguin.", "1, 2, 3"}
    assert {r["output"] for r in rows if r["is_classification"]} == {"Ancient", "Modern"}
    assert result.records[1]["rejected_by_reason"]["lead_in"] > 0


def test_lead_ins_and_sign_offs_are_told_from_tasks_whatever_their_punctuation():
    restart = "Sure thing, here you go\n9. Name a river.\n10. Plan a trip.\nEnjoy these tasks"
    assert si.split_numbered(restart, 9) == [("Sure thing, here you go", True),
                                             ("Name a river.", False), ("Plan a trip.", False)]
    assert si.split_numbered("Here you go\n1. Name a river.", 9)[0] == ("Here you go", True)
    continued = " Name a river in Asia\n10. Plan a trip."  # a completion-style continuation of 9.
    assert si.split_numbered(continued, 9) == [("Name a river in Asia", False),
                                               ("Plan a trip.", False)]
    assert si.drop_sign_off("Ice forms.\n\nI hope this helps") == "Ice forms."
    assert si.drop_sign_off("First paragraph.\n\nThe second one ends the essay.") == \
        "First paragraph.\n\nThe second one ends the essay."
