"""Datasets, cards, and the status/inspect commands on a finished run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.run import run_pipeline
from tests.conftest import make_config, write_jsonl

SOURCES = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\nlicense = "MIT"\n'
STAGES = "[stages.ingest]\nmax_chars = 60\n[stages.dedup_exact]\n"
DATASETS = '[datasets.docs]\nfrom = "dedup_exact"\ndescription = "Test documents."\n'


@pytest.fixture
def finished_run(tmp_path, ray_local, quiet_console):
    rows = [{"text": f"text number {i}", "topic": i % 3} for i in range(40)]
    rows += [{"text": "text number 1", "topic": 1}, {"text": "x" * 80}, "oops"]
    write_jsonl(tmp_path / "data" / "a.jsonl", rows)
    cfg = load_config(make_config(tmp_path, SOURCES, STAGES, DATASETS, name="demo"))
    result = run_pipeline(cfg, console=quiet_console)
    return result


def test_dataset_loads_with_hf_datasets_and_card_describes_it(finished_run):
    import datasets

    folder = finished_run.datasets["docs"]
    loaded = datasets.load_dataset("parquet", data_dir=str(folder / "data"), split="train")
    assert loaded.num_rows == 40
    assert set(loaded.column_names) == {"id", "text", "source", "path", "meta", "content_hash",
                                        "n_chars", "copies"}
    whole = datasets.load_dataset(str(folder), split="train")  # the card's configs/data_files
    assert whole.num_rows == 40
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "mit"
    assert front["size_categories"] == ["n<1K"]
    assert front["dataset_info"]["splits"][0]["num_examples"] == 40
    assert {"name": "n_chars", "dtype": "int64"} in front["dataset_info"]["features"]
    assert "| 01-ingest | 43 | 41 | 2 |" in card and "| 02-dedup_exact | 41 | 40 | 1 |" in card
    assert "`exact_duplicate` 1" in card and "`too_long` 1" in card and "`invalid_json` 1" in card
    assert "## Exact deduplication" in card
    assert (folder / "plots" / "length_hist.png").stat().st_size > 1000
    assert (folder / "plots" / "funnel.png").stat().st_size > 1000
    assert '"max_chars": 60' in card


def test_status_prints_the_funnel(finished_run, capsys):
    assert main(["status", str(finished_run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "01-ingest" in out and "02-dedup_exact" in out
    assert "exact_duplicate 1" in out and "invalid_json 1" in out
    assert "dataset docs: 40 rows" in out


def test_inspect_shows_kept_and_rejected_records(finished_run, capsys):
    run = str(finished_run.run_dir)
    assert main(["inspect", run, "--stage", "ingest", "--rejected", "--reason", "invalid_json",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["drop_reason"] == "invalid_json"
    assert json.loads(rows[0]["meta"])["line"] == 43 and rows[0]["stage"] == "ingest"
    assert main(["inspect", run, "--stage", "02-dedup_exact", "--limit", "3",
                 "--columns", "id,text"]) == 0
    out = capsys.readouterr().out
    assert out.count("record ") == 3 and "text number" in out
    assert main(["inspect", run, "--stage", "dedup_exact", "--dropped", "--reason",
                 "exact_duplicate", "--json"]) == 0
    dup = json.loads(capsys.readouterr().out.splitlines()[0])
    assert dup["text"] == "text number 1" and dup["duplicate_of"]
    assert main(["inspect", run, "--stage", "nope"]) == 2


def test_rerun_keeps_published_dataset(finished_run, quiet_console):
    folder: Path = finished_run.datasets["docs"]
    stamp = (folder / "README.md").stat().st_mtime_ns
    cfg = load_config(finished_run.run_dir.parent.parent / "pipeline.toml")
    again = run_pipeline(cfg, console=quiet_console)
    assert again.ran == []
    assert (folder / "README.md").stat().st_mtime_ns == stamp


def test_many_qualified_reasons_are_grouped_by_prefix():
    from pipeline.ledger import group_reasons

    few = {"too_short": 3, "too_similar_to:a": 1}
    assert group_reasons(few) == few
    many = {f"too_similar_to:{i}": 2 for i in range(60)} | {"rule:empty": 4, "rule:refusal": 1,
                                                            "below_quality": 7}
    grouped = group_reasons(many)
    assert grouped == {"below_quality": 7, "rule:empty": 4, "rule:refusal": 1, "too_similar_to:*": 120}
    assert sum(grouped.values()) == sum(many.values())
