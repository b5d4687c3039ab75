from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from tests.conftest import make_config, write_jsonl

SOURCES = """
[[sources]]
name = "docs"
kind = "jsonl"
path = "data"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "hello"}])
    return tmp_path


def test_valid_config_resolves_paths_and_stage_models(folder):
    cfg = load_config(make_config(folder, SOURCES, "[stages.ingest]\nmax_chars = 10\n"))
    assert cfg.sources[0].path == str(folder / "data")
    assert cfg.stage("ingest").config.max_chars == 10
    assert cfg.run_dir == folder / "runs" / "t"


def test_unknown_key_names_key_path_and_file(folder):
    path = make_config(folder, SOURCES, "[stages.ingest]\nmax_charz = 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "stages.ingest.max_charz" in str(err.value)
    assert "unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_top_level_and_source_keys(folder):
    path = make_config(folder, SOURCES + 'colour = "red"\n', "[stages.ingest]\n", extra="[runn]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "sources.0.colour" in str(err.value)
    assert "runn" in str(err.value)


def test_wrong_type_is_reported_with_the_value(folder):
    path = make_config(folder, SOURCES, '[stages.ingest]\nmax_chars = "lots"\n')
    with pytest.raises(ConfigError, match=r"stages\.ingest\.max_chars: .*integer.*'lots'"):
        load_config(path)


def test_missing_source_path_is_an_error_before_work(folder):
    path = make_config(folder, SOURCES.replace('"data"', '"nowhere"'), "[stages.ingest]\n")
    with pytest.raises(ConfigError, match=r"sources\.0\.path: .*nowhere does not exist"):
        load_config(path)


def test_source_stage_without_sources(folder):
    path = make_config(folder, "", "[stages.ingest]\n")
    with pytest.raises(ConfigError, match="none is configured"):
        load_config(path)


def test_unknown_stage_kind_and_bad_input(folder):
    with pytest.raises(ConfigError, match=r"stages\.nope\.kind: unknown stage kind 'nope'"):
        load_config(make_config(folder, SOURCES, "[stages.ingest]\n[stages.nope]\n"))
    stages = '[stages.ingest]\n[stages.dedup_exact]\ninput = "later"\n'
    with pytest.raises(ConfigError, match=r"stages\.dedup_exact\.input: 'later': no such stage"):
        load_config(make_config(folder, SOURCES, stages))


def test_dataset_must_name_a_stage(folder):
    path = make_config(folder, SOURCES, "[stages.ingest]\n", '[datasets.x]\nfrom = "ghost"\n')
    with pytest.raises(ConfigError, match=r"datasets\.x\.from: no stage named 'ghost'"):
        load_config(path)


def test_set_overrides_nested_keys_lists_and_types(folder):
    path = make_config(folder, SOURCES, "[stages.ingest]\n")
    cfg = load_config(path, ["stages.ingest.max_chars=123", "sources.0.license=MIT",
                             "run.name=other", 'sources.0.include=["*.jsonl"]'])
    assert cfg.stage("ingest").config.max_chars == 123
    assert cfg.sources[0].license == "MIT"
    assert cfg.sources[0].include == ["*.jsonl"]
    assert cfg.run.name == "other"
    with pytest.raises(ConfigError, match=r"stages\.ingest\.max_chars"):
        load_config(path, ["stages.ingest.max_chars=many"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(path, ["stages.ingest.max_chars"])
    with pytest.raises(ConfigError, match="not a valid list index"):
        load_config(path, ["sources.7.license=MIT"])


def test_dedup_policy_validation(folder):
    stages = '[stages.ingest]\n[stages.dedup_exact]\nkeep = "highest"\n'
    with pytest.raises(ConfigError, match="needs column"):
        load_config(make_config(folder, SOURCES, stages))


def test_init_templates_parse(tmp_path, capsys):
    assert main(["init", str(tmp_path / "code"), "--example", "code"]) == 0
    cfg = load_config(tmp_path / "code" / "pipeline.toml")
    assert [s.name for s in cfg.sources] == ["stdlib", "site-packages", "docs"]
    assert Path(cfg.sources[0].path).is_dir() and "{" not in cfg.sources[0].path
    assert cfg.stage_names() == [
        "ingest", "dedup_exact", "dedup_minhash", "heuristics", "annotate", "quality", "decontaminate",
        "textbooks", "textbooks_exact", "textbooks_near", "exercises", "self_instruct", "orca",
        "instructions_decontaminate", "lima", "preferences"]
    assert [(t.name, t.objective) for t in cfg.train] == [
        ("tokenizer", "tokenizer"), ("pretrain", "pretrain"), ("sft", "sft"), ("dpo", "dpo")]
    assert set(cfg.eval.models) == {"pretrain", "sft", "dpo"}
    assert list(cfg.ablation) == ["curation"]
    assert set(cfg.ablation["curation"].variants) == {"raw", "curated", "textbooks_mix"}
    assert {spec.from_stage for spec in cfg.datasets.values()} <= set(cfg.stage_names())
    assert main(["init", str(tmp_path / "blank")]) == 0
    assert load_config(tmp_path / "blank" / "pipeline.toml").run.name == "blank"
    assert main(["init", str(tmp_path / "blank")]) == 2  # no overwrite without --force


def test_cli_reports_config_errors_without_traceback(folder, capsys):
    path = make_config(folder, SOURCES, "[stages.ingest]\nmax_charz = 1\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stages.ingest.max_charz" in err and "Traceback" not in err
    assert main(["run", str(folder / "missing.toml")]) == 2


def test_uses_must_name_earlier_stages(folder):
    stages = '[stages.ingest]\n[stages.quality]\nuses = ["annotate"]\n[stages.annotate]\n'
    with pytest.raises(ConfigError, match=r"stages\.quality\.uses: 'annotate': it must be an earlier stage"):
        load_config(make_config(folder, SOURCES, stages))
