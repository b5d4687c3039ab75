"""The embedded teacher for real: a portable build, a start proven by a completion, a watchdog
that restarts a killed server mid-stage, and JSON schemas that reach llama.cpp in a form it takes."""

from __future__ import annotations

import asyncio
import os
import platform
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from pydantic import BaseModel

from pipeline import ledger
from pipeline.config import load_config
from pipeline.llm import LLMClient, LLMConfig, Request
from pipeline.run import run_pipeline
from tests.conftest import make_config, write_jsonl

pytestmark = pytest.mark.teacher


class Score(BaseModel):
    score: int
    reason: str


def test_the_installed_build_has_no_amx_kernels():
    from pipeline.serve import build_info

    info = build_info()
    assert "AMX_INT8 = 0" in info
    if platform.machine() == "x86_64":
        assert "AVX2 = 1" in info  # the portable baseline


@pytest.mark.timeout(300)
def test_start_is_proven_by_a_completion_and_the_log_names_the_build(tmp_path):
    from pipeline.serve import Teacher

    with Teacher(tmp_path / "teacher.log") as base_url:
        assert base_url.startswith("http://127.0.0.1:")
    teacher_log = (tmp_path / "teacher.log").read_text()
    assert "[pipeline] llama.cpp system info: CPU : " in teacher_log
    assert "POST /v1/chat/completions" in teacher_log  # the start-up completion


def _servers() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True)
            if "llama_cpp.server" in " ".join(c.cmdline())]


@pytest.mark.timeout(600)
def test_a_teacher_killed_mid_stage_is_restarted_and_the_stage_completes(
        tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "data" / "a.jsonl",
                [{"text": f"def f{i}(x):\n    return x + {i}\n"} for i in range(16)])
    path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                       '[stages.ingest]\n[stages.score]\nkind = "tests.plugin_llm_stage"\n',
                       extra="[llm]\nmax_tokens = 32\nmax_concurrency = 2\n", batch_size=16)
    log_file = load_config(path).run_dir / "logs" / "teacher.log"
    killed: list[int] = []

    def kill_after_some_answers():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            text = log_file.read_text(errors="replace") if log_file.is_file() else ""
            if text.count("POST /v1/chat/completions") >= 5:  # the start-up one + 4 of the stage
                for server in _servers():
                    os.kill(server.pid, signal.SIGKILL)
                    killed.append(server.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_some_answers, daemon=True)
    killer.start()
    result = run_pipeline(load_config(path), console=quiet_console)
    killer.join(timeout=1)
    assert killed, "the teacher was never killed"
    record = ledger.read_success(result.run_dir / "stages" / "02-score")
    assert record["rows_in"] == 16 == record["rows_kept"] + record["rows_rejected"]
    assert not any(r.startswith("llm_connection") for r in record["rejected_by_reason"])
    assert record["rows_kept"] > 0
    teacher_log = log_file.read_text(errors="replace")
    assert "the server died (killed by SIGKILL); restart 1 of 3" in teacher_log
    assert any("restarted" in w for w in result.warnings)
    assert not _servers()  # stopped at the end of the run


@pytest.mark.timeout(300)
def test_json_schema_auto_reaches_a_llama_cpp_server_given_as_base_url(tmp_path):
    """As a user with their own llama-cpp-python server: the OpenAI form is refused (a 500
    naming response_format), the client falls back once to the llama.cpp form, replies parse."""
    from pipeline.serve import Teacher

    with Teacher(tmp_path / "teacher.log") as base_url:
        async def main():
            client = LLMClient(LLMConfig(max_tokens=48, temperature=0.0, max_concurrency=2),
                               base_url)  # not embedded: "auto" starts with the OpenAI form
            assert client.schema_style == "openai"
            prompts = [f"Rate from 0 to 5 how educational this code is: print({i})"
                       for i in range(4)]
            results = await client.many([Request([{"role": "user", "content": p}])
                                         for p in prompts], "test", Score)
            await client.close()
            return client, results

        client, results = asyncio.run(main())
    assert client.schema_style == "llama_cpp" and len(client.events) == 1
    assert sum(r.ok for r in results) >= 3, [r.error for r in results]
    assert all(isinstance(r.parsed.score, int) for r in results if r.ok)


def test_a_teacher_that_cannot_start_names_its_log(tmp_path):
    from pipeline.serve import Teacher, TeacherError

    bad_model = tmp_path / "broken.gguf"
    bad_model.write_bytes(b"not a gguf file")
    with pytest.raises(TeacherError, match="teacher.log"):
        Teacher(tmp_path / "teacher.log", model=Path(bad_model)).start(timeout_s=60)
    assert not _servers()


@pytest.mark.timeout(300)
def test_the_watchdog_gives_up_after_its_restarts_and_says_so(tmp_path):
    from pipeline.serve import Teacher

    teacher = Teacher(tmp_path / "teacher.log", restarts=2)
    with teacher:
        for _ in range(3):
            pids = [s.pid for s in _servers()]
            deadline = time.time() + 120
            while not pids and time.time() < deadline:  # a restart under way
                time.sleep(0.2)
                pids = [s.pid for s in _servers()]
            os.kill(pids[0], signal.SIGKILL)
            while teacher.process.pid == pids[0] and not teacher.gave_up:
                time.sleep(0.1)
        deadline = time.time() + 30
        while not teacher.gave_up and time.time() < deadline:
            time.sleep(0.1)
        assert teacher.gave_up and "died 3 times" in teacher.gave_up
        assert "teacher.log" in teacher.state() and "SIGKILL" in teacher.state()
        assert not _servers()
