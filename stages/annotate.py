"""LLM annotation of educational value on a stratified sample (phi-1; FineWeb-Edu).

A stratified random sample of ``sample_size`` documents (proportional to each value of
``stratify_by``, at least one per stratum, drawn by a seeded hash of the id so reruns pick the
same documents) is scored 0-5 by the configured LLM with the additive rubric in
``prompts/edu_score.txt`` on the first ``max_chars`` characters. The output is a dataset of its
own: ``doc_id``, ``source``, ``text`` (the excerpt), ``score``, ``rationale``, ``model``,
``prompt``, ``prompt_hash``. A later ``quality`` stage trains a classifier on it.

Drop reasons: the LLM layer's (``llm_error:<status>``, ``llm_timeout``, ``llm_invalid_json``,
``llm_truncated``), with the detail.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline import prompts
from pipeline.llm import Request
from pipeline.stage import GlobalContext, Records

VERSION = "1"
USES_LLM = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_size: int = Field(default=200, ge=1)
    seed: int = 0
    stratify_by: str | None = "source"
    text_column: str = "text"
    max_chars: int = Field(default=2000, ge=100)
    prompt: str = "edu_score"
    subject: str = "code or text"  # what the documents are, in the prompt
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=160, ge=16)


class EduScore(BaseModel):
    rationale: str
    score: int = Field(ge=0, le=5)


def stratified_sample(frame: pl.DataFrame, size: int, seed: int, column: str | None) -> list[str]:
    """Ids of a proportional stratified sample, stable across reruns (seeded hash order)."""
    frame = frame.with_columns(pl.col("id").hash(seed=seed).alias("_key"))
    if not column or column not in frame.columns:
        return frame.sort("_key").head(size)["id"].to_list()
    counts = frame.group_by(column).len()
    total = frame.height
    quota = {row[column]: max(1, round(size * row["len"] / total)) for row in counts.iter_rows(named=True)}
    ranked = frame.sort("_key").with_columns(pl.int_range(pl.len()).over(column).alias("_rank"))
    chosen = ranked.filter(pl.col("_rank") < pl.col(column).replace_strict(quota, default=0))
    return chosen.sort("_key").head(size)["id"].to_list()


def hash_extra(config: Config) -> str:
    """The template's hash joins the config hash: editing the prompt recomputes the stage."""
    return prompts.load(config.prompt).hash


def run(ctx: GlobalContext, config: Config) -> Records:
    template = prompts.load(config.prompt)
    strata = [config.stratify_by] if config.stratify_by else []
    ids = stratified_sample(pl.from_arrow(ctx.read(["id"] + strata)), config.sample_size,
                            config.seed, config.stratify_by)
    docs = ctx.read(["id", config.text_column] + strata, ids=ids)
    order = {doc: i for i, doc in enumerate(ids)}
    rows = sorted(docs.to_pylist(), key=lambda r: order[r["id"]])
    excerpts = [(r[config.text_column] or "")[: config.max_chars] for r in rows]
    requests = [Request([{"role": "user", "content": template.render(subject=config.subject, text=t)}],
                        temperature=config.temperature, max_tokens=config.max_tokens)
                for t in excerpts]
    results = ctx.llm.chat(requests, EduScore) if requests else []
    model = getattr(ctx.llm, "model_name", "")
    table = pa.table({
        "id": [f"{r['id']}:{template.name}" for r in rows],
        "doc_id": [r["id"] for r in rows],
        "source": [r.get(config.stratify_by) if config.stratify_by else None for r in rows],
        "text": excerpts,
        "score": pa.array([res.parsed.score if res.ok else None for res in results], pa.int64()),
        "rationale": [res.parsed.rationale if res.ok else None for res in results],
        "model": [model] * len(rows),
        "prompt": [template.name] * len(rows),
        "prompt_hash": [template.hash] * len(rows),
        "drop_reason": pa.array([res.error for res in results], pa.string()),
        "drop_detail": pa.array([res.detail for res in results], pa.string()),
    })
    scores = [res.parsed.score for res in results if res.ok]
    info = {"prompts": {template.name: template.hash}, "sampled": len(rows),
            "score_histogram": {str(k): scores.count(k) for k in range(6)}}
    return Records(table=table, info=info)


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    hist = info.get("score_histogram", {})
    lines = [f"## Educational-value annotations (`{record['folder']}`)", "",
             f"{info.get('sampled', 0):,} sampled documents scored 0-5; prompts: "
             + ", ".join(f"`{k}` ({v})" for k, v in info.get("prompts", {}).items()), "",
             "| score | documents |", "|---:|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in hist.items()]
    return "\n".join(lines)
