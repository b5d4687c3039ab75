"""Exact deduplication: one document per ``content_hash`` (the hash of ingest's normalized text).

Pythia and every large corpus since deduplicate before anything else (Biderman et al. 2023;
Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better"). Which copy survives
is a keep policy (``first``, ``lowest_id``, ``longest``, ``highest``; see ``stages/_clusters.py``).

Drop reason: ``exact_duplicate``, with ``duplicate_of`` naming the kept id. Kept rows gain
``copies``, the size of their group, so a later mix can upsample by it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.stage import DROP_REASON, Decisions, GlobalContext
from stages._clusters import keep_order

VERSION = "1"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = "content_hash"
    keep: Literal["first", "lowest_id", "longest", "highest"] = "first"
    column: str | None = None

    @model_validator(mode="after")
    def _column_for_highest(self) -> Config:
        if self.keep == "highest" and not self.column:
            raise ValueError("keep = 'highest' needs column = '<name of a numeric column>'")
        return self


def decide(frame: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Rank each group by the policy; every row but the best becomes a duplicate of it."""
    ranked = keep_order(frame, config.keep, config.column)
    # a null key (no hash) groups with nothing: give each such row a key of its own
    ranked = ranked.with_columns(pl.col(config.key).cast(pl.String)
                                 .fill_null(pl.lit("\0") + pl.col("id")))
    grouped = ranked.with_columns(
        pl.col("id").first().over(config.key, order_by="rank").alias("keeper"),
        pl.len().over(config.key).alias("copies").cast(pl.Int64),
    )
    dropped = pl.col("id") != pl.col("keeper")
    return grouped.sort("rank").select(
        "id",
        pl.when(dropped).then(pl.lit("exact_duplicate")).otherwise(None).alias(DROP_REASON),
        pl.when(dropped).then(pl.col("keeper")).otherwise(None).alias("duplicate_of"),
        "copies",
    )


def run(ctx: GlobalContext, config: Config) -> Decisions:
    columns = ["id", config.key] + {"longest": ["n_chars"], "highest": [config.column]}.get(config.keep, [])
    frame = pl.from_arrow(ctx.read(columns))
    table = decide(frame, config).to_arrow()
    dupes = table.num_rows - pl.from_arrow(table).filter(pl.col(DROP_REASON).is_null()).height
    groups = frame.select(pl.col(config.key).n_unique()).item() if frame.height else 0
    return Decisions(table=table.cast(pa.schema([("id", pa.string()), (DROP_REASON, pa.string()),
                                                 ("duplicate_of", pa.string()),
                                                 ("copies", pa.int64())])),
                     info={"duplicates": dupes, "groups": groups, "keep": config.keep},
                     rejected_only=("duplicate_of",))


def card_section(record: dict, plot_dir: Path) -> str:
    info = record.get("info", {})
    return (f"## Exact deduplication (`{record['folder']}`)\n\n"
            f"{info.get('duplicates', 0):,} exact copies removed; {info.get('groups', 0):,} distinct "
            f"texts kept, one per `content_hash`, by policy `{info.get('keep')}`.")
