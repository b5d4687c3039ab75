"""A run: stages in order, resumed from their ledger records, then datasets with their cards.

Run folder::

    runs/NAME/stages/NN-stage/part-*.parquet + _SUCCESS.json   kept rows, ledger record
    runs/NAME/rejected/NN-stage/part-*.parquet                 dropped rows (stage, reason)
    runs/NAME/datasets/DATASET/data/*.parquet + README.md      final outputs with cards
    runs/NAME/logs/run-*.log                                   our log and Ray's

A stage is skipped when its record matches its config hash and its input fingerprint (the
upstream stage's output fingerprint, or the listing of the source files). A stage is written to a
hidden temporary folder and renamed into place only after the ledger checks out, so a half-done
stage never looks finished.

The LLM endpoint (and the embedded teacher) starts when the first stage that calls it runs, so a
rerun whose LLM stages are all unchanged starts none. An endpoint failure stops the run (see
``pipeline/endpoint.py``); ``run-state.json`` records what finished, failed or never started,
and ``RunResult.problems`` what was asked for and not done (the CLI exits non-zero on either).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from pipeline import card, io, ledger, runner
from pipeline.config import PipelineConfig, StageEntry
from pipeline.endpoint import EndpointError
from pipeline.runlog import root_cause, setup_logging, versions
from pipeline.runstate import RunState
from pipeline.serve import TeacherError
from pipeline.service import LLMService
from pipeline.stage import Decisions, Plan, Records, role_of
from pipeline.stage import uses_llm as stage_uses_llm

log = logging.getLogger("pipeline")


LLM_OUTPUT_KEYS = {"base_url", "model", "temperature", "top_p", "max_tokens", "seed", "repair_attempts"}


class RunError(RuntimeError):
    """A run that cannot go on; the message says which stage and what to do."""


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    datasets: dict[str, Path] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    evaluations: dict[str, dict] = field(default_factory=dict)
    ablations: dict[str, Path] = field(default_factory=dict)  # report folders
    problems: list[str] = field(default_factory=list)  # asked for and not done: exit non-zero
    warnings: list[str] = field(default_factory=list)  # not done as the config allows (on_empty)


@dataclass
class _Context:
    """What every stage of one run shares."""

    cfg: PipelineConfig
    executor: runner.Executor
    llm: LLMService
    state: RunState
    console: Console
    result: RunResult
    only: list[str] | None
    force: list[str]


def stage_folder(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / "stages" / f"{index:02d}-{name}"


def _clean_temp(run_dir: Path) -> None:
    for sub in ("stages", "rejected", "datasets"):
        root = run_dir / sub
        if root.is_dir():
            for tmp in root.glob(".*.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def run_pipeline(cfg: PipelineConfig, only: list[str] | None = None, force: list[str] | None = None,
                 console: Console | None = None) -> RunResult:
    console = console or Console(stderr=True)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = setup_logging(run_dir)
    io.write_text_atomic(run_dir / "config.json", json.dumps(cfg.raw, indent=2, default=str))
    for name in (only or []) + (force or []):
        cfg.stage(name)  # unknown names are errors before any work
    _clean_temp(run_dir)
    result = RunResult(run_dir)
    state = RunState(run_dir, [(s.name, stage_folder(run_dir, i, s.name).name)
                               for i, s in enumerate(cfg.stages, start=1)
                               if s.enabled and (only is None or s.name in only)])
    log.info("run %s in %s (log %s)", cfg.run.name, run_dir, log_path)
    try:
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(runner.ray_session(cfg.ray.address, cfg.ray.num_cpus,
                                                             log_path))
            console.print(f"[dim]ray: {session['address']}, {session['cpus']} CPUs; "
                          f"run folder {run_dir}; log {log_path}[/dim]")
            llm = LLMService(cfg, stack, console)
            ctx = _Context(cfg, runner.Executor(cfg.ray.batch_size, llm), llm, state, console,
                           result, only, force or [])
            _stages_and_datasets(ctx)
            if only is None and (cfg.train or cfg.eval or cfg.ablation):
                _train_and_evaluate(cfg, result, console, state)
            if llm.teacher is not None and llm.teacher.state():
                result.warnings.append(llm.teacher.state())
    except KeyboardInterrupt:
        state.finish("interrupted")
        raise
    except Exception as exc:
        state.finish("failed", str(exc) if isinstance(exc, RunError) else root_cause(exc))
        raise
    for text in result.warnings:
        state.warning(text)
        console.print(f"[yellow]warning: {text}[/yellow]")
    if result.problems:
        state.finish("failed", "not done: " + "; ".join(result.problems))
        console.print(f"[bold red]run {cfg.run.name} did not finish:[/bold red] "
                      + "; ".join(result.problems), highlight=False)
    else:
        state.finish("succeeded")
        console.print(f"[bold green]run {cfg.run.name} finished[/bold green]: "
                      f"{len(result.ran)} stage(s) ran, {len(result.skipped)} unchanged, "
                      f"{len(result.datasets)} dataset(s), {len(result.models)} model(s)")
    return result


def _stages_and_datasets(ctx: _Context) -> None:
    cfg, console, result = ctx.cfg, ctx.console, ctx.result
    by_name: dict[str, dict] = {}
    previous: str | None = None
    for index, entry in enumerate(cfg.stages, start=1):
        if not entry.enabled:
            continue
        upstream = entry.input or previous
        record = _stage(ctx, index, entry, upstream, by_name)
        if record is not None:
            by_name[entry.name] = record
        previous = entry.name
    result.records = [by_name[s.name] for s in cfg.stages if s.name in by_name]
    for name, spec in cfg.datasets.items():
        rec = by_name.get(spec.from_stage)
        if rec is None:
            text = f"dataset {name}: its stage {spec.from_stage} has not run"
            (result.problems if ctx.only is None else result.warnings).append(text)
            ctx.state.item("datasets", name, "not published", reason=text)
            continue
        result.datasets[name] = card.publish(cfg, name, spec, rec, result.records)
        ctx.state.item("datasets", name, "published", rows=rec["rows_kept"])
    console.print(ledger.funnel_table(result.records, f"{cfg.run.name}: funnel"))
    for name, path in result.datasets.items():
        console.print(f"dataset [bold]{name}[/bold] -> {path}")


def _train_and_evaluate(cfg: PipelineConfig, result: RunResult, console: Console,
                        state: RunState) -> None:
    """The run's ``[train.*]`` models, then ``[eval]``, then ``[ablation.*]``: after the
    datasets they read."""
    from trainers.run import TrainError, train_all

    skipped: dict[str, str] = {}
    try:
        result.models = train_all(cfg, console=console, skipped=skipped)
        if cfg.eval and cfg.eval.enabled:
            from trainers.evaluate import evaluate_run

            result.evaluations = evaluate_run(cfg, console)
        if cfg.ablation:
            from trainers.ablation import run_ablations

            result.ablations = run_ablations(cfg, console=console)
    except TrainError as exc:
        raise RunError(str(exc)) from exc
    except Exception as exc:
        log.exception("training failed")
        raise RunError(f"training failed: {root_cause(exc)} (finished models are kept; a rerun "
                       "resumes from the last checkpoint)") from exc
    for name, path in result.models.items():
        state.item("models", name, "done", path=str(path))
    for name, path in result.ablations.items():
        state.item("ablations", name, "done", path=str(path / "report.md"))
    for name, reason in skipped.items():
        state.item("models", name, "skipped", reason=reason)
        result.warnings.append(f"model {name} skipped: {reason}")


def _stage(ctx: _Context, index: int, entry: StageEntry, upstream: str | None,
           by_name: dict) -> dict | None:
    cfg, executor, console, result = ctx.cfg, ctx.executor, ctx.console, ctx.result
    only, force = ctx.only, ctx.force
    run_dir = cfg.run_dir
    folder = stage_folder(run_dir, index, entry.name)
    role = role_of(entry.module)
    existing = ledger.read_success(folder)
    if only is not None and entry.name not in only:
        if existing is not None:
            result.skipped.append(entry.name)
        return existing
    units: list[dict] = []
    info: dict = {}
    if role == "source":
        try:
            units = entry.module.plan(cfg.sources, entry.config)
        except io.SourceError as exc:
            raise RunError(f"stage {entry.name!r}: {exc}") from exc
        if isinstance(units, Plan):
            units, info = units.units, dict(units.info)
        input_fp = io.fingerprint(units)
        config_hash = entry.config_hash([s.model_dump(mode="json") for s in cfg.sources])
    else:
        if upstream not in by_name:
            raise RunError(f"stage {entry.name!r} reads {upstream!r}, which has not finished; "
                           f"run it first (--only {upstream}) or drop --only")
        missing = [u for u in entry.uses if u not in by_name]
        if missing:
            raise RunError(f"stage {entry.name!r} uses {missing}, which have not finished; "
                           "run them first or drop --only")
        input_fp = by_name[upstream]["output_fingerprint"]
        if entry.uses:
            input_fp = io.fingerprint([input_fp] + [by_name[u]["output_fingerprint"] for u in entry.uses])
        uses_llm = stage_uses_llm(entry.module, entry.config)
        extra_hook = getattr(entry.module, "hash_extra", None)  # e.g. the prompt template's hash
        config_hash = entry.config_hash([
            cfg.llm.model_dump(include=LLM_OUTPUT_KEYS) if uses_llm else None,
            extra_hook(entry.config) if extra_hook else None])
    if (existing and entry.name not in force and existing.get("config_hash") == config_hash
            and existing.get("input_fingerprint") == input_fp):
        console.print(f"[green]✓[/green] {folder.name}: unchanged, skipped")
        log.info("stage %s skipped (config %s, input %s unchanged)", folder.name, config_hash, input_fp)
        result.skipped.append(entry.name)
        ctx.state.stage(entry.name, "unchanged")
        return existing
    console.print(f"[cyan]▶[/cyan] {folder.name} ({role})")
    log.info("stage %s starts: config %s, input %s", folder.name, config_hash, input_fp)
    rejected = run_dir / "rejected" / folder.name
    tmp_out, tmp_rej = io.temp_sibling(folder), io.temp_sibling(rejected)
    started = time.time()
    ctx.state.stage(entry.name, "running")
    try:
        if role == "source":
            totals = executor.source(units, entry.module.__name__, entry.config, tmp_out, tmp_rej,
                                     entry.name) if units else {"rows": 0, "kept": 0, "reasons": {}}
            rows_in = totals["rows"]
        else:
            input_files = io.parquet_parts(Path(by_name[upstream]["path"]))
            rows_in = sum(pq.ParquetFile(f).metadata.num_rows for f in input_files)
            used = {u: io.parquet_parts(Path(by_name[u]["path"])) for u in entry.uses}
            totals = _run_non_source(cfg, entry, role, input_files, executor, tmp_out, tmp_rej,
                                     info, used, run_dir / "artifacts" / folder.name)
            if totals.pop("generated", False):
                rows_in = totals["rows"]
    except Exception as exc:
        shutil.rmtree(tmp_out, ignore_errors=True)
        shutil.rmtree(tmp_rej, ignore_errors=True)
        log.exception("stage %s failed", folder.name)
        endpoint = ctx.llm.failure()  # the breaker's message, however Ray wrapped the error
        if endpoint or isinstance(exc, EndpointError | TeacherError):
            why = endpoint or str(exc)
        else:
            why = root_cause(exc)
        message = (f"stage {entry.name!r} failed: {why}\n  nothing of the stage was committed; "
                   "fix the cause and rerun to resume")
        ctx.state.stage(entry.name, "failed", error=message)
        raise RunError(message) from exc
    finally:
        ctx.llm.report_events()
    tmp_out.mkdir(parents=True, exist_ok=True)
    tmp_rej.mkdir(parents=True, exist_ok=True)
    parts = io.parquet_parts(tmp_out)
    if not parts:  # an empty output still has a schema (a stage with no input: its input's)
        schema = totals.get("schema") or (io.output_schema(Path(by_name[upstream]["path"]))
                                          if upstream in by_name else None)
        if schema is not None:
            io.write_schema(tmp_out, schema)
    record = {
        "stage": entry.name, "folder": folder.name, "index": index, "kind": entry.kind,
        "role": role, "input": upstream, "config_hash": config_hash, "input_fingerprint": input_fp,
        "config": entry.config.model_dump(mode="json"),
        "rows_in": rows_in, "rows_kept": totals["kept"], "rows_rejected": totals["rows"] - totals["kept"],
        "rejected_by_reason": ledger.group_reasons(totals["reasons"]),
        "output_fingerprint": io.fingerprint([config_hash, input_fp,
                                              [(p.name, p.stat().st_size) for p in parts]]),
        "bytes_kept": sum(p.stat().st_size for p in parts),
        "wall_s": round(time.time() - started, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(), "info": info, "path": str(folder),
    }
    try:
        ledger.write_success(tmp_out, record)
    except ledger.LedgerError:
        shutil.rmtree(tmp_out, ignore_errors=True)
        shutil.rmtree(tmp_rej, ignore_errors=True)
        raise
    _replace_dir(tmp_rej, rejected)
    _replace_dir(tmp_out, folder)
    log.info("stage %s done: %s", folder.name, {k: record[k] for k in
                                                ("rows_in", "rows_kept", "rows_rejected", "wall_s")})
    console.print(f"  {record['rows_in']:,} in, {record['rows_kept']:,} kept, "
                  f"{record['rows_rejected']:,} rejected in {record['wall_s']:.1f}s")
    result.ran.append(entry.name)
    ctx.state.stage(entry.name, "ran", rows_kept=record["rows_kept"])
    return record


def _run_non_source(cfg: PipelineConfig, entry: StageEntry, role: str, input_files: list[Path],
                    executor: runner.Executor, tmp_out: Path, tmp_rej: Path, info: dict,
                    used: dict[str, list[Path]], artifacts: Path) -> dict:
    module = entry.module
    if not input_files:
        return {"rows": 0, "kept": 0, "reasons": {}}
    llm = executor.llm_for(entry.name, cfg.llm.model) if stage_uses_llm(module, entry.config) else None
    if role == "record":
        totals = executor.record(input_files, module.__name__, entry.config, tmp_out, tmp_rej,
                                 entry.name, llm)
        if llm is not None:
            info["llm_usage"] = llm.usage()
        return totals
    scratch = io.temp_sibling(cfg.run_dir / "scratch" / entry.name)
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        shutil.rmtree(artifacts, ignore_errors=True)
        artifacts.mkdir(parents=True)
        ctx = runner.RayGlobalContext(input_files, scratch, cfg.run.seed, cfg.ray.batch_size, llm)
        ctx.uses, ctx.artifact_dir = used, artifacts
        out = module.run(ctx, entry.config)
        info.update(out.info)
        if llm is not None:
            info["llm_usage"] = llm.usage()
        if isinstance(out, Decisions):
            return executor.decisions(input_files, out, tmp_out, tmp_rej, entry.name)
        if isinstance(out, Records):
            totals = executor.records(out.table, tmp_out, tmp_rej, entry.name)
            info["generated"] = True
            return {**totals, "generated": True}
        raise RunError(f"{module.__name__}.run returned {type(out).__name__}, "
                       "expected Decisions or Records")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
