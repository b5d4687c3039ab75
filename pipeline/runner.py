"""Ray execution: the only module that imports Ray.

``ray.init()`` with no address starts a local Ray on this machine; ``RAY_ADDRESS`` (or
``[ray] address``) joins a cluster, which is what ``ray job submit -- pipeline run ...`` does.
Every stage streams through Ray Data into :class:`StageSink`, whose write tasks split each block
into kept rows (``part-NNNNN.parquet``) and rejected rows, and report counts by reason. File
names come from the task index, so a task retried after a worker died rewrites the same files.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasink, Datasource, ReadTask

from pipeline import io
from pipeline.endpoint import EndpointError
from pipeline.join import DecisionIndex
from pipeline.llm import LLMClient, LLMConfig, Request, Result
from pipeline.stage import BOOKKEEPING, DROP_REASON, STAGE_COLUMN, Decisions, GlobalContext

log = logging.getLogger("pipeline")
ROW_GROUP_BYTES = 16 * 2**20
PROGRESS_EVERY_S = 15.0


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                log_file: Path | None = None) -> Iterator[dict]:
    """Join ``address``/``RAY_ADDRESS`` or start a local Ray; reuse one already started here."""
    handler = logging.FileHandler(log_file) if log_file else None
    if handler:
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("ray", "ray.data"):
            logging.getLogger(name).addHandler(handler)
    owned = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(address=address, logging_level=logging.ERROR,
                                      log_to_driver=False, configure_logging=True)
        if not address:
            kwargs.update(num_cpus=num_cpus, include_dashboard=False)
        ray.init(**kwargs)
        owned = True
    _quiet_ray_data()
    try:
        yield {"address": address or "local", "cpus": int(ray.cluster_resources().get("CPU", 1))}
    finally:
        if owned:
            ray.shutdown()
        if handler:
            for name in ("ray", "ray.data"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _quiet_ray_data() -> None:
    """Ray Data logs go to the run's log file; the terminal gets one progress bar (TTY only)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)  # errors reach us as exceptions; details in the log


class StageSink(Datasink):
    """Writes kept rows to ``kept_dir`` and rejected rows (plus ``stage``) to ``rejected_dir``."""

    def __init__(self, kept_dir: Path, rejected_dir: Path, stage: str,
                 rejected_only: tuple[str, ...] = ()):
        self.kept_dir, self.rejected_dir, self.stage = str(kept_dir), str(rejected_dir), stage
        self.drop_from_kept = tuple(BOOKKEEPING) + tuple(rejected_only)
        self.totals: dict | None = None

    def write(self, blocks, ctx) -> dict:
        name = f"part-{ctx.task_idx:05d}.parquet"
        writers: dict[str, tuple[pq.ParquetWriter, Path, Path]] = {}
        rows, kept, schema = 0, 0, None
        reasons: Counter = Counter()
        try:
            for block in blocks:
                if not isinstance(block, pa.Table):
                    block = pa.Table.from_pandas(block, preserve_index=False)
                if block.num_rows == 0:
                    continue
                if DROP_REASON not in block.column_names:
                    raise ValueError(f"stage {self.stage!r} returned a batch without {DROP_REASON}")
                rows += block.num_rows
                mask = pc.is_null(block.column(DROP_REASON))
                good = block.filter(mask).drop_columns(
                    [c for c in self.drop_from_kept if c in block.column_names])
                bad = block.filter(pc.invert(mask))
                bad = bad.append_column(STAGE_COLUMN, pa.array([self.stage] * bad.num_rows, pa.string()))
                kept += good.num_rows
                schema = schema or good.schema
                reasons.update(bad.column(DROP_REASON).to_pylist())
                for key, part, folder in (("kept", good, self.kept_dir), ("rej", bad, self.rejected_dir)):
                    if part.num_rows:
                        self._append(writers, key, part, Path(folder) / name)
        finally:
            for writer, tmp, final in writers.values():
                writer.close()
                os.replace(tmp, final)
        return {"rows": rows, "kept": kept, "reasons": dict(reasons), "schema": schema}

    @staticmethod
    def _append(writers: dict, key: str, table: pa.Table, final: Path) -> None:
        if key not in writers:
            tmp = io.temp_sibling(final)
            writers[key] = (pq.ParquetWriter(tmp, table.schema, compression="zstd"), tmp, final)
        writer = writers[key][0]
        if table.schema != writer.schema:
            try:
                table = table.select(writer.schema.names).cast(writer.schema)
            except (pa.ArrowInvalid, KeyError, ValueError) as exc:
                raise ValueError(f"batches of one stage must share a schema: {exc}") from exc
        # row groups of about ROW_GROUP_BYTES: the unit later stages split their reads by
        rows = max(1, int(table.num_rows * ROW_GROUP_BYTES / max(1, table.nbytes)))
        for start in range(0, table.num_rows, rows):
            writer.write_table(table.slice(start, rows))

    def on_write_complete(self, write_result) -> None:
        totals = {"rows": 0, "kept": 0, "reasons": Counter(), "schema": None}
        for part in write_result.write_returns:
            totals["schema"] = totals["schema"] or part["schema"]
            totals["rows"] += part["rows"]
            totals["kept"] += part["kept"]
            totals["reasons"].update(part["reasons"])
        totals["reasons"] = dict(totals["reasons"])
        self.totals = totals


@ray.remote(num_cpus=0, max_concurrency=1024)
class LLMActor:
    """The run's one LLM client: every worker's requests share its concurrency limit and cache."""

    def __init__(self, config: LLMConfig, base_url: str, cache_path: str | None, embedded: bool,
                 log: str | None):
        self.client = LLMClient(config, base_url, Path(cache_path) if cache_path else None,
                                embedded, log)

    async def many(self, requests: list[Request], stage: str, model: Any = None) -> list[Result]:
        return await self.client.many(requests, stage, model)

    def usage(self, stage: str | None = None) -> list[dict]:
        return self.client.usage_report(stage)

    def progress(self, stage: str) -> list[int]:
        return self.client.progress.get(stage, [0, 0])

    def events(self) -> list[str]:
        return list(self.client.events)

    def endpoint_failure(self) -> str | None:
        """The circuit breaker's message once the endpoint has failed, else None."""
        opened = self.client.breaker.opened
        return str(opened) if opened is not None else None


class ActorLLM:
    """What a stage receives as ``llm``: ``llm.chat(requests, model=None) -> list[Result]``."""

    def __init__(self, handle: Any, stage: str, model_name: str):
        self.handle, self.stage, self.model_name = handle, stage, model_name

    def chat(self, requests: list[Request], model: Any = None) -> list[Result]:
        ref = self.handle.many.remote(requests, self.stage, model)
        started = time.time()
        while not ray.wait([ref], timeout=PROGRESS_EVERY_S)[0]:  # long LLM work shows progress
            done, asked = ray.get(self.handle.progress.remote(self.stage))
            log.info("%s: %d/%d LLM calls answered", self.stage, done, asked)
            print(f"  {self.stage}: {done:,}/{asked:,} LLM calls answered, "
                  f"{time.time() - started:.0f}s", file=sys.stderr, flush=True)
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, EndpointError):  # one clear error, not Ray's wrapping
                raise EndpointError(str(exc.cause)) from None
            raise

    def usage(self) -> list[dict]:
        return ray.get(self.handle.usage.remote(self.stage))


def ask(handle: Any, method: str, *args: Any) -> Any:
    """Call one of an actor's methods and wait for the answer."""
    return ray.get(getattr(handle, method).remote(*args))


def start_llm(config: LLMConfig, base_url: str, cache_path: Path | None, embedded: bool,
              log: Path | None = None) -> Any:
    return LLMActor.remote(config, base_url, str(cache_path) if cache_path else None, embedded,
                           str(log) if log else None)


def _stage_module(name: str):
    return importlib.import_module(name)


def _run_process(batch: pa.Table, module: str, config: Any, llm: Any = None) -> pa.Table:
    fn = _stage_module(module).process
    out = fn(batch, config, llm) if llm is not None else fn(batch, config)
    if out.num_rows != batch.num_rows:
        raise ValueError(f"{module}.process returned {out.num_rows} rows for {batch.num_rows}; "
                         "a record stage keeps one row per input row (drop with drop_reason)")
    return out


def _run_read(batch: pa.Table, module: str, config: Any) -> Iterator[pa.Table]:
    reader = _stage_module(module)
    for unit in batch.column("unit").to_pylist():
        yield from reader.read(json.loads(unit), config)


class RowGroups(Datasource):
    """Parquet parts as runs of row groups, one read task per run (Ray Data reads a file in one task)."""

    def __init__(self, files: list[Path], columns: list[str] | None):
        self.columns = columns
        self.groups = [(str(f), g, meta.row_group(g).num_rows, meta.row_group(g).total_byte_size)
                       for f in files for meta in [pq.ParquetFile(f).metadata]
                       for g in range(meta.num_row_groups)]

    def estimate_inmemory_data_size(self) -> int:
        return sum(g[3] for g in self.groups)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        runs = np.array_split(np.arange(len(self.groups)), max(1, min(parallelism, len(self.groups))))
        tasks = []
        for run in (list(r) for r in runs if len(r)):
            part = [self.groups[i] for i in run]
            meta = BlockMetadata(num_rows=sum(p[2] for p in part), size_bytes=sum(p[3] for p in part),
                                 input_files=sorted({p[0] for p in part}), exec_stats=None)
            tasks.append(ReadTask(functools.partial(_read_groups, part, self.columns), meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def _read_groups(part: list[tuple], columns: list[str] | None) -> Iterator[pa.Table]:
    for path, group, _, _ in part:
        yield pq.ParquetFile(path).read_row_group(group, columns=columns)


def read_parts(files: list[Path], columns: list[str] | None = None) -> ray.data.Dataset:
    """Read Parquet parts as at least 4 blocks per CPU where row groups allow, so one big part
    file still spreads over every worker (Ray Data's own reader splits by file only)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    source = RowGroups(files, columns)
    blocks = max(len(files), min(len(source.groups), 4 * cpus))
    return ray.data.read_datasource(source, override_num_blocks=blocks)


_DECISIONS: dict[str, DecisionIndex] = {}  # one per worker process: the stage's Decisions


def _join_decisions(batch: pa.Table, ref: Any) -> pa.Table:
    key = ref.hex()
    if key not in _DECISIONS:
        _DECISIONS.clear()
        _DECISIONS[key] = DecisionIndex(ray.get(ref))
    return _DECISIONS[key].join(batch)


class Executor:
    """Runs one stage on Ray Data into a sink; returns the sink's totals.

    Ray Data retries a task whose worker process died (``max_retries=-1`` by default); an
    exception raised by stage code is not retried and fails the stage.
    """

    def __init__(self, batch_size: int, llm_handle: Callable[[], Any] | None = None):
        """``llm_handle()`` returns the run's :class:`LLMActor`, starting it on first use."""
        self.batch_size, self.llm_handle = batch_size, llm_handle

    def llm_for(self, stage: str, model_name: str) -> ActorLLM | None:
        return ActorLLM(self.llm_handle(), stage, model_name) if self.llm_handle is not None else None

    def _write(self, ds: ray.data.Dataset, kept_dir: Path, rejected_dir: Path, stage: str,
               rejected_only: tuple[str, ...] = ()) -> dict:
        kept_dir.mkdir(parents=True, exist_ok=True)
        rejected_dir.mkdir(parents=True, exist_ok=True)
        sink = StageSink(kept_dir, rejected_dir, stage, rejected_only)
        ds.set_name(stage)  # what the progress bar shows
        ds.write_datasink(sink)
        return sink.totals or {"rows": 0, "kept": 0, "reasons": {}}

    def source(self, units: list[dict], module: str, config: Any, kept_dir: Path,
               rejected_dir: Path, stage: str) -> dict:
        items = [{"unit": json.dumps(u)} for u in units]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        ds = ds.map_batches(_run_read, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"module": module, "config": config})
        return self._write(ds, kept_dir, rejected_dir, stage)

    def record(self, files: list[Path], module: str, config: Any, kept_dir: Path,
               rejected_dir: Path, stage: str, llm: Any = None) -> dict:
        ds = read_parts(files)
        ds = ds.map_batches(_run_process, batch_size=self.batch_size, batch_format="pyarrow",
                            fn_kwargs={"module": module, "config": config, "llm": llm})
        return self._write(ds, kept_dir, rejected_dir, stage)

    def decisions(self, files: list[Path], decisions: Decisions, kept_dir: Path,
                  rejected_dir: Path, stage: str) -> dict:
        table = decisions.table
        if "id" not in table.column_names or DROP_REASON not in table.column_names:
            raise ValueError(f"stage {stage!r}: Decisions need 'id' and '{DROP_REASON}' columns")
        if pc.count_distinct(table.column("id")).as_py() != table.num_rows:
            raise ValueError(f"stage {stage!r}: Decisions hold an id more than once")
        ref = ray.put(table)
        ds = read_parts(files)
        ds = ds.map_batches(_join_decisions, batch_size=self.batch_size, batch_format="pyarrow",
                            fn_kwargs={"ref": ref})
        return self._write(ds, kept_dir, rejected_dir, stage, tuple(decisions.rejected_only))

    def records(self, table: pa.Table, kept_dir: Path, rejected_dir: Path, stage: str) -> dict:
        if DROP_REASON not in table.column_names:
            raise ValueError(f"stage {stage!r}: Records need a '{DROP_REASON}' column")
        if table.num_rows == 0:
            kept = table.drop_columns([c for c in BOOKKEEPING if c in table.column_names])
            return {"rows": 0, "kept": 0, "reasons": {}, "schema": kept.schema}
        return self._write(ray.data.from_arrow(table), kept_dir, rejected_dir, stage)


class RayGlobalContext(GlobalContext):
    def __init__(self, input_files: list[Path], scratch_dir: Path, seed: int, batch_size: int,
                 llm: Any = None):
        self.input_files, self.scratch_dir, self.seed = input_files, scratch_dir, seed
        self.batch_size, self.llm = batch_size, llm

    def read(self, columns: list[str] | None = None, ids: list[str] | None = None) -> pa.Table:
        if not self.input_files:
            return pa.table({})
        dataset = pads.dataset([str(f) for f in self.input_files], format="parquet")
        where = pc.field("id").isin(pa.array(ids, pa.string())) if ids is not None else None
        return dataset.to_table(columns=columns, filter=where)

    def map(self, fn: Callable[..., pa.Table], columns: list[str] | None = None,
            files: list[Path] | None = None, **kwargs: Any) -> pa.Table:
        files = self.input_files if files is None else files
        if not files:
            return pa.table({})
        ds = read_parts(files, columns)
        ds = ds.map_batches(fn, batch_size=self.batch_size, batch_format="pyarrow", fn_kwargs=kwargs)
        tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
        return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})

    def run_tasks(self, fn: Callable[..., Any], items: list, **kwargs: Any) -> list:
        remote = ray.remote(fn)
        shared = {k: ray.put(v) for k, v in kwargs.items()}
        return ray.get([remote.remote(item, **shared) for item in items])
