"""Ablations in a run: equal tokens, seeds, whole held-out sets, leak refusal, mixtures, report."""

from __future__ import annotations

import csv
import json
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.run import run_pipeline
from tests.conftest import make_config, write_jsonl
from tests.trainers.conftest import STDLIB_SOURCES, TINY_MODEL

SOURCES = STDLIB_SOURCES
STAGES = "[stages.ingest]\n"
MODEL = TINY_MODEL
DATASETS = """
[datasets.code]
from = "ingest"
"""
ABLATION = f"""
[ablation.same]
variants = {{ curated = "code", raw = "stage:ingest", mixed = {{ code = 0.5, "small.parquet" = 0.5 }} }}
model = {{{MODEL}}}
vocab_size = 400
seq_len = 64
micro_batch_size = 4
max_steps = 8
warmup_steps = 2
eval_every = 4
lr = 3e-3
seeds = [0, 1]

[[ablation.same.evalsets]]
name = "probe"
path = "probe.jsonl"

[[ablation.same.evalsets]]
name = "slice"
holdout = "code"
max_chars = 3000
"""


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, ray_local):
    from rich.console import Console

    folder = tmp_path_factory.mktemp("ablation")
    stdlib = sysconfig.get_paths()["stdlib"]
    small = [open(f"{stdlib}/{name}", encoding="utf-8").read()[:300]
             for name in ("bisect.py", "colorsys.py")]
    pq.write_table(pa.table({"text": small}), folder / "small.parquet")
    write_jsonl(folder / "probe.jsonl", [{"text": open(f"{stdlib}/{name}", encoding="utf-8").read()[:1500]}
                                         for name in ("textwrap.py", "shlex.py")])
    cfg = load_config(make_config(folder, SOURCES, STAGES, DATASETS + ABLATION))
    result = run_pipeline(cfg, console=Console(file=open("/dev/null", "w")))
    root = result.ablations["same"]
    return cfg, root, json.loads((root / "report.json").read_text())


def test_identical_data_gives_the_same_result_within_seed_noise(ablated):
    _, _, report = ablated
    for set_name in ("probe", "slice"):
        a = report["variants"]["curated"]["eval"][set_name]
        b = report["variants"]["raw"]["eval"][set_name]
        assert a["loss_std"] > 0  # the seeds differ
        assert abs(a["loss_mean"] - b["loss_mean"]) <= 2 * max(a["loss_std"], b["loss_std"])
        assert report["clear"][set_name] is False or report["best"][set_name] == "mixed"


def test_every_model_trains_the_same_tokens(ablated):
    _, root, report = ablated
    tokens = set()
    for entry in report["variants"].values():
        for model in entry["models"]:
            done = json.loads((root / "models" / model["name"] / "_SUCCESS.json").read_text())
            with open(root / "models" / model["name"] / "metrics.csv") as fh:
                tokens.add(int(list(csv.DictReader(fh))[-1]["tokens"]))
            tokens.add(done["summary"]["tokens"])
    assert tokens == {8 * 4 * 64}
    small = next(c for c in report["variants"]["mixed"]["components"] if c["name"] == "small.parquet")
    assert small["epochs"] > 1 and report["variants"]["mixed"]["epochs"] > 1  # repeated, said so
    assert report["variants"]["raw"]["epochs"] < 1


def test_held_out_slice_is_kept_out_and_sets_are_evaluated_whole(ablated):
    _, root, report = ablated
    curated = report["variants"]["curated"]["components"][0]
    assert curated["held_out_documents"] == report["evalsets"]["slice"]["documents"] > 0
    from trainers.data import INDEX

    for name, entry in report["evalsets"].items():
        folder = next((root / "tokens").glob(f"eval-{name}-*"))
        total = json.loads((folder / INDEX).read_text())["tokens"]
        assert entry["tokens"] == total - 1  # every token but the first is a target


def test_report_renders_and_names_every_model(ablated):
    _, root, report = ablated
    text = (root / "report.md").read_text()
    for entry in report["variants"].values():
        for model in entry["models"]:
            assert f"[{model['name']}](models/{model['name']}/README.md)" in text
            assert (root / model["card"]).is_file()
            assert "## Data mixture" in (root / model["card"]).read_text()
    assert all(report["verdicts"][s] in text for s in ("probe", "slice"))
    assert (root / "curves.png").stat().st_size > 1000


def test_a_leaking_eval_set_is_refused_by_name(ablated, quiet_console):
    from trainers.ablation import run_ablations
    from trainers.errors import TrainError

    cfg, _, _ = ablated
    folder = cfg.path.parent
    from trainers.data import text_hash

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [f.read_text(encoding="utf-8") for f in sorted((stdlib / "json").glob("*.py"))]
    text = max(texts, key=text_hash)  # the held-out slice takes the smallest hashes
    write_jsonl(folder / "leaky.jsonl", [{"text": text}, {"text": "print('unseen')"}])
    leaky = ABLATION.replace('[[ablation.same.evalsets]]\nname = "slice"',
                             '[[ablation.same.evalsets]]\nname = "leaky"\npath = "leaky.jsonl"\n\n'
                             '[[ablation.same.evalsets]]\nname = "slice"')
    cfg = load_config(make_config(folder, SOURCES, STAGES, DATASETS + leaky))
    with pytest.raises(TrainError, match="evaluation set 'leaky' leaks into variant 'curated'"):
        run_ablations(cfg, console=quiet_console)


def test_mixture_realizes_the_requested_weights(tmp_path, tokenizer_dir, corpus, ray_local):
    from trainers.data import tokenize_to_shards
    from trainers.mixture import Component, realize

    texts = pq.read_table(corpus).column("text").to_pylist()
    half = len(texts) // 2
    pq.write_table(pa.table({"text": texts[:half]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": texts[half:], "cluster_size": list(range(1, len(texts) - half + 1))}),
                   tmp_path / "b.parquet")
    for name in ("a", "b"):
        tokenize_to_shards([tmp_path / f"{name}.parquet"], tokenizer_dir, "text", tmp_path / name)
    parts = [Component("a", tmp_path / "a", 0.8), Component("b", tmp_path / "b", 0.2)]
    report = realize(parts, 30_000, tmp_path / "mix", seed=3)
    stream = np.memmap(tmp_path / "mix" / "shard-00000.bin", dtype=np.uint16, mode="r")
    assert len(stream) == 30_000
    for comp, wanted in zip(report["components"], (0.8, 0.2)):
        assert abs(comp["realized_weight"] - wanted) <= 0.01
    docs = np.load(tmp_path / "b" / "shard-00000.docs.npy")
    up = realize(parts[1:], 20_000, tmp_path / "up", seed=3, upsample="cluster_size", max_repeats=4)
    plain = realize(parts[1:], 20_000, tmp_path / "plain", seed=3)
    weights = np.minimum(docs["cluster_size"], 4)
    assert up["components"][0]["pool_tokens"] == int((docs["tokens"] * weights).sum())
    assert plain["components"][0]["pool_tokens"] == int(docs["tokens"].sum())


def test_builtin_humaneval_set_is_prompts_with_canonical_solutions():
    from trainers.ablation_data import load_evalset
    from trainers.config import AblationEvalSet

    data = load_evalset(None, AblationEvalSet(name="humaneval"), "text")
    from pipeline.evalsets import humaneval_problems

    first = humaneval_problems()[0]
    assert len(data.texts) == 164 and data.kind == "builtin"
    assert data.texts[0] == first["prompt"] + "\n" + first["canonical_solution"]


def test_a_small_source_is_used_whole_whatever_the_sample(tmp_path):
    from trainers.ablation_data import source_sample
    from trainers.config import AblationConfig

    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(40)]}), tmp_path / "a.parquet")
    source = {"files": [tmp_path / "a.parquet"]}
    conf = AblationConfig(variants={"a": "a"}, sample=0.05, sample_min_rows=40)
    assert source_sample(source, conf) == 1.0  # 5% of 40 documents would be 2 or none
    assert source_sample(source, conf.model_copy(update={"sample_min_rows": 39})) == 0.05


def test_a_rerun_retrains_no_model_and_gives_the_same_report(ablated):
    from rich.console import Console

    cfg, root, report = ablated
    successes = sorted((root / "models").glob("*/_SUCCESS.json"))
    before = {p: p.stat().st_mtime_ns for p in successes}
    assert len(before) == 6  # 3 variants x 2 seeds
    run_pipeline(cfg, console=Console(file=open("/dev/null", "w")))
    assert {p: p.stat().st_mtime_ns for p in successes} == before
    assert json.loads((root / "report.json").read_text())["variants"] == report["variants"]
