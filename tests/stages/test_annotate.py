from __future__ import annotations

import polars as pl

from pipeline import prompts
from pipeline.config import load_config
from pipeline.run import run_pipeline
from stages.annotate import stratified_sample
from tests.conftest import make_config, read_folder, write_jsonl
from tests.llm_server import ScriptedServer


def test_stratified_sample_is_proportional_stable_and_covers_small_strata():
    frame = pl.DataFrame({"id": [f"d{i}" for i in range(1000)],
                          "source": ["big"] * 900 + ["mid"] * 95 + ["tiny"] * 5})
    ids = stratified_sample(frame, 100, seed=1, column="source")
    counts = frame.filter(pl.col("id").is_in(ids)).group_by("source").len()
    got = dict(zip(counts["source"], counts["len"]))
    assert got == {"big": 90, "mid": 9, "tiny": 1}
    assert stratified_sample(frame, 100, seed=1, column="source") == ids
    assert stratified_sample(frame, 100, seed=2, column="source") != ids
    assert len(stratified_sample(frame, 10, seed=1, column=None)) == 10


def test_prompt_templates_render_and_hash():
    template = prompts.load("edu_score")
    assert template.fields == {"subject", "text"}
    assert "def f()" in template.render(subject="code", text="def f(): pass")
    assert len(template.hash) == 12
    import pytest

    with pytest.raises(prompts.PromptError, match="needs the field 'text'"):
        template.render(subject="code")
    with pytest.raises(prompts.PromptError, match="no prompt template"):
        prompts.load("no_such_prompt")


def test_annotations_through_the_llm_layer(tmp_path, ray_local, quiet_console):
    rows = [{"text": f"document {i} about fractions", "topic": "a"} for i in range(12)]
    rows[3]["text"] = 'great lesson [[json:{"rationale": "clear steps", "score": 5}]]'
    rows[5]["text"] = "broken [[400]]"
    rows[7]["text"] = "rambling [[badjson]]"
    write_jsonl(tmp_path / "a" / "x.jsonl", rows[:6])
    write_jsonl(tmp_path / "b" / "y.jsonl", rows[6:])
    sources = ('[[sources]]\nname = "a"\nkind = "jsonl"\npath = "a"\n'
               '[[sources]]\nname = "b"\nkind = "jsonl"\npath = "b"\n')
    with ScriptedServer() as srv:
        extra = f'[llm]\nbase_url = "{srv.base_url}"\nmodel = "scripted"\nbackoff_s = 0.01\n'
        path = make_config(tmp_path, sources, "[stages.ingest]\n[stages.annotate]\nsample_size = 12\n",
                           '[datasets.annotations]\nfrom = "annotate"\n', extra=extra)
        result = run_pipeline(load_config(path), console=quiet_console)
        rec = result.records[1]
        assert rec["rows_in"] == 12 and rec["rows_kept"] == 10
        assert rec["rejected_by_reason"] == {"llm_error:400": 1, "llm_invalid_json": 1}
        kept = read_folder(result.run_dir / "stages" / "02-annotate")
        assert sorted(kept.column("score").to_pylist()) == [3] * 9 + [5]
        assert set(kept.column("prompt_hash").to_pylist()) == {prompts.load("edu_score").hash}
        assert set(kept.column("source").to_pylist()) == {"a", "b"}
        assert set(kept.column("model").to_pylist()) == {"scripted"}
        assert rec["info"]["score_histogram"]["3"] == 9
        card = (result.datasets["annotations"] / "README.md").read_text()
        assert "Educational-value annotations" in card and "## LLM usage" in card
        before = srv.requests
        run_pipeline(load_config(path), force=["annotate"], console=quiet_console)
        assert srv.requests - before == 1  # only the failed call is asked again
