"""What the synthetic-data stages share: seeds, completions checks, provenance, rows, cards."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import prompts
from pipeline.llm import Request, Result
from pipeline.stage import DROP_DETAIL, DROP_REASON, GlobalContext


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (request seeds, sampling): reruns ask the same."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def rng(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))


def weighted_pick(key: object, names: list[str], weights: list[float]) -> str:
    """A name drawn with probability proportional to its weight, fixed by ``key``."""
    return rng(key).choices(names, weights=weights, k=1)[0]


def trim_to_sentence(text: str) -> str:
    """A cut-off completion up to its last complete paragraph or sentence ('' if none)."""
    text = text.rstrip()
    cut = text.rfind("\n\n")
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]?(?=\s|$)", text)]
    last = max([cut] + ends)
    return text[:last].rstrip() if last > 0 else ""


def completion(result: Result, truncated: str = "reject",
               index: int = 0) -> tuple[str | None, str | None, str | None]:
    """``(text, reason, detail)`` of one completion: LLM errors, empty replies and cut-off
    replies (``truncated = "reject"``, or ``"trim"`` to the last whole sentence) are reasons."""
    if not result.ok:
        return None, result.error, result.detail
    if index >= len(result.texts):
        return None, "missing_completion", f"{len(result.texts)} choices returned"
    text = (result.texts[index] or "").strip()
    cut = index < len(result.finish_reasons) and result.finish_reasons[index] == "length"
    if cut and truncated == "trim":
        text = trim_to_sentence(text)
    elif cut:
        return None, "llm_truncated", text[-300:]
    if not text:
        return None, "empty_completion", None
    return text, None, None


def content_hash(text: str) -> str:
    """The hash ingest gives ``content_hash``, so exact dedup works on generated text too."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def load_prompts(*names: str) -> list[prompts.Prompt]:
    return [prompts.load(name) for name in names]


def provenance(templates: list[prompts.Prompt]) -> dict[str, str]:
    """``prompt`` and ``prompt_hash`` columns for rows made with these templates, in order."""
    return {"prompt": "+".join(t.name for t in templates),
            "prompt_hash": "+".join(t.hash for t in templates)}


def set_columns(batch: pa.Table, columns: dict[str, pa.Array | list]) -> pa.Table:
    """The batch with these columns replaced, or appended when new."""
    for name, values in columns.items():
        values = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, values)
        else:
            batch = batch.append_column(name, values)
    return batch


def text_column(batch: pa.Table, name: str, stage: str) -> list[str]:
    """A string column of a record stage's input, with an error naming what is there."""
    if name not in batch.column_names:
        raise ValueError(f"{stage}: the input has no column {name!r}; it has {batch.column_names} "
                         f"(set the stage's column keys)")
    return ["" if v is None else str(v) for v in batch.column(name).to_pylist()]


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys are null) as a Records table with the bookkeeping columns."""
    full = pa.schema(list(schema) + [pa.field(DROP_REASON, pa.string()),
                                     pa.field(DROP_DETAIL, pa.string())])
    return pa.Table.from_pylist([{f.name: row.get(f.name) for f in full} for row in rows],
                                schema=full)


def seed_documents(ctx: GlobalContext, column: str, count: int, seed: int,
                   max_chars: int) -> list[dict]:
    """Up to ``count`` input documents (``id``, excerpt), a seeded random sample."""
    frame = pl.from_arrow(ctx.read(["id"]))
    if frame.height == 0:
        return []
    ids = frame.with_columns(pl.col("id").hash(seed=seed).alias("_k")).sort("_k") \
        .head(count)["id"].to_list()
    rows = ctx.read(["id", column], ids=ids).to_pylist()
    order = {doc: i for i, doc in enumerate(ids)}
    rows.sort(key=lambda r: order[r["id"]])
    return [{"id": r["id"], "text": (r[column] or "")[:max_chars]} for r in rows]


def subjects(ctx: GlobalContext, topics: list[str], from_input: bool, text_column: str,
             count: int, seed: int, max_chars: int) -> list[dict]:
    """What each generated item is about: ``{"seed_doc": id, "extract": text}`` from the input
    documents, or ``{"topic": ...}`` from the configured list, cycled to ``count``."""
    if from_input:
        docs = seed_documents(ctx, text_column, count, seed, max_chars)
        items = [{"seed_doc": d["id"], "extract": d["text"], "topic": None} for d in docs
                 if d["text"].strip()]
    else:
        items = [{"seed_doc": None, "extract": None, "topic": t} for t in topics]
    return [items[i % len(items)] for i in range(count)] if items else []


class GenerationConfig(BaseModel):
    """Keys shared by stages that write new documents about topics or seed documents."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=100, ge=1)
    from_input: bool = True  # subjects from input documents; false: from ``topics``
    topics: list[str] = Field(default_factory=list)
    text_column: str = "text"
    extract_chars: int = Field(default=1000, ge=50)  # of a seed document shown in the prompt
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=16)
    truncated: Literal["reject", "trim"] = "reject"
    seed: int = 0

    @model_validator(mode="after")
    def _needs_topics(self):
        if not self.from_input and not self.topics:
            raise ValueError("from_input = false needs topics = [...]")
        return self


SUBJECT_PROMPTS = ("subject_topic", "subject_extract")


def plan(ctx: GlobalContext, config: GenerationConfig, *axes: list[str]) -> list[dict]:
    """One dict per item to generate: its subject (``topic`` or ``seed_doc`` and the rendered
    ``subject``), one value per axis (``axis0``, ``axis1`` ...), its request ``seed`` and the
    subject template used."""
    topic_t, extract_t = load_prompts(*SUBJECT_PROMPTS)
    items = subjects(ctx, config.topics, config.from_input, config.text_column, config.count,
                     config.seed, config.extract_chars)
    out = []
    for i, (item, combo) in enumerate(zip(items, combos(len(items), config.seed, *axes))):
        template = extract_t if item["extract"] is not None else topic_t
        text = template.render(extract=item["extract"]) if item["extract"] is not None \
            else template.render(topic=item["topic"])
        out.append({"index": i, "topic": item["topic"], "seed_doc": item["seed_doc"],
                    "subject": text.strip(), "subject_template": template,
                    "seed": derive_seed(config.seed, i),
                    **{f"axis{k}": v for k, v in enumerate(combo)}})
    return out


def generate(ctx: GlobalContext, config: GenerationConfig, template: prompts.Prompt,
             items: list[dict], **fields) -> list[tuple[str | None, str | None, str | None]]:
    """Render ``template`` per item (``fields`` are callables of the item) and ask the teacher;
    ``(text, reason, detail)`` per item."""
    requests = [Request([{"role": "user", "content": template.render(
        subject=item["subject"], **{k: fn(item) for k, fn in fields.items()})}],
        temperature=config.temperature, max_tokens=config.max_tokens, seed=item["seed"])
        for item in items]
    results = ctx.llm.chat(requests) if requests else []
    return [completion(r, config.truncated) for r in results]


def item_row(item: dict, template: prompts.Prompt, config: GenerationConfig, model: str) -> dict:
    """The provenance columns of a generated item's row."""
    return {"topic": item["topic"], "seed_doc": item["seed_doc"], "model": model,
            "temperature": config.temperature, "seed": item["seed"],
            **provenance([template, item["subject_template"]])}


def combos(count: int, seed: int, *axes: list[str]) -> list[tuple[str, ...]]:
    """``count`` combinations of the axes, cycling through a seeded shuffle of their product,
    so every combination appears before any repeats (diverse by construction)."""
    product = [()]
    for axis in axes:
        product = [p + (a,) for p in product for a in axis]
    rng(seed, "combos").shuffle(product)
    return [product[i % len(product)] for i in range(count)]


def reasons_table(record: dict) -> list[str]:
    reasons = record.get("rejected_by_reason", {})
    if not reasons:
        return []
    lines = ["", "| reason | rows |", "|---|---:|"]
    return lines + [f"| `{k}` | {v:,} |" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])]


def card(title: str, record: dict, summary: list[str],
         templates: list[prompts.Prompt] = ()) -> str:
    """A stage's card section: title, summary lines, the prompts with hashes (from ``info``,
    or ``templates`` for record stages, which store none), the reasons."""
    used = dict(record.get("info", {}).get("prompts", {}))
    used.update({t.name: t.hash for t in templates})
    lines = [f"## {title} (`{record['folder']}`)", ""] + summary
    if used:
        lines += ["", "Prompt templates: " + ", ".join(f"`{k}` ({v})" for k, v in used.items())]
    return "\n".join(lines + reasons_table(record))
