"""The LLM client against a scripted OpenAI-compatible server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from pipeline.llm import LLMClient, LLMConfig, Request, ResponseCache, extract_json
from tests.llm_server import ScriptedServer


class Score(BaseModel):
    score: int
    reason: str


def ask(prompt: str) -> Request:
    return Request([{"role": "system", "content": "You are terse."}, {"role": "user", "content": prompt}])


def run(server: ScriptedServer, requests: list[Request], model=None, cache=None, **overrides):
    config = LLMConfig(**{"model": "scripted", "backoff_s": 0.01, "max_backoff_s": 0.05,
                          "timeout_s": 5, **overrides})

    async def main():
        client = LLMClient(config, server.base_url, cache)
        results = await client.many(requests, stage="test", model=model)
        await client.close()
        return results, client.usage_report("test")[0]

    return asyncio.run(main())


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def test_answers_and_counts_usage(server):
    (result,), usage = run(server, [ask("hello there")])
    assert result.ok and result.text == "echo: hello there" and result.finish_reasons == ["stop"]
    assert result.prompt_tokens == 5 and result.completion_tokens == 3
    assert usage["requests"] == 1 and usage["prompt_tokens"] == 5 and usage["completion_tokens"] == 3


def test_retries_429_honouring_retry_after_and_5xx(server):
    results, usage = run(server, [ask("a [[429:2]]"), ask("b [[500:3]]"), ask("c [[badbody:1]]")])
    assert all(r.ok for r in results)
    assert server.seen["a [[429:2]]"] == 3 and server.seen["b [[500:3]]"] == 4
    assert server.seen["c [[badbody:1]]"] == 2
    assert usage["retries"] == 6 and usage["failures"] == 0


def test_a_400_is_the_record_s_failure_and_is_not_retried(server):
    results, usage = run(server, [ask("x [[400]]"), ask("y")])
    assert [r.error for r in results] == ["llm_error:400", None]
    assert "scripted 400" in results[0].detail
    assert server.requests == 2 and usage["failures"] == 1


def test_exhausted_retries_and_timeouts_become_errors_not_none(server):
    (failed,), usage = run(server, [ask("[[500]]")], max_retries=2)
    assert failed.error == "llm_error:500" and failed.text is None and "3 attempts" in failed.detail
    assert server.requests == 3
    started = time.time()
    (hung,), _ = run(server, [ask("[[hang]]")], max_retries=1, timeout_s=0.3)
    assert hung.error == "llm_timeout" and time.time() - started < 10


def test_json_output_is_validated_and_repaired(server):
    (fixed, broken, truncated, good), usage = run(
        server, [ask("rate [[badjson:1]]"), ask("rate [[badjson]]"), ask("rate [[truncate]]"),
                 ask('rate [[json:{"score": 5, "reason": "great"}]]')], model=Score, repair_attempts=2)
    assert fixed.ok and fixed.parsed == Score(score=3, reason="fine")
    assert server.seen["rate [[badjson:1]]"] == 2
    assert broken.error == "llm_invalid_json" and server.seen["rate [[badjson]]"] == 3
    assert truncated.error == "llm_truncated" and truncated.parsed is None
    assert good.parsed.score == 5


def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('Sure!\n```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert extract_json('The answer: {"a": 1} hope it helps') == {"a": 1}
    assert extract_json('{"reason": "line one\nline two", "score": 3}') == {
        "reason": "line one\nline two", "score": 3}  # a raw newline inside a string, as small models write
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_cache_makes_a_rerun_free_and_is_shared(server, tmp_path):
    path = tmp_path / "cache.sqlite"
    prompts = [ask(f"prompt {i}") for i in range(20)] + [ask("[[400]]")]
    first, usage = run(server, prompts, cache=path)
    assert server.requests == 21 and usage["cache_hits"] == 0
    again, usage = run(server, prompts, cache=path)
    assert server.requests == 21 + 1  # only the failed call is asked again
    assert usage["cache_hits"] == 20 and all(r.cached for r in again[:20])
    assert [r.text for r in again[:20]] == [r.text for r in first[:20]]
    assert len(ResponseCache(path)) == 20
    other, _ = run(server, [ask("prompt 0")], cache=path, temperature=0.1)  # other params, other key
    assert server.requests == 23 and not other[0].cached


def test_concurrency_limit_holds(server):
    requests = [ask(f"[[delay:100]] {i}") for i in range(24)]
    started = time.time()
    results, _ = run(server, requests, max_concurrency=6)
    assert all(r.ok for r in results)
    assert server.max_inflight == 6
    assert time.time() - started < 24 * 0.1  # concurrent, not one by one


def test_missing_api_key_variable_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR"):
        LLMClient(LLMConfig(api_key_env="NO_SUCH_KEY_VAR"), server.base_url)


def test_llm_stage_on_ray_rejects_failures_and_reruns_from_cache(tmp_path, ray_local, quiet_console):
    from pipeline.config import load_config
    from pipeline.run import run_pipeline
    from tests.conftest import make_config, read_folder, write_jsonl

    rows = [{"text": f"document {i}"} for i in range(30)] + [{"text": "[[400]] bad"},
                                                             {"text": "[[badjson]] odd"}]
    write_jsonl(tmp_path / "data" / "a.jsonl", rows)
    with ScriptedServer() as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
        path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                           '[stages.ingest]\n[stages.score]\nkind = "tests.plugin_llm_stage"\n',
                           extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
        rec = result.records[1]
        assert rec["rows_kept"] == 30
        assert rec["rejected_by_reason"] == {"llm_error:400": 1, "llm_invalid_json": 1}
        rejected = read_folder(result.run_dir / "rejected" / "02-score")
        assert "scripted 400" in " ".join(rejected.column("drop_detail").to_pylist())
        usage = rec["info"]["llm_usage"][0]
        assert usage["stage"] == "score" and usage["requests"] == srv.requests
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert set(read_folder(result.run_dir / "stages" / "02-score").column("score").to_pylist()) == {3}
        before = srv.requests
        again = run_pipeline(load_config(path), force=["score"], console=quiet_console)
        assert again.ran == ["score"]
        assert srv.requests - before == 1  # only the HTTP failure; paid replies (even invalid) are cached
        assert again.records[1]["info"]["llm_usage"][0]["cache_hits"] == 30 + 3  # + the repair chain
        changed = run_pipeline(load_config(path, ["llm.temperature=0.2"]), console=quiet_console)
        assert changed.ran == ["score"]  # sampling is part of the stage's config hash


@pytest.mark.teacher
@pytest.mark.timeout(300)
def test_embedded_teacher_answers_through_the_same_client(tmp_path):
    from pipeline.serve import Teacher, find_model

    assert find_model().suffix == ".gguf"
    with Teacher(tmp_path / "teacher.log") as base_url:
        assert base_url.startswith("http://127.0.0.1:")

        async def main():
            client = LLMClient(LLMConfig(max_tokens=24, temperature=0.0), base_url)
            return await client.chat(ask("Name one colour of the rainbow."))

        result = asyncio.run(main())
    assert result.ok and len(result.text.strip()) > 0 and result.completion_tokens > 0


@pytest.mark.teacher
@pytest.mark.timeout(180)
def test_teacher_does_not_outlive_a_killed_pipeline(tmp_path):
    import signal
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--log",
                             str(tmp_path / "t.log")], stderr=subprocess.PIPE, text=True)
    try:
        while "embedded teacher at" not in (line := proc.stderr.readline()):
            assert line, "pipeline serve ended before the teacher was up"
        servers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                   if "llama_cpp.server" in " ".join(c.cmdline())]
        assert len(servers) == 1
        proc.send_signal(signal.SIGKILL)  # no cleanup code runs in the parent
        gone, alive = psutil.wait_procs(servers, timeout=30)
        assert not alive
    finally:
        proc.kill()
        proc.wait()


def test_stop_and_penalties_are_sent_and_keyed(server, tmp_path):
    path = tmp_path / "cache.sqlite"
    plain = ask("tasks please")
    tuned = Request(plain.messages, top_p=0.5, stop=["\n\n", "16."], presence_penalty=2.0,
                    frequency_penalty=0.5)
    config = LLMConfig(model="scripted")
    client = LLMClient(config, server.base_url)
    params = client.params(tuned)
    assert params["top_p"] == 0.5 and params["stop"] == ["\n\n", "16."]
    assert params["presence_penalty"] == 2.0 and params["frequency_penalty"] == 0.5
    assert "stop" not in client.params(plain) and client.params(plain)["top_p"] == config.top_p
    run(server, [plain, tuned], cache=path)
    run(server, [plain, tuned], cache=path)
    assert server.requests == 2  # two keys, each paid once
