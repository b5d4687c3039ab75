"""fastText quality classifier: real labelled code, degenerate labels, and the annotate chain."""

from __future__ import annotations

import json
import re
import sysconfig
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.run import RunError, run_pipeline
from stages.quality import Config, score_batch, train
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer


def minify(code: str) -> str:
    """Code without docstrings, comments or indentation, statements joined by semicolons."""
    code = re.sub(r'("""|\'\'\')(.*?)\1', "", code, flags=re.S)
    lines = [ln.split("#")[0].strip() for ln in code.splitlines()]
    return "; ".join(ln for ln in lines if ln)


def documented_modules(n: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:4000]
        if text.count('"""') >= 4 and text.count("#") >= 3:
            texts.append(text)
        if len(texts) == n:
            break
    return texts


def test_classifier_separates_documented_from_minified_code(tmp_path):
    docs = documented_modules(300)
    examples = [(t, 5) for t in docs[::2]] + [(minify(t), 0) for t in docs[1::2]]
    model_path, metrics = train(examples, Config(valid_fraction=0.3), tmp_path)
    assert metrics["f1"] >= 0.8 and metrics["valid"] >= 30, metrics  # chance is about 0.5
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    held_out = documented_modules(340)[300:]
    batch = pa.table({"id": [f"d{i}" for i in range(2 * len(held_out))],
                      "text": held_out + [minify(t) for t in held_out]})
    scores = score_batch(batch, str(model_path), "text", 4000).column("quality_score").to_numpy()
    half = len(held_out)
    assert scores[:half].mean() > scores[half:].mean() + 0.3


def test_degenerate_labels_are_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too few or one-sided.*0 negative"):
        train([(f"text number {i}", 5) for i in range(50)], Config(), tmp_path)


def test_quality_chain_on_ray(tmp_path, ray_local, quiet_console):
    docs = documented_modules(60)
    good = '[[json:{"rationale": "documented", "score": 5}]] '
    bad = '[[json:{"rationale": "terse", "score": 0}]] '
    rows = [{"text": good + t} for t in docs[::2]] + [{"text": bad + minify(t)} for t in docs[1::2]]
    write_jsonl(tmp_path / "data" / "a.jsonl", rows)
    stages = """
[stages.ingest]
[stages.annotate]
sample_size = 60
max_chars = 4000
[stages.quality]
input = "ingest"
uses = ["annotate"]
top_fraction = 0.5
"""
    with ScriptedServer() as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\n'
        path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                           stages, '[datasets.good]\nfrom = "quality"\n', extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
    rec = result.records[2]
    assert rec["rows_in"] == 60 and rec["rejected_by_reason"] == {"low_quality": 30}
    kept = read_folder(result.run_dir / "stages" / "03-quality")
    assert sum("[[json" in t and "score\": 5" in t for t in kept.column("text").to_pylist()) >= 27
    assert (result.run_dir / "artifacts" / "03-quality" / "model.bin").is_file()
    assert rec["info"]["metrics"]["valid"] == 12 and "f1" in rec["info"]["metrics"]
    card = (result.datasets["good"] / "README.md").read_text()
    assert "## Quality classifier" in card and (result.datasets["good"] / "plots" / "quality_scores.png").is_file()
    assert "Documents nearest the cut" in card and len(rec["info"]["near_cut"]) == 6
    assert all(item["excerpt"] for item in rec["info"]["near_cut"])
    rejected = read_folder(result.run_dir / "rejected" / "03-quality")
    assert rejected.column("quality_score").to_pylist()  # scores kept on dropped rows too


def test_quality_without_annotations_or_model_fails_clearly(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "hello"}])
    path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                       "[stages.ingest]\n[stages.quality]\n")
    with pytest.raises(RunError, match="uses"):
        run_pipeline(load_config(path), console=quiet_console)


def test_bring_your_own_model(tmp_path, ray_local, quiet_console):
    docs = documented_modules(200)
    model_path, _ = train([(t, 5) for t in docs[::2]] + [(minify(t), 0) for t in docs[1::2]],
                          Config(), tmp_path)
    rows = [{"text": t} for t in docs[:20]] + [{"text": minify(t)} for t in docs[20:40]]
    write_jsonl(tmp_path / "data" / "a.jsonl", rows)
    path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                       f'[stages.ingest]\n[stages.quality]\nmodel_path = "{model_path}"\n')
    result = run_pipeline(load_config(path), console=quiet_console)
    rec = result.records[1]
    assert rec["rows_kept"] + rec["rows_rejected"] == 40 and "metrics" not in rec["info"]
    kept = read_folder(result.run_dir / "stages" / "02-quality").column("text").to_pylist()
    assert sum(";" not in t[:200] for t in kept) >= 0.8 * len(kept)  # mostly the documented ones
