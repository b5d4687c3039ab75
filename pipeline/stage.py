"""Stage contracts. Stage modules know no Ray: they implement one of three small shapes.

Every stage module has a pydantic ``Config`` (unknown keys are errors) and an optional
``VERSION`` string (bump it when the stage's output changes for the same config; it is part of
the config hash). Then exactly one of:

- **source** stage: ``plan(sources, config) -> list[dict] | Plan`` splits the inputs into
  JSON-able work units (a :class:`Plan` adds ``info`` for the ledger, e.g. links not followed),
  and ``read(unit, config) -> Iterator[pa.Table]`` turns one unit into record batches.
- **record** stage: ``process(batch: pa.Table, config) -> pa.Table``, a pure function returning
  the batch, one row per input row, with a ``drop_reason`` column (null = kept). A stage that
  sets ``USES_LLM = True`` gets a third argument ``llm`` (``llm.chat(requests, model=None)``,
  see ``pipeline/llm.py``); global stages find it as ``ctx.llm``.
- **global** stage: ``run(ctx: GlobalContext, config) -> Decisions | Records`` sees the whole
  input (dedup clustering, selection, bootstrapping loops).

Every batch a stage returns carries ``drop_reason`` (short snake_case, optionally
``reason:qualifier``) and may carry ``drop_detail`` (free text: the error, the line). The runner
writes kept rows (without those two columns) to the stage output and the others, with a
``stage`` column, to ``rejected/``. A module may also define ``card_section(record, plot_dir)``
returning Markdown for the dataset card, from the ``info`` it stored in its ledger record, and
``hash_extra(config)`` returning anything else its output depends on (a prompt template's hash),
and ``uses_llm(config)`` when only some configs call the LLM (no teacher starts otherwise).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

DROP_REASON = "drop_reason"
DROP_DETAIL = "drop_detail"
STAGE_COLUMN = "stage"
BOOKKEEPING = (DROP_REASON, DROP_DETAIL)


class StageLoadError(ImportError):
    """The stage kind names no importable module with a valid stage contract."""


def role_of(module: ModuleType) -> str:
    roles = [r for r, attr in (("source", "read"), ("record", "process"), ("global", "run"))
             if callable(getattr(module, attr, None))]
    if len(roles) != 1:
        raise StageLoadError(
            f"{module.__name__} must define exactly one of read(), process() or run(); has {roles}"
        )
    return roles[0]


def load_stage_module(kind: str) -> ModuleType:
    """Import ``stages.<kind>``, or a dotted module path for stages outside this project."""
    name = kind if "." in kind else f"stages.{kind}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise StageLoadError(f"unknown stage kind {kind!r} (no module {name})") from exc
        raise
    if not hasattr(module, "Config"):
        raise StageLoadError(f"{name} has no Config model")
    role_of(module)
    if role_of(module) == "source" and not callable(getattr(module, "plan", None)):
        raise StageLoadError(f"{name} defines read() but no plan()")
    return module


def uses_llm(module: ModuleType, config: Any) -> bool:
    """Whether a stage calls the LLM with this config: ``uses_llm(config)`` if the module
    defines it (e.g. a judge that can be switched off), else its ``USES_LLM`` flag."""
    hook = getattr(module, "uses_llm", None)
    return bool(hook(config)) if callable(hook) else bool(getattr(module, "USES_LLM", False))


def with_reasons(table: pa.Table, reasons: pa.Array | list, details: Any = None) -> pa.Table:
    """Attach (or replace) the ``drop_reason``/``drop_detail`` columns of a batch."""
    reasons = pa.array(reasons, pa.string()) if isinstance(reasons, list) else reasons.cast(pa.string())
    out = _set(table, DROP_REASON, reasons)
    if details is not None:
        details = pa.array(details, pa.string()) if isinstance(details, list) else details
        out = _set(out, DROP_DETAIL, details.cast(pa.string()))
    return out


def _set(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


@dataclass
class Plan:
    """A source stage's work units, with what planning found for the ledger's ``info``."""

    units: list[dict]
    info: dict = field(default_factory=dict)


@dataclass
class Decisions:
    """A global stage's verdict per input id: ``id``, ``drop_reason`` (+ any extra columns).

    The runner joins it onto the input rows in parallel; ids absent from it are kept unchanged.
    Columns named in ``rejected_only`` (e.g. ``duplicate_of``) are left off the kept rows.
    """

    table: pa.Table
    info: dict = field(default_factory=dict)
    rejected_only: tuple[str, ...] = ()


@dataclass
class Records:
    """A global stage's full output rows (generated records), each with a ``drop_reason``."""

    table: pa.Table
    info: dict = field(default_factory=dict)


class GlobalContext:
    """What a global stage may use; the runner provides the Ray-backed implementation."""

    input_files: list[Path]
    scratch_dir: Path
    seed: int
    llm: Any = None  # for stages with USES_LLM = True: llm.chat(requests, model=None)
    uses: dict[str, list[Path]]  # the output files of the stages named in ``uses = [...]``
    artifact_dir: Path  # runs/NAME/artifacts/NN-stage: models, metrics (kept with the run)

    def read(self, columns: list[str] | None = None, ids: list[str] | None = None) -> pa.Table:
        """The input's ``columns`` (all by default), only the rows with these ``ids`` if given."""
        raise NotImplementedError

    def map(self, fn: Callable[..., pa.Table], columns: list[str] | None = None,
            files: list[Path] | None = None, **kwargs: Any) -> pa.Table:
        """Apply ``fn(batch, **kwargs)`` to every batch of the input (or of ``files``) in
        parallel; concatenate the results. Keep results small: write bulk output to
        ``scratch_dir`` from inside ``fn`` and return counts."""
        raise NotImplementedError

    def run_tasks(self, fn: Callable[..., Any], items: list, **kwargs: Any) -> list:
        """Call ``fn(item, **kwargs)`` for every item in parallel; results in item order."""
        raise NotImplementedError
