"""Preference pairs for DPO: k sampled answers per prompt, an LLM judge, best vs worst.

For every input row the prompt is ``prompt_columns`` joined by blank lines (empty ones left
out). The teacher samples ``k`` answers at ``temperature`` > 0, as ``k`` requests with their own
seeds (``sampling = "requests"``, which every endpoint honours) or one request with ``n = k``
(``"n"``; llama.cpp's server ignores ``n`` and answers once). Each distinct answer is rated 1-10
by the judge on the rubric in ``prompts/preference_judge.txt`` (instruction following,
correctness, helpfulness, clarity; validated JSON), pointwise as in UltraFeedback (Cui et al.
2023). The best-rated answer is ``chosen``; ``rejected`` is the worst-rated one (``"worst"``, the
widest margin) or, as UltraFeedback's binarization for Zephyr did (Tunstall et al. 2023: "one of
the remaining three at random"), a random one of the others (``"random"``, seeded by the row).
Pairs whose scores are less than ``min_margin`` apart are ties.

Output: the input row plus ``prompt``, ``chosen``, ``rejected``, ``chosen_score``,
``rejected_score``, ``scores`` (every judged answer's), ``completions`` (distinct answers),
``model``, ``judge_model``, ``judge_prompt``, ``judge_prompt_hash``, ``temperature``, ``seed``.
The judge is the run's ``[llm]`` endpoint and model.

Drop reasons: ``generation_failed`` (fewer than two usable answers: errors, cut-off or empty
replies, listed in the detail), ``identical_completions``, ``judge_failed`` (fewer than two
answers judged), ``tie`` (best and worst score less than ``min_margin`` apart).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pipeline import prompts
from pipeline.llm import Request
from pipeline.stage import with_reasons
from stages import _synth

VERSION = "1"
USES_LLM = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_columns: list[str] = Field(default_factory=lambda: ["instruction", "input"])
    k: int = Field(default=4, ge=2)
    sampling: Literal["requests", "n"] = "requests"
    temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=16)
    truncated: Literal["reject", "trim"] = "reject"
    judge_prompt: str = "preference_judge"
    judge_max_tokens: int = Field(default=200, ge=16)
    min_margin: int = Field(default=1, ge=1)
    rejected: Literal["worst", "random"] = "worst"
    seed: int = 0


class Judgement(BaseModel):
    rationale: str
    score: int = Field(ge=1, le=10)


def hash_extra(config: Config) -> str:
    return prompts.load(config.judge_prompt).hash


def sample(prompts_: list[str], ids: list[str], config: Config, llm) -> list[list[tuple]]:
    """Per prompt, ``k`` ``(text, reason, detail)`` completions."""
    def ask(text: str, seed: int, n: int) -> Request:
        return Request([{"role": "user", "content": text}], temperature=config.temperature,
                       max_tokens=config.max_tokens, n=n, seed=seed)

    if config.sampling == "n":
        results = llm.chat([ask(p, _synth.derive_seed(config.seed, i), config.k)
                            for p, i in zip(prompts_, ids)])
        return [[_synth.completion(r, config.truncated, j) for j in range(config.k)] for r in results]
    results = llm.chat([ask(p, _synth.derive_seed(config.seed, i, j), 1)
                        for p, i in zip(prompts_, ids) for j in range(config.k)])
    flat = [_synth.completion(r, config.truncated) for r in results]
    return [flat[n * config.k:(n + 1) * config.k] for n in range(len(prompts_))]


def decide(texts: list[str], scores: list[int | None], errors: list[str], min_margin: int,
           rejected: str = "worst", seed: int = 0) -> tuple[dict, str | None, str | None]:
    """Chosen = the first best-scored answer; rejected = the first worst-scored one, or a
    random other one (``rejected = "random"``, drawn with ``seed``)."""
    judged = [(s, t) for s, t in zip(scores, texts) if s is not None]
    if len(judged) < 2:
        return {}, "judge_failed", "; ".join(errors)[:500]
    best = max(judged, key=lambda st: st[0])
    others = [st for st in judged if st is not best]
    worst = min(judged, key=lambda st: st[0]) if rejected == "worst" else \
        random.Random(seed).choice(others)
    values = {"chosen": best[1], "rejected": worst[1], "chosen_score": best[0],
              "rejected_score": worst[0]}
    if best[0] - worst[0] < min_margin:
        return values, "tie", f"scores {[s for s, _ in judged]}"
    return values, None, None


def process(batch: pa.Table, config: Config, llm) -> pa.Table:
    template = prompts.load(config.judge_prompt)
    parts = [_synth.text_column(batch, c, "preferences") for c in config.prompt_columns]
    prompts_ = ["\n\n".join(p for p in row if p.strip()) for row in zip(*parts)]
    ids = batch.column("id").to_pylist()
    samples = sample(prompts_, ids, config, llm) if ids else []
    distinct = [list(dict.fromkeys(t for t, _, _ in row if t)) for row in samples]
    asks = [(n, text) for n, texts in enumerate(distinct) if len(texts) >= 2 for text in texts]
    verdicts = llm.chat([Request([{"role": "user", "content": template.render(
        prompt=prompts_[n], response=text)}], temperature=0.0, max_tokens=config.judge_max_tokens)
        for n, text in asks], Judgement) if asks else []
    by_prompt: dict[int, list] = {}
    for (n, _), verdict in zip(asks, verdicts):
        by_prompt.setdefault(n, []).append(verdict)
    rows, reasons, details = [], [], []
    for n, row in enumerate(samples):
        problems = [f"{reason}: {detail or ''}"[:120] for _, reason, detail in row if reason]
        if len(distinct[n]) < 2:
            usable = sum(1 for t, _, _ in row if t)
            reason = "identical_completions" if usable >= 2 else "generation_failed"
            rows.append({"scores": []})
            reasons.append(reason)
            details.append("; ".join(problems)[:500] or None)
            continue
        judged = by_prompt[n]
        scores = [v.parsed.score if v.ok else None for v in judged]
        errors = [f"{v.error}: {v.detail or ''}"[:120] for v in judged if not v.ok]
        values, reason, detail = decide(distinct[n], scores, errors, config.min_margin,
                                        config.rejected, _synth.derive_seed(config.seed, ids[n]))
        rows.append({**values, "scores": [s for s in scores if s is not None]})
        reasons.append(reason)
        details.append(detail)
    num = batch.num_rows
    out = _synth.set_columns(batch, {
        "prompt": pa.array(prompts_, pa.string()),
        "chosen": pa.array([r.get("chosen") for r in rows], pa.string()),
        "rejected": pa.array([r.get("rejected") for r in rows], pa.string()),
        "chosen_score": pa.array([r.get("chosen_score") for r in rows], pa.int64()),
        "rejected_score": pa.array([r.get("rejected_score") for r in rows], pa.int64()),
        "scores": pa.array([r["scores"] for r in rows], pa.list_(pa.int64())),
        "completions": pa.array([len(d) for d in distinct], pa.int64()),
        "model": pa.array([getattr(llm, "model_name", "")] * num, pa.string()),
        "judge_model": pa.array([getattr(llm, "model_name", "")] * num, pa.string()),
        "judge_prompt": pa.array([template.name] * num, pa.string()),
        "judge_prompt_hash": pa.array([template.hash] * num, pa.string()),
        "temperature": pa.array([config.temperature] * num, pa.float64()),
        "seed": pa.array([_synth.derive_seed(config.seed, i) for i in ids], pa.int64()),
    })
    if "prompt_hash" in out.column_names:  # an upstream template's: not this row's prompt
        out = out.drop_columns(["prompt_hash"])
    return with_reasons(out, reasons, details)


def card_section(record: dict, plot_dir: Path) -> str | None:
    cfg = record.get("config", {})
    template = prompts.load(cfg.get("judge_prompt", "preference_judge"))
    summary = [f"{cfg.get('k')} answers per prompt at temperature {cfg.get('temperature')} "
               f"(`{cfg.get('sampling')}` sampling), each rated 1-10 by the judge; chosen = best, "
               f"rejected = worst, pairs closer than {cfg.get('min_margin')} point(s) dropped as "
               f"ties. {record.get('rows_kept', 0):,} pairs kept of {record.get('rows_in', 0):,} "
               "prompts."]
    return _synth.card("Preference pairs", record, summary, [template])
