"""A record stage that asks the LLM to score each text (engine tests of the LLM wiring)."""

from __future__ import annotations

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from pipeline.llm import Request
from pipeline.stage import with_reasons

USES_LLM = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = "Score this text from 0 to 5 as JSON: {text}"


class Score(BaseModel):
    score: int
    reason: str


def process(batch: pa.Table, config: Config, llm) -> pa.Table:
    requests = [Request([{"role": "user", "content": config.prompt.format(text=t)}])
                for t in batch.column("text").to_pylist()]
    results = llm.chat(requests, Score)
    scores = [r.parsed.score if r.ok else None for r in results]
    out = batch.append_column("score", pa.array(scores, pa.int64()))
    return with_reasons(out, [r.error for r in results], [r.detail for r in results])
