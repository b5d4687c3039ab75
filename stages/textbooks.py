"""Synthetic textbook sections (phi-1.5, Li et al. 2023; Cosmopedia, Ben Allal et al. 2024).

Each section is written from a subject (an excerpt of a seed document from the stage's input,
the curated corpus, or a topic from ``topics``) x an audience x a style, so outputs are diverse
by construction: combinations are cycled through a seeded shuffle of audiences x styles, every
one before any repeats, and each subject is used once before any is reused. Cosmopedia found
that varying audience and style this way is what keeps millions of generations from collapsing
onto a few templates. The defaults are its four audiences and four formats, in our own words.

Output columns (ready for ``dedup_exact`` and ``dedup_minhash`` after this stage, with
``input = "textbooks"``): ``id``, ``text``, ``content_hash``, ``n_chars``, ``audience``,
``style``, ``topic`` or ``seed_doc``, ``model``, ``prompt``/``prompt_hash`` (the section
template + the subject template), ``temperature``, ``seed``.

Drop reasons: ``too_short`` (under ``min_chars``: phi-1.5 and Cosmopedia sections run to
hundreds of words), ``llm_truncated`` (``truncated = "trim"`` keeps a cut section up to its
last whole sentence instead), ``empty_completion``, and the LLM layer's.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from pydantic import Field

from pipeline import prompts
from pipeline.stage import GlobalContext, Records
from stages import _synth

VERSION = "1"
USES_LLM = True

AUDIENCES = {
    "young children": "young children: use simple words, short sentences and everyday examples, "
                      "and no technical terms",
    "high school students": "high school students: assume school knowledge, and introduce every "
                            "new term with a definition and an example",
    "college students": "college students: be rigorous and go in depth, with worked examples and "
                        "links to related ideas",
    "professionals": "professionals: be precise and brief, and focus on practical use, "
                     "trade-offs and pitfalls",
}
STYLES = {
    "textbook": "a section of a textbook, whose explanations build on each other and end with a "
                "worked example",
    "tutorial": "a hands-on tutorial with a clear goal and numbered steps, saying what the reader "
                "should see after each step",
    "blog": "an engaging blog post with a hook, a conversational tone and a concrete takeaway",
    "wikihow": "a wikiHow-style article: a short introduction, then steps, each with a one-line "
               "summary followed by an explanation",
}
SCHEMA = pa.schema([
    ("id", pa.string()), ("text", pa.string()), ("content_hash", pa.string()),
    ("n_chars", pa.int64()), ("audience", pa.string()), ("style", pa.string()),
    ("topic", pa.string()), ("seed_doc", pa.string()), ("model", pa.string()),
    ("prompt", pa.string()), ("prompt_hash", pa.string()), ("temperature", pa.float64()),
    ("seed", pa.int64()),
])


class Config(_synth.GenerationConfig):
    audiences: dict[str, str] = Field(default_factory=lambda: dict(AUDIENCES))
    styles: dict[str, str] = Field(default_factory=lambda: dict(STYLES))
    min_chars: int = Field(default=1000, ge=0)
    prompt: str = "textbook"


def hash_extra(config: Config) -> list[str]:
    return [t.hash for t in _synth.load_prompts(config.prompt, *_synth.SUBJECT_PROMPTS)]


def run(ctx: GlobalContext, config: Config) -> Records:
    template = prompts.load(config.prompt)
    items = _synth.plan(ctx, config, list(config.audiences), list(config.styles))
    answers = _synth.generate(ctx, config, template, items,
                              audience=lambda it: config.audiences[it["axis0"]],
                              style=lambda it: config.styles[it["axis1"]])
    model = getattr(ctx.llm, "model_name", "")
    rows = []
    for item, (text, reason, detail) in zip(items, answers):
        row = {"id": f"textbook-{item['index']:05d}", "audience": item["axis0"],
               "style": item["axis1"], **_synth.item_row(item, template, config, model)}
        if text is not None:
            row.update(text=text, content_hash=_synth.content_hash(text), n_chars=len(text))
            if len(text) < config.min_chars:
                reason, detail = "too_short", f"{len(text)} characters"
        row.update(drop_reason=reason, drop_detail=detail)
        rows.append(row)
    kept = [r for r in rows if r["drop_reason"] is None]
    grid: dict[str, int] = {}
    for r in kept:
        grid[f"{r['audience']} / {r['style']}"] = grid.get(f"{r['audience']} / {r['style']}", 0) + 1
    info = {"prompts": {t.name: t.hash for t in
                        _synth.load_prompts(config.prompt, *_synth.SUBJECT_PROMPTS)},
            "requested": len(items), "combinations": dict(sorted(grid.items())),
            "subjects": "input documents" if config.from_input else f"{len(config.topics)} topics"}
    return Records(table=_synth.table(rows, SCHEMA), info=info)


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    summary = [f"{info.get('requested', 0):,} sections requested from {info.get('subjects')} x "
               "audience x style; kept sections by combination:", "",
               "| audience / style | sections |", "|---|---:|"]
    summary += [f"| {k} | {v:,} |" for k, v in info.get("combinations", {}).items()]
    return _synth.card("Synthetic textbooks", record, summary)
