from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.run import run_pipeline
from stages.orca import load_systems
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer


def show_system(body: dict) -> str:
    """Answers with the system message it received, so the test sees what was sent."""
    system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
    return f"[system: {system[:40]}] The answer is 42."


def test_system_messages_are_ours_and_parse():
    systems, template = load_systems("orca_system_messages")
    assert len(systems) == 16 and systems["none"] == ""
    assert "step by step" in systems["step_by_step"] and "five-year-old" in systems["five_year_old"]
    assert len(template.hash) == 12


STAGES = """
[stages.ingest]
[stages.orca]
instruction_column = "text"
generic_system = "You are a helpful assistant."
[stages.orca.weights]
none = 1
step_by_step = 3
{zeros}
[stages.orca_plain]
kind = "orca"
input = "ingest"
instruction_column = "text"
erase = false
truncated = "trim"
"""


def test_orca_answers_under_weighted_system_messages_with_erasure(tmp_path, ray_local, quiet_console):
    rows = [{"text": f"Why is the number {i} interesting?"} for i in range(40)]
    rows[3]["text"] = "Broken request [[400]]"
    rows[5]["text"] = "Long answer [[truncate:1]]"
    write_jsonl(tmp_path / "in" / "x.jsonl", rows)
    sources = f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n'
    with ScriptedServer(routes=[(r"Why is the number", show_system)]) as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
        zeros = "\n".join(f"{n} = 0" for n in load_systems("orca_system_messages")[0]
                           if n not in ("none", "step_by_step"))
        path = make_config(tmp_path, sources, STAGES.format(zeros=zeros),
                           '[datasets.instructions]\nfrom = "orca"\n'
                           'columns = ["text", "system", "output"]\n', extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
    orca, plain = result.records[1], result.records[2]
    assert orca["rows_kept"] == 38
    assert orca["rejected_by_reason"] == {"llm_error:400": 1, "llm_truncated": 1}
    assert plain["rejected_by_reason"] == {"llm_error:400": 1}  # the cut answer was trimmed
    kept = read_folder(result.run_dir / "stages" / "02-orca").to_pylist()
    ids = {r["teacher_system_id"] for r in kept}
    assert ids == {"none", "step_by_step"}
    share = sum(r["teacher_system_id"] == "step_by_step" for r in kept) / len(kept)
    assert 0.55 < share < 0.95
    for r in kept:
        assert r["system"] == "You are a helpful assistant."
        assert r["output"].startswith(f"[system: {r['teacher_system'][:40]}]")
        assert r["model"] == "scripted" and r["prompt"] == "orca_system_messages"
    plain_rows = read_folder(result.run_dir / "stages" / "03-orca_plain").to_pylist()
    assert all(r["system"] == r["teacher_system"] for r in plain_rows)
    assert len({r["teacher_system_id"] for r in plain_rows}) > 8  # all 16 weigh 1 by default
    card = (result.datasets["instructions"] / "README.md").read_text()
    assert "Orca explanation tuning" in card and "prompt erasure on" in card


def test_unknown_weight_names_are_config_errors(tmp_path):
    write_jsonl(tmp_path / "in" / "x.jsonl", [{"text": "q"}])
    path = make_config(tmp_path, f'[[sources]]\nname = "x"\nkind = "jsonl"\npath = "{tmp_path / "in"}"\n',
                       "[stages.ingest]\n[stages.orca]\nweights = { socratic = 2 }\n")
    with pytest.raises(ConfigError, match="unknown system messages"):
        load_config(path)
