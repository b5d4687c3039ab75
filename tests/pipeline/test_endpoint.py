"""Endpoint failures stop a stage (never rejected records), runs exit non-zero, reruns pay nothing
twice; JSON schemas fall back to a form the endpoint accepts; empty datasets still load."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel

from pipeline import ledger, runstate
from pipeline.config import load_config
from pipeline.endpoint import EndpointError
from pipeline.llm import LLMClient, LLMConfig, Request
from pipeline.run import run_pipeline
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer

SOURCES = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n'
SCORE_STAGES = '[stages.ingest]\n[stages.score]\nkind = "tests.plugin_llm_stage"\n'


class Score(BaseModel):
    score: int
    reason: str


def ask(prompt: str) -> Request:
    return Request([{"role": "user", "content": prompt}])


def client_run(base_url: str, requests: list[Request], model=None, **overrides):
    config = LLMConfig(**{"model": "scripted", "backoff_s": 0.01, "max_backoff_s": 0.05,
                          "timeout_s": 5, "reconnect_s": 0.5, **overrides})

    async def main():
        client = LLMClient(config, base_url)
        try:
            return await client.many(requests, stage="test", model=model), client
        finally:
            await client.close()

    return asyncio.run(main())


def test_a_bad_key_fails_fast_and_names_its_variable_never_the_key(monkeypatch):
    monkeypatch.setenv("MY_TEST_KEY", "sk-very-secret-123")
    with ScriptedServer(status=401) as srv:
        started = time.time()
        with pytest.raises(EndpointError) as err:
            client_run(srv.base_url, [ask(f"q {i}") for i in range(40)], api_key_env="MY_TEST_KEY",
                       max_concurrency=4)
        assert time.time() - started < 5
        assert srv.requests <= 4  # the breaker stops the rest before they are sent
    message = str(err.value)
    assert "$MY_TEST_KEY" in message and "HTTP 401" in message and srv.base_url in message
    assert "sk-very-secret-123" not in message


def test_a_wrong_url_or_model_is_the_endpoint_s_failure():
    with ScriptedServer(status=404) as srv, pytest.raises(EndpointError, match="model"):
        client_run(srv.base_url, [ask("q")])


def test_refused_connections_fail_after_the_reconnect_window():
    with ScriptedServer() as srv:
        url = srv.base_url
    started = time.time()
    with pytest.raises(EndpointError, match="refused or dropped the connection") as err:
        client_run(url, [ask("q")], reconnect_s=1.0, max_retries=1)
    assert 1.0 <= time.time() - started < 10
    assert "is the server running" in str(err.value)


def test_persistent_5xx_open_the_breaker_but_one_bad_prompt_is_a_rejected_record():
    with ScriptedServer() as srv:
        results, client = client_run(srv.base_url, [ask("fine 1"), ask("odd [[500]]"),
                                                    ask("fine 2")], max_retries=1)
        assert [r.error for r in results] == [None, "llm_error:500", None]
        assert client.breaker.opened is None
        samples = [Request([{"role": "user", "content": "one odd prompt [[500]]"}], seed=i)
                   for i in range(5)]  # samples of one failing prompt are one piece of evidence
        results, client = client_run(srv.base_url, samples, max_retries=1, max_concurrency=1)
        assert {r.error for r in results} == {"llm_error:500"} and client.breaker.opened is None
        with pytest.raises(EndpointError, match="in a row"):
            client_run(srv.base_url, [ask(f"all down {i} [[500]]") for i in range(10)],
                       max_retries=1, max_concurrency=1)


def test_json_schema_travels_in_the_openai_form_and_falls_back_once():
    with ScriptedServer(reject_json_schema=True) as srv:
        results, client = client_run(srv.base_url, [ask(f"rate {i}") for i in range(6)],
                                     model=Score, max_concurrency=3)
    assert all(r.ok and r.parsed.score == 3 for r in results)
    assert client.schema_style == "llama_cpp"
    assert srv.forms["json_schema"] <= 3 and srv.forms["json_object"] == 6  # one per request
    assert len(client.events) == 1 and "'openai'" in client.events[0]


def test_an_endpoint_going_down_fails_the_stage_and_the_rerun_pays_nothing_twice(
        tmp_path, ray_local, capsys):
    from pipeline import cli

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": f"document {i}"} for i in range(120)])
    seen: Counter = Counter()
    with ScriptedServer(stop_after=40, seen=seen) as first:
        port = first.port
        extra = (f'[llm]\nbase_url = "{first.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
                 "max_concurrency = 4\nreconnect_s = 1.0\nmax_retries = 2\n")
        path = make_config(tmp_path, SOURCES, SCORE_STAGES, extra=extra, batch_size=30)
        code = cli.main(["run", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "stage 'score' failed" in err and first.base_url in err and "refused" in err
    run_dir = load_config(path).run_dir
    assert [f.name for f in ledger.stage_folders(run_dir)] == ["01-ingest"]  # nothing committed
    state = runstate.read(run_dir)
    assert state["outcome"] == "failed" and state["stages"]["score"]["status"] == "failed"
    assert not list((run_dir / "rejected").glob("02-*"))
    answered = first.requests
    assert 0 < answered < 120

    with ScriptedServer(port=port, seen=seen) as second:
        assert cli.main(["run", str(path)]) == 0
    assert second.requests == 120 - answered + 0  # each prompt asked once over both servers
    assert set(seen.values()) == {1} and len(seen) == 120
    record = ledger.read_success(run_dir / "stages" / "02-score")
    assert record["rows_kept"] == 120 and record["rejected_by_reason"] == {}
    assert runstate.read(run_dir)["outcome"] == "succeeded"


def test_a_rerun_with_unchanged_llm_stages_starts_no_endpoint(tmp_path, ray_local, quiet_console,
                                                               monkeypatch):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": f"document {i}"} for i in range(10)])
    with ScriptedServer() as srv:
        path = make_config(tmp_path, SOURCES, SCORE_STAGES,
                           extra=f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\n')
        run_pipeline(load_config(path), console=quiet_console)
    import pipeline.runner

    def no_actor(*args, **kwargs):
        raise AssertionError("the LLM client was started for unchanged stages")

    monkeypatch.setattr(pipeline.runner, "start_llm", no_actor)
    again = run_pipeline(load_config(path), console=quiet_console)  # the server is gone
    assert again.skipped == ["ingest", "score"] and not again.problems


def test_an_empty_dataset_is_one_shard_of_zero_rows_that_loads_and_says_why(
        tmp_path, ray_local, quiet_console):
    import datasets

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": f"doc {i}"} for i in range(20)])
    stages = ('[stages.ingest]\n[stages.filter]\nkind = "tests.plugin_stages"\nmin_chars = 1000\n'
              '[stages.dedup_exact]\n')
    path = make_config(tmp_path, SOURCES, stages, '[datasets.none]\nfrom = "dedup_exact"\n')
    result = run_pipeline(load_config(path), console=quiet_console)
    folder = result.datasets["none"]
    shards = sorted((folder / "data").glob("*.parquet"))
    assert len(shards) == 1
    # datasets 5.2 cannot materialize a 0-row split (huggingface/datasets#8401, open); streamed,
    # it is 0 rows with its features
    loaded = datasets.load_dataset(str(folder), split="train", streaming=True)
    assert list(loaded) == [] and {"id", "text"} <= set(loaded.features)
    assert pq.read_table(shards[0]).num_rows == 0
    card = (folder / "README.md").read_text()
    assert "## Why this dataset is empty" in card and "`02-filter`" in card and "too_short" in card
    assert read_folder(result.run_dir / "rejected" / "02-filter").num_rows == 20


def test_a_dataset_of_a_stage_that_did_not_run_makes_the_run_fail(tmp_path, ray_local, capsys):
    from pipeline import cli

    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": f"document {i}"} for i in range(5)])
    stages = '[stages.ingest]\n[stages.dedup_exact]\nenabled = false\n'
    path = make_config(tmp_path, SOURCES, stages, '[datasets.out]\nfrom = "dedup_exact"\n')
    assert cli.main(["run", str(path)]) == 1
    assert "did not finish" in capsys.readouterr().err
    run_dir = load_config(path).run_dir
    assert cli.main(["status", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "last run: failed" in shown and "dataset out" in shown
