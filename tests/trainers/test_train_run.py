"""Training inside a run: [train.*] and [eval] tables, model cards, resume, the CLI, errors."""

from __future__ import annotations

import json

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.run import run_pipeline
from tests.conftest import make_config, sandbox_mode
from tests.trainers.conftest import STDLIB_SOURCES, TINY_MODEL

SOURCES = STDLIB_SOURCES
STAGES = """
[stages.ingest]
"""
MODEL = TINY_MODEL
TRAIN = f"""
[datasets.code]
from = "ingest"

[train.tokenizer]
dataset = "code"
vocab_size = 500

[train.pretrain]
dataset = "code"
model = {{{MODEL}}}
seq_len = 64
micro_batch_size = 4
max_steps = 6
eval_every = 3
save_every = 3

[eval]
models = ["pretrain"]
dataset = "code"
seq_len = 64
humaneval = 2
max_new_tokens = 8
sandbox = "{sandbox_mode()}"
"""


def test_run_trains_models_with_cards_then_skips_them(tmp_path, ray_local, quiet_console):
    cfg = load_config(make_config(tmp_path, SOURCES, STAGES, TRAIN))
    result = run_pipeline(cfg, console=quiet_console)
    model_dir = cfg.run_dir / "models" / "pretrain"
    assert result.models == {"tokenizer": cfg.run_dir / "models" / "tokenizer", "pretrain": model_dir}
    done = json.loads((model_dir / "_SUCCESS.json").read_text())
    assert done["summary"]["step"] == 6 and done["summary"]["loss"] > 0
    card = (model_dir / "README.md").read_text()
    dataset_card = cfg.run_dir / "datasets" / "code" / "README.md"
    assert done["datasets"][0]["card"] == str(dataset_card)
    assert done["datasets"][0]["card_sha256"] in card and "library_name: transformers" in card
    assert "## Evaluation" in card and "perplexity" in card
    evaluation = result.evaluations["pretrain"]
    assert evaluation["perplexity"] > 1 and evaluation["humaneval_problems"] == 2
    assert not (cfg.run_dir / "models" / ".pretrain.work").exists()  # checkpoints removed
    from io import StringIO

    from rich.console import Console

    from pipeline import ledger

    shown = StringIO()
    ledger.print_status(cfg.run_dir, Console(file=shown, width=200))
    assert "model pretrain (pretrain): step 6" in shown.getvalue()

    again = run_pipeline(load_config(make_config(tmp_path, SOURCES, STAGES, TRAIN)),
                         console=quiet_console)
    assert json.loads((model_dir / "_SUCCESS.json").read_text())["finished_at"] == done["finished_at"]
    assert again.evaluations["pretrain"]["key"] == evaluation["key"]

    changed = TRAIN.replace("max_steps = 6", "max_steps = 3")
    run_pipeline(load_config(make_config(tmp_path, SOURCES, STAGES, changed)), console=quiet_console)
    assert json.loads((model_dir / "_SUCCESS.json").read_text())["summary"]["step"] == 3


def test_train_and_eval_errors_name_the_key(tmp_path):
    bad = TRAIN.replace("vocab_size = 500", "vocab_size = 500\nvocab = 3")
    with pytest.raises(ConfigError, match=r"train\.tokenizer\.vocab: unknown key"):
        load_config(make_config(tmp_path, SOURCES, STAGES, bad))
    bad = TRAIN.replace("[train.pretrain]", "[train.pretrain]\nobjective = \"distill\"")
    with pytest.raises(ConfigError, match="objective must be one of"):
        load_config(make_config(tmp_path, SOURCES, STAGES, bad))
    bad = TRAIN.replace('models = ["pretrain"]', 'models = ["nope"]')
    with pytest.raises(ConfigError, match="eval.models: 'nope'"):
        load_config(make_config(tmp_path, SOURCES, STAGES, bad))


def test_cli_train_before_the_datasets_exist_is_a_clear_error(tmp_path, capsys):
    from pipeline.cli import main

    path = make_config(tmp_path, SOURCES, STAGES, TRAIN)
    assert main(["train", "pretrain", str(path)]) == 2
    assert "has not been published yet" in capsys.readouterr().err


def test_humaneval_harness_passes_canonical_solutions_and_fails_wrong_ones():
    from pipeline.evalsets import humaneval_problems
    from pipeline.sandbox import run_many

    problems = humaneval_problems()[:4]
    good = [f"{p['prompt']}{p['canonical_solution']}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
            for p in problems]
    bad = [f"{p['prompt']}    return None\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
           for p in problems]
    results = run_many(good + bad, timeout_s=10, mode=sandbox_mode())
    assert [r.ok for r in results] == [True] * 4 + [False] * 4


def test_empty_dataset_fails_or_skips_the_model_and_its_dependants(tmp_path, ray_local, quiet_console):
    from pipeline.run import RunError

    empty = TRAIN.replace("[datasets.code]", "[datasets.none]\nfrom = \"ingest\"\ncolumns = [\"id\", \"text\"]\n\n[datasets.code]")
    empty = empty.replace('[train.tokenizer]\ndataset = "code"', '[train.tokenizer]\ndataset = "none"')
    stages = STAGES + "max_chars = 10\n"  # every file is rejected as too_long: empty datasets
    with pytest.raises(RunError, match="has no rows"):
        run_pipeline(load_config(make_config(tmp_path, SOURCES, stages, empty)), console=quiet_console)
    skipping = empty.replace('[train.tokenizer]\n', '[train.tokenizer]\non_empty = "skip"\n')
    result = run_pipeline(load_config(make_config(tmp_path, SOURCES, stages, skipping.split("[eval]")[0])),
                          console=quiet_console)
    assert result.models == {}  # pretrain starts from the skipped tokenizer: skipped too
