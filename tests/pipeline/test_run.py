"""The runner on a real local Ray: ledger, resume, subsets, broken stages, killed workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pytest

from pipeline import ledger
from pipeline.config import load_config
from pipeline.run import run_pipeline
from tests.conftest import make_config, read_folder, write_jsonl

SOURCES = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n'


def stages(flag: str = "", extra: str = "") -> str:
    return f"""
[stages.ingest]
[stages.filter]
kind = "tests.plugin_stages"
min_chars = 12
{f'fail_flag = "{flag}"' if flag else ""}
{extra}
[stages.dedup_exact]
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rows = [{"text": f"document number {i} " + "word " * (i % 7)} for i in range(300)]
    rows += [{"text": "short"}] * 5 + [{"text": "document number 1 word "}] * 3 + ["{broken"]
    write_jsonl(tmp_path / "data" / "a.jsonl", rows[:150])
    write_jsonl(tmp_path / "data" / "b.jsonl", rows[150:])
    return tmp_path


def outputs(run_dir: Path) -> dict:
    out = {}
    for folder in ledger.stage_folders(run_dir):
        kept = read_folder(folder).sort_by("id")
        rejected = read_folder(run_dir / "rejected" / folder.name)
        out[folder.name] = (kept.to_pylist(), sorted(rejected.column("id").to_pylist()))
    return out


def test_ledger_adds_up_for_every_stage(corpus, ray_local, quiet_console):
    result = run_pipeline(load_config(make_config(corpus, SOURCES, stages())), console=quiet_console)
    records = result.records
    assert [r["folder"] for r in records] == ["01-ingest", "02-filter", "03-dedup_exact"]
    assert records[0]["rows_in"] == 309
    for up, down in zip(records, records[1:]):
        assert down["rows_in"] == up["rows_kept"]
    for rec in records:
        assert rec["rows_in"] == rec["rows_kept"] + rec["rows_rejected"]
        rejected = read_folder(corpus / "runs" / "t" / "rejected" / rec["folder"])
        assert rejected.num_rows == rec["rows_rejected"]
        assert read_folder(Path(rec["path"])).num_rows == rec["rows_kept"]
        assert {"config_hash", "input_fingerprint", "versions", "wall_s"} <= rec.keys()
    assert records[1]["rejected_by_reason"] == {"too_short": 5}
    assert records[2]["rejected_by_reason"] == {"exact_duplicate": 3}
    assert "drop_reason" not in read_folder(Path(records[2]["path"])).column_names


def test_failure_in_stage_two_then_resume_matches_uninterrupted_run(corpus, ray_local, quiet_console, tmp_path_factory):
    flag = corpus / "FAIL"
    flag.touch()
    cfg = load_config(make_config(corpus, SOURCES, stages(str(flag))))
    with pytest.raises(Exception, match="injected failure"):
        run_pipeline(cfg, console=quiet_console)
    run_dir = cfg.run_dir
    first = ledger.read_success(run_dir / "stages" / "01-ingest")
    assert first is not None
    assert not (run_dir / "stages" / "02-filter").exists()
    assert not list((run_dir / "stages").glob(".*tmp*"))  # cleaned at the next start at latest
    flag.unlink()
    result = run_pipeline(load_config(make_config(corpus, SOURCES, stages(str(flag)))), console=quiet_console)
    assert result.skipped == ["ingest"] and result.ran == ["filter", "dedup_exact"]
    assert ledger.read_success(run_dir / "stages" / "01-ingest")["finished_at"] == first["finished_at"]
    clean = tmp_path_factory.mktemp("clean")
    (clean / "data").symlink_to(corpus / "data")
    reference = run_pipeline(load_config(make_config(clean, SOURCES, stages(str(flag)))), console=quiet_console)
    assert outputs(run_dir) == outputs(reference.run_dir)


def test_config_change_recomputes_that_stage_and_later_ones(corpus, ray_local, quiet_console):
    path = make_config(corpus, SOURCES, stages())
    run_pipeline(load_config(path), console=quiet_console)
    again = run_pipeline(load_config(path), console=quiet_console)
    assert again.ran == [] and again.skipped == ["ingest", "filter", "dedup_exact"]
    changed = run_pipeline(load_config(path, ["stages.filter.min_chars=20"]), console=quiet_console)
    assert changed.ran == ["filter", "dedup_exact"] and changed.skipped == ["ingest"]
    assert changed.records[1]["rows_rejected"] > 5
    forced = run_pipeline(load_config(path, ["stages.filter.min_chars=20"]), force=["ingest"],
                          console=quiet_console)
    assert forced.ran == ["ingest"]  # same outputs, so later stages stay valid
    write_jsonl(corpus / "data" / "c.jsonl", [{"text": "a brand new document here"}])
    grown = run_pipeline(load_config(path, ["stages.filter.min_chars=20"]), console=quiet_console)
    assert grown.ran == ["ingest", "filter", "dedup_exact"]


def test_only_runs_a_subset_and_needs_finished_inputs(corpus, ray_local, quiet_console):
    path = make_config(corpus, SOURCES, stages())
    from pipeline.run import RunError

    with pytest.raises(RunError, match="reads 'ingest', which has not finished"):
        run_pipeline(load_config(path), only=["filter"], console=quiet_console)
    first = run_pipeline(load_config(path), only=["ingest"], console=quiet_console)
    assert first.ran == ["ingest"]
    assert not (first.run_dir / "stages" / "02-filter").exists()
    second = run_pipeline(load_config(path), only=["filter", "dedup_exact"], console=quiet_console)
    assert second.ran == ["filter", "dedup_exact"]


def test_a_stage_that_loses_rows_fails_loudly(corpus, ray_local, quiet_console):
    cfg = load_config(make_config(corpus, SOURCES, stages(extra="wrong_rows = true")))
    with pytest.raises(Exception, match="one row per input row"):
        run_pipeline(cfg, console=quiet_console)
    assert ledger.read_success(cfg.run_dir / "stages" / "02-filter") is None


def test_ledger_check_rejects_mismatched_counts():
    with pytest.raises(ledger.LedgerError, match="lost or invented"):
        ledger.check({"stage": "x", "rows_in": 10, "rows_kept": 5, "rows_rejected": 4,
                      "rejected_by_reason": {"a": 4}})
    with pytest.raises(ledger.LedgerError):
        ledger.check({"stage": "x", "rows_in": 10, "rows_kept": 5, "rows_rejected": 5,
                      "rejected_by_reason": {"a": 4}})


def test_worker_killed_mid_stage_still_gives_the_same_outputs(corpus, ray_local, quiet_console, tmp_path_factory):
    pids = corpus / "pids"
    pids.mkdir()
    slow = f'sleep_s = 0.4\npid_dir = "{pids}"'
    cfg = load_config(make_config(corpus, SOURCES, stages(extra=slow)))
    killed: list[int] = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            for entry in pids.iterdir():
                pid = int(entry.name)
                if pid != os.getpid() and psutil.pid_exists(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=killer)
    thread.start()
    result = run_pipeline(cfg, console=quiet_console)
    thread.join()
    assert killed, "no worker was busy in the slow stage"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"
    clean = tmp_path_factory.mktemp("clean")
    (clean / "data").symlink_to(corpus / "data")
    reference = run_pipeline(load_config(make_config(clean, SOURCES, stages(extra="sleep_s = 0.0"))),
                             console=quiet_console)
    assert outputs(result.run_dir) == outputs(reference.run_dir)
    kept = read_folder(result.run_dir / "stages" / "02-filter")
    assert pc.count_distinct(kept.column("id")).as_py() == kept.num_rows


def test_root_cause_finds_the_stage_error_inside_ray_wrappers():
    from pipeline.run import root_cause

    class Wrapped(Exception):
        pass

    inner = ValueError("the real problem")
    text = ("\x1b[36mray::MapBatches()\x1b[39m (pid=1)\n  File \"x.py\", line 1, in f\n"
            "    raise ValueError('the real problem')\nValueError: the real problem\n\n"
            "The above exception was the direct cause of the following exception:\n\n"
            "  File \"y.py\", line 2, in g\nray.exceptions.UserCodeException: UDF failed")
    outer = Wrapped(text)
    outer.__cause__ = inner
    assert root_cause(outer) == "ValueError: the real problem"
    assert root_cause(KeyError("k")) == "KeyError: 'k'"


def test_decision_index_finds_every_id_even_when_hashes_collide(monkeypatch):
    import pyarrow as pa

    from pipeline import join

    decisions = pa.table({"id": ["a", "bb", "cc", "ddd"], "drop_reason": ["x", None, "y", "z"]})
    batch = pa.table({"id": ["cc", "zz", "a", "ddd", "bb", "q"], "text": list("123456")})
    expect = [2, None, 0, 3, 1, None]
    assert join.DecisionIndex(decisions).positions(batch.column("id")).to_pylist() == expect
    # ids of one length share a "hash": the exact lookup must still tell them apart
    monkeypatch.setattr(join, "_hashes", lambda values: pc.utf8_length(values).to_numpy().astype("uint64"))
    index = join.DecisionIndex(decisions)
    assert index.positions(batch.column("id")).to_pylist() == expect
    joined = index.join(batch)
    assert joined.column("drop_reason").to_pylist() == ["y", None, "x", "z", None, None]
    assert joined.column("text").to_pylist() == list("123456")
