from __future__ import annotations

import hashlib
import random
import re

from pipeline.config import load_config
from pipeline.run import run_pipeline
from stages.exercises import parse
from tests.conftest import make_config, read_folder, sandbox_mode, write_jsonl
from tests.llm_server import ScriptedServer

WORDS = ("river stone market garden lantern engine orbit candle meadow signal harbour pencil "
         "valley mirror thread basket compass ladder forest window").split()
SHARED = " ".join(random.Random(7).choices(WORDS, k=300))
NEAR = " ".join(random.Random(8).choices(WORDS, k=300))


def section(body: dict):
    """Textbook sections by style: unique, exact copies, near copies, or too short."""
    prompt = body["messages"][-1]["content"]
    if "hands-on tutorial" in prompt:
        return "Too short."
    if "blog post" in prompt:
        return "A Blog Post\n\n" + SHARED
    if "wikiHow" in prompt:
        return f"How To\n\n{NEAR} seed{body['seed']}"
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    return "A Section\n\n" + " ".join(random.Random(h).choices(WORDS, k=300))


GOOD = '''```python
def add(a: int, b: int) -> int:
    """Return the sum of a and b."""
    return a + b

assert add(2, 3) == 5
assert add(-1, 1) == 0
```'''
EXERCISES = {
    "pass": GOOD,
    "fail": GOOD.replace("return a + b", "return a - b"),
    "loop": GOOD.replace("return a + b", "while True:\n        pass"),
    "socket": GOOD.replace("return a + b", "import socket\n    socket.create_connection(('127.0.0.1', 80))\n    return a + b"),
    "fork": GOOD.replace("return a + b", "import os\n    os.fork()\n    return a + b"),
    "syntax": GOOD.replace("return a + b", "return a +"),
    "nodoc": GOOD.replace('    """Return the sum of a and b."""\n', ""),
    "fewasserts": GOOD.replace("assert add(-1, 1) == 0\n", ""),
    "prose": "I would write a function that adds numbers.",
}


def exercise(body: dict) -> str:
    topic = re.search(r"The subject: (\w+)\.", body["messages"][-1]["content"]).group(1)
    return EXERCISES[topic]


ROUTES = [(r"The readers are", section), (r"Write one Python exercise", exercise)]

STAGES = """
[stages.ingest]
[stages.textbooks]
count = 16
min_chars = 500
extract_chars = 200
[stages.textbooks_exact]
kind = "dedup_exact"
input = "textbooks"
[stages.textbooks_near]
kind = "dedup_minhash"
partitions = 1
[stages.exercises]
input = "ingest"
topics = {topics}
levels = ["beginner"]
count = {count}
timeout_s = 1.0
sandbox = "{sandbox}"
"""


def test_exercise_parsing_splits_signature_body_and_tests():
    parts, reason, _ = parse(GOOD, 2)
    assert reason is None and parts["entry_point"] == "add"
    assert parts["exercise"] == 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b."""'
    assert parts["completion"] == "    return a + b"
    assert parts["tests"] == "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    assert "assert" not in parts["text"] and parts["text"].startswith("def add")


def test_textbooks_dedup_and_verified_exercises(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "in" / "x.jsonl",
                [{"text": f"Document {i} about {w} and {WORDS[(i + 3) % 20]}."}
                 for i, w in enumerate(WORDS[:12])])
    sources = f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n'
    topics = "[" + ", ".join(f'"{t}"' for t in EXERCISES) + "]"
    with ScriptedServer(routes=ROUTES) as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\n'
        path = make_config(tmp_path, sources, STAGES.format(topics=topics, count=len(EXERCISES), sandbox=sandbox_mode()),
                           '[datasets.textbooks]\nfrom = "textbooks_near"\n'
                           '[datasets.exercises]\nfrom = "exercises"\n', extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
    books, exact, near, exercises = result.records[1:5]
    assert books["rows_in"] == 16 and books["rejected_by_reason"] == {"too_short": 4}
    assert exact["rejected_by_reason"] == {"exact_duplicate": 3}
    assert near["rejected_by_reason"] == {"near_duplicate": 3} and near["rows_kept"] == 6
    kept = read_folder(result.run_dir / "stages" / "02-textbooks").to_pylist()
    assert {(r["audience"], r["style"]) for r in kept} >= {("young children", "textbook"),
                                                         ("professionals", "blog")}
    assert all(r["seed_doc"] and r["prompt"] == "textbook+subject_extract" for r in kept)
    assert all(r["n_chars"] == len(r["text"]) and len(r["content_hash"]) == 32 for r in kept)
    assert exercises["rows_kept"] == 1
    assert exercises["rejected_by_reason"] == {
        "assertion_failed": 1, "timeout": 1, "network_blocked": 1, "process_blocked": 1,
        "syntax_error": 1, "no_docstring": 1, "too_few_assertions": 1, "no_code": 1}
    passed = read_folder(result.run_dir / "stages" / "05-exercises").to_pylist()[0]
    assert passed["entry_point"] == "add" and passed["topic"] == "pass" and passed["run_s"] > 0
    assert passed["prompt"] == "exercise+subject_topic"
    cards = {name: (folder / "README.md").read_text() for name, folder in result.datasets.items()}
    assert "Synthetic textbooks" in cards["textbooks"] and "Verified exercises" in cards["exercises"]
