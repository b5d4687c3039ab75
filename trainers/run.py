"""Training in a run: ``[train.*]`` tables in order, each resumed or skipped like a stage.

Models folder::

    runs/NAME/models/MODEL/            save_pretrained folder + README.md (model card) +
                                       metrics.csv + tensorboard/ + _SUCCESS.json
    runs/NAME/models/.MODEL.work/      checkpoints while training (removed when it finishes)
    runs/NAME/tokens/DATASET-KEY/      packed token shards (reused while inputs are unchanged)

A model is skipped when its ``_SUCCESS.json`` carries the same key: a hash of its objective,
config, the fingerprints of its datasets and the keys of the models it starts from. An
interrupted training resumes from its newest checkpoint with the same key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline import io
from trainers import card
from trainers.config import TrainEntry
from trainers.errors import TrainError, TrainingError
from trainers.models import Base, ModelError, resolve_base

log = logging.getLogger("pipeline")
SUCCESS = "_SUCCESS.json"
VERSION = "1"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def dataset_input(cfg, name: str) -> dict:
    """Parquet files, fingerprint and card of a run dataset (by name) or a Parquet path."""
    if name in cfg.datasets:
        folder = cfg.run_dir / "datasets" / name
        if not (folder / "README.md").is_file():
            raise TrainError(f"dataset {name!r} has not been published yet: run `pipeline run` first")
        return path_dataset(folder / "data", name, folder / "README.md")
    path = Path(name) if Path(name).is_absolute() else cfg.path.parent / name
    if not path.exists():
        raise TrainError(f"dataset {name!r}: not a dataset of this run "
                         f"({', '.join(cfg.datasets) or 'none'}) nor an existing path")
    return path_dataset(path, name)


def path_dataset(path: Path, name: str | None = None, card_path: Path | None = None) -> dict:
    """A Parquet file or folder as a training input (its card: a README.md beside it)."""
    if not path.exists():
        raise TrainError(f"dataset {path} does not exist")
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files and card_path is None:  # a run's dataset may be empty: on_empty decides
        raise TrainError(f"dataset {name or path} has no Parquet files")
    card_path = card_path or (path if path.is_dir() else path.parent) / "README.md"
    return {"name": name or path.name, "files": files, "card": str(card_path),
            "card_sha256": _sha(card_path),
            "fingerprint": io.fingerprint([[str(f), f.stat().st_size] for f in files])}


def model_key(base: Base, models_dir: Path) -> str:
    """What a base is, for the key: a run model's own key, else its files' names and sizes."""
    done = _success(base.folder)
    if base.folder.parent == models_dir and done:
        return done["key"]
    files = [base.folder / base.gguf_file] if base.gguf_file else sorted(base.folder.iterdir())
    return io.fingerprint([[f.name, f.stat().st_size] for f in files if f.is_file()])


def _success(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SUCCESS).read_text())
    except (OSError, ValueError):
        return None


def _names(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def train_all(cfg, names: list[str] | None = None, console: Console | None = None,
              skipped: dict[str, str] | None = None) -> dict[str, Path]:
    """Train (or skip, or resume) the enabled ``[train.*]`` entries, in order; ``skipped``
    receives the models left out by ``on_empty = "skip"`` (and those starting from them)."""
    console = console or Console(stderr=True)
    for name in names or []:
        if name not in [e.name for e in cfg.train]:
            raise TrainError(f"no [train.{name}] table; trainings: {[e.name for e in cfg.train]}")
    out: dict[str, Path] = {}
    skipped = {} if skipped is None else skipped
    for entry in cfg.train:
        if not entry.enabled or (names and entry.name not in names):
            continue
        needs = {getattr(entry.config, k, None) for k in ("base", "tokenizer")} & set(skipped)
        if needs:
            console.print(f"[yellow]model {entry.name}: skipped, it starts from {sorted(needs)}, "
                          "which was skipped[/yellow]")
            skipped[entry.name] = f"it starts from {', '.join(sorted(needs))}, which was skipped"
            continue
        try:
            path = train_one(cfg, entry, console)
            if path is None:
                skipped[entry.name] = (f"its dataset {entry.config.dataset!r} has no rows "
                                       "(on_empty = \"skip\")")
            else:
                out[entry.name] = path
        except (ModelError, TrainingError, ValueError) as exc:
            raise TrainError(f"train.{entry.name}: {exc}") from exc
    return out


def train_one(cfg, entry: TrainEntry, console: Console) -> Path | None:
    """Train one model (or skip it when unchanged); None when its data is empty and
    ``on_empty = "skip"``."""
    models_dir = cfg.run_dir / "models"
    cfg_model = entry.config
    datasets = [dataset_input(cfg, n) for n in _names(cfg_model.dataset)]
    rows = sum(pq.ParquetFile(f).metadata.num_rows for d in datasets for f in d["files"])
    if rows == 0:
        message = f"model {entry.name}: its dataset {cfg_model.dataset!r} has no rows"
        if cfg_model.on_empty == "error":
            raise TrainError(message + " (set on_empty = \"skip\" to go on without it)")
        console.print(f"[yellow]{message}; skipped (on_empty = \"skip\")[/yellow]")
        log.warning("%s; skipped", message)
        return None
    bases: dict[str, Base] = {}
    if entry.objective in ("sft", "dpo"):
        bases["base"] = resolve_base(cfg_model.base, models_dir, cfg.path.parent)
    if entry.objective != "tokenizer":
        tokenizer = getattr(cfg_model, "tokenizer", None)
        bases["tokenizer"] = resolve_base(tokenizer, models_dir, cfg.path.parent) if tokenizer \
            else bases["base"]
    key = io.fingerprint([VERSION, entry.objective, cfg_model.model_dump(mode="json"),
                          [d["fingerprint"] for d in datasets],
                          {k: model_key(b, models_dir) for k, b in bases.items()}])
    final = models_dir / entry.name
    done = _success(final)
    if done and done.get("key") == key:
        console.print(f"[green]✓[/green] model {entry.name}: unchanged, skipped")
        return final
    console.print(f"[cyan]▶[/cyan] model {entry.name} ({entry.objective})")
    work = models_dir / f".{entry.name}.work"
    tmp = io.temp_sibling(final)
    started = time.time()
    try:
        if entry.objective == "tokenizer":
            from trainers.tokenizer import train_tokenizer

            files = [f for d in datasets for f in d["files"]]
            summary = train_tokenizer(files, tmp, cfg_model.text_column, cfg_model.vocab_size,
                                      cfg_model.min_frequency, cfg_model.max_chars)
        else:
            summary = _train_model(cfg, entry, key, datasets, bases, work, tmp, console)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {"name": entry.name, "objective": entry.objective, "key": key,
              "config": cfg_model.model_dump(mode="json"), "summary": summary,
              "datasets": [{k: d[k] for k in ("name", "card", "card_sha256", "fingerprint")}
                           for d in datasets],
              "bases": {k: b.label for k, b in bases.items()},
              "wall_s": round(time.time() - started, 2),
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    finish_model(record, work, tmp, final)
    console.print(f"  model {entry.name} -> {final} in {record['wall_s']:.1f}s "
                  + card.summary_line(summary))
    return final


def finish_model(record: dict, work: Path, tmp: Path, final: Path) -> None:
    """Move the logs beside the saved model, write its card and ``_SUCCESS.json``, put it in
    place and drop the checkpoints."""
    for item in ("metrics.csv", "tensorboard", "curve.json"):
        if (work / item).exists():
            shutil.move(str(work / item), str(tmp / item))
    card.write_model_card(tmp, record)
    io.write_text_atomic(tmp / SUCCESS, json.dumps(record, indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    shutil.rmtree(work, ignore_errors=True)


def _pretrain_tokens(cfg, entry: TrainEntry, key: str, datasets: list[dict], tok: Base,
                     console: Console) -> tuple[Path, dict | None]:
    """Token shards of the datasets; a mixture (weights, or cluster-size upsampling) is drawn
    from per-dataset shards into a stream of the tokens the training reads."""
    from trainers.data import tokenize_to_shards

    conf = entry.config
    root = cfg.run_dir / "tokens" / f"{entry.name}-{key}"
    mixed = isinstance(conf.dataset, dict)
    if not mixed and conf.upsample == "none":
        index = tokenize_to_shards([f for d in datasets for f in d["files"]], tok.folder,
                                   conf.text_column, root, tok.gguf_file, conf.sample)
        console.print(f"  {index['docs']:,} documents, {index['tokens']:,} tokens in "
                      f"{len(index['shards'])} shard(s)")
        return root, None
    from trainers import mixture

    groups = [(d["name"], d["files"], conf.dataset[d["name"]]) for d in datasets] if mixed \
        else [("+".join(d["name"] for d in datasets), [f for d in datasets for f in d["files"]], 1.0)]
    parts = []
    for name, files, weight in groups:
        tokenize_to_shards(files, tok.folder, conf.text_column, root / "sources" / name,
                           tok.gguf_file, conf.sample)
        parts.append(mixture.Component(name, root / "sources" / name, weight))
    report = mixture.realize(parts, mixture.stream_tokens(conf, conf.workers), root / "mixture",
                             conf.seed, upsample=conf.upsample, max_repeats=conf.max_repeats)
    console.print("  mixture: " + ", ".join(
        f"{c['name']} {c['realized_weight']:.1%} ({c['epochs']:.2f} epochs)"
        for c in report["components"]))
    return root / "mixture", {k: v for k, v in report.items() if k != "fingerprint"}


def _train_model(cfg, entry: TrainEntry, key: str, datasets: list[dict], bases: dict[str, Base],
                 work: Path, tmp: Path, console: Console) -> dict:
    from trainers.job import Job, execute

    conf = entry.config
    job = Job(name=entry.name, objective=entry.objective, config=conf.model_dump(mode="json"),
              key=key, work_dir=work, out_dir=tmp, tokenizer=bases["tokenizer"],
              base=bases.get("base"), files=[f for d in datasets for f in d["files"]])
    mix = None
    if entry.objective == "pretrain":
        job.shard_dir, mix = _pretrain_tokens(cfg, entry, key, datasets, bases["tokenizer"], console)
    if conf.workers > 1:
        from trainers.distributed import run_workers

        summary = run_workers(job, conf.workers, conf.strategy, conf.use_gpu)
    else:
        with _progress_bar(console, entry.name, conf.max_steps) as update:
            summary = execute(job, progress=update)
    return {**summary, "mixture": mix} if mix else summary


class _progress_bar:
    """A rich progress bar showing step, loss and throughput."""

    def __init__(self, console: Console, name: str, total: int):
        self.bar = Progress(TextColumn(f"  {name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=console, transient=False)
        self.task = self.bar.add_task(name, total=total, info="")
        self.shown: dict = {}
        self.console, self.name, self.total = console, name, total

    def __enter__(self):
        if self.console.is_terminal:
            self.bar.start()
        return self.update

    def update(self, step: int, row: dict) -> None:
        self.shown.update({k: v for k, v in row.items() if v is not None})
        parts = [f"loss {self.shown['loss']:.3f}" if "loss" in self.shown else "",
                 f"eval {self.shown['eval_loss']:.3f}" if "eval_loss" in self.shown else "",
                 f"{self.shown['tokens_per_s']:,.0f} tok/s" if "tokens_per_s" in self.shown else ""]
        info = "  ".join(p for p in parts if p)
        self.bar.update(self.task, completed=step, info=info)
        if not self.console.is_terminal and "tokens_per_s" in row:  # a log file sees no bar
            self.console.print(f"  {self.name} step {step}/{self.total}  {info}")

    def __exit__(self, *exc) -> None:
        if self.console.is_terminal:
            self.bar.stop()
