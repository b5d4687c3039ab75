"""Ablations: does a data variant train a better model? ``[ablation.NAME]`` tables of a run.

Every variant (a dataset, a stage's kept rows, or a weighted mixture of them) trains the same
model preset with the same tokenizer, schedule and token budget under each of the ``seeds``; a
variant smaller than the budget is repeated (its epochs are reported). Every model is evaluated
on the same evaluation sets, whole, at every ``eval_every`` steps (the loss curves) and at the
end; none of them is trained on (``trainers/ablation_data.py`` checks). Folder::

    runs/RUN/ablations/NAME/report.md, report.json, curves.png   the comparison
    runs/RUN/ablations/NAME/models/VARIANT-sSEED/                each model, with its card
    runs/RUN/ablations/NAME/streams/VARIANT-sSEED/               its training tokens (mixture.json)
    runs/RUN/ablations/NAME/tokenizer/, tokens/, evalsets/        shared inputs

A model whose key (config, stream, tokenizer, evaluation sets) is unchanged is not retrained.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from pipeline import io
from trainers import ablation_data as data
from trainers.config import AblationConfig, LoopConfig, PretrainConfig
from trainers.errors import TrainError

VERSION = "1"


def run_ablations(cfg, names: list[str] | None = None, console: Console | None = None) -> dict[str, Path]:
    """Every (or every named) enabled ``[ablation.*]`` of a run; their report folders."""
    console = console or Console(stderr=True)
    for name in names or []:
        if name not in cfg.ablation:
            raise TrainError(f"no [ablation.{name}] table; ablations: {list(cfg.ablation)}")
    return {name: run_ablation(cfg, name, console) for name, conf in cfg.ablation.items()
            if conf.enabled and (not names or name in names)}


def steps_for(conf: AblationConfig) -> int:
    """Optimizer steps of every model: ``tokens`` over the tokens of one step (or max_steps)."""
    per_step = conf.micro_batch_size * conf.grad_accum * conf.seq_len * conf.workers
    return max(1, math.ceil(conf.tokens / per_step)) if conf.tokens else conf.max_steps


def run_ablation(cfg, name: str, console: Console) -> Path:
    from trainers.ablation_report import write_report
    from trainers.models import Base, resolve_base

    conf: AblationConfig = cfg.ablation[name]
    root = cfg.run_dir / "ablations" / name
    root.mkdir(parents=True, exist_ok=True)
    console.print(f"[cyan]▶[/cyan] ablation {name}: {len(conf.variants)} variant(s) x "
                  f"{len(conf.seeds)} seed(s)")
    sources = {ref: data.source_input(cfg, ref) for ref in conf.sources()}
    conf = _without_empty(conf, sources, console)
    sources = {ref: sources[ref] for ref in conf.sources()}
    evals = [data.load_evalset(cfg, spec, conf.text_column) for spec in conf.evalsets]
    held = data.held_hashes(evals)  # kept out of the tokenizer's text and every variant
    if conf.tokenizer:
        tok = resolve_base(conf.tokenizer, cfg.run_dir / "models", cfg.path.parent)
    else:
        tok = Base(data.union_tokenizer(sources, conf, root, held))
    shard_dirs = data.tokenize_sources(sources, tok.folder, conf, root)
    data.check_leaks(conf, shard_dirs, evals)
    for item in evals:
        data.tokenize_evalset(item, tok.folder, root)
    steps = steps_for(conf)
    records = []
    for variant, spec in conf.variants.items():
        for seed in conf.seeds:
            records.append(_variant_model(cfg, conf, name, variant, spec, seed, steps, sources,
                                          shard_dirs, held, evals, tok, root, console))
    report = write_report(root, name, conf, records, evals, tok.label)
    console.print(f"  ablation {name} -> {report}")
    for line in json.loads((root / "report.json").read_text())["verdicts"].values():
        console.print(f"  {line}", highlight=False)
    return root


def _without_empty(conf: AblationConfig, sources: dict, console: Console) -> AblationConfig:
    """The variants whose sources all have rows (``on_empty = "skip"``), else an error."""
    import pyarrow.parquet as pq

    empty = {ref for ref, s in sources.items()
             if sum(pq.ParquetFile(f).metadata.num_rows for f in s["files"]) == 0}
    hit = [v for v, spec in conf.variants.items()
           if ({spec} if isinstance(spec, str) else set(spec)) & empty]
    if not hit:
        return conf
    if conf.on_empty == "error" or len(hit) == len(conf.variants):
        raise TrainError(f"ablation variants {hit}: their data {sorted(empty)} has no rows"
                         + (" (set on_empty = \"skip\" to go on without them)"
                            if conf.on_empty == "error" else ""))
    console.print(f"[yellow]ablation: variants {hit} skipped, {sorted(empty)} has no rows[/yellow]")
    return conf.model_copy(update={"variants": {v: s for v, s in conf.variants.items()
                                                if v not in hit}})


def _loop_fields(conf: AblationConfig) -> dict:
    return conf.model_dump(include=set(LoopConfig.model_fields))


def _variant_model(cfg, conf: AblationConfig, name: str, variant: str, spec, seed: int,
                   steps: int, sources: dict, shard_dirs: dict, held, evals: list, tok, root: Path,
                   console: Console) -> dict:
    """Train (or reuse) one model of a variant and seed; its ``_SUCCESS.json`` record."""
    from trainers import mixture
    from trainers.data import tokenizer_fingerprint
    from trainers.run import SUCCESS, _success, finish_model

    weights = {spec: 1.0} if isinstance(spec, str) else dict(spec)
    pconf = PretrainConfig(**{**_loop_fields(conf), "seed": seed, "max_steps": steps},
                           dataset=weights, tokenizer=str(tok.label), preset=conf.preset,
                           model=conf.model, text_column=conf.text_column, sample=conf.sample,
                           upsample=conf.upsample, max_repeats=conf.max_repeats)
    stream = root / "streams" / f"{variant}-s{seed}"
    parts = [mixture.Component(ref, shard_dirs[ref], w) for ref, w in weights.items()]
    mix = mixture.realize(parts, mixture.stream_tokens(pconf, pconf.workers), stream, seed,
                          exclude=held, upsample=conf.upsample, max_repeats=conf.max_repeats)
    key = io.fingerprint([VERSION, pconf.model_dump(mode="json"), mix["fingerprint"],
                          tokenizer_fingerprint(tok.folder, tok.gguf_file),
                          [e.fingerprint for e in evals], conf.humaneval, conf.max_new_tokens])
    model_name = f"{variant}-s{seed}"
    final = root / "models" / model_name
    done = _success(final)
    if done and done.get("key") == key:
        console.print(f"[green]✓[/green] ablation model {model_name}: unchanged, skipped")
        return done
    console.print(f"[cyan]▶[/cyan] ablation model {model_name}: " + ", ".join(
        f"{c['name']} {c['realized_weight']:.0%} ({c['epochs']:.2f} epochs)" for c in mix["components"]))
    work = final.parent / f".{model_name}.work"
    tmp = io.temp_sibling(final)
    started = time.time()
    try:
        summary, evaluation = _train(model_name, pconf, key, stream, tok, work, tmp, evals, conf,
                                     console)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record = {"name": model_name, "objective": "pretrain", "key": key,
              "config": pconf.model_dump(mode="json"),
              "summary": {**summary, "mixture": {k: v for k, v in mix.items() if k != "fingerprint"}},
              "datasets": [{k: sources[ref][k] for k in ("name", "card", "card_sha256", "fingerprint")}
                           for ref in weights],
              "bases": {"tokenizer": tok.label}, "ablation": name, "variant": variant, "seed": seed,
              "evaluation": evaluation, "wall_s": round(time.time() - started, 2),
              "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    finish_model(record, work, tmp, final)
    from trainers.card import write_model_card

    write_model_card(final, record, {f"{k} {m}": v for k, r in evaluation.items()
                                     if isinstance(r, dict) for m, v in r.items()})
    return json.loads((final / SUCCESS).read_text())


def _train(model_name: str, pconf: PretrainConfig, key: str, stream: Path, tok, work: Path,
           tmp: Path, evals: list, conf: AblationConfig, console: Console) -> tuple[dict, dict]:
    """Train one model on its stream, measuring every evaluation set at each ``eval_every``
    steps (``curve.json``) and at the end."""
    from trainers.evaluate import stream_loss
    from trainers.job import Job, execute
    from trainers.run import _progress_bar

    job = Job(name=model_name, objective="pretrain", config=pconf.model_dump(mode="json"), key=key,
              work_dir=work, out_dir=tmp, tokenizer=tok, shard_dir=stream)
    work.mkdir(parents=True, exist_ok=True)
    curve_path = work / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    held: dict = {}
    tokens_per_step = pconf.micro_batch_size * pconf.grad_accum * pconf.seq_len

    def measure(step: int) -> None:
        model = held["model"]
        device = next(model.parameters()).device
        curve[str(step)] = {"tokens": step * tokens_per_step,
                            **{e.name: stream_loss(model, e.shard_dir, pconf.seq_len, device)
                               for e in evals}}
        io.write_text_atomic(curve_path, json.dumps(curve, indent=1))

    def capture(model):  # the model the loop trains: measured in place between steps
        held["model"] = model
        if "0" not in curve:
            measure(0)
        return model

    def on_step(step: int) -> None:
        if step % pconf.eval_every == 0 or step == pconf.max_steps:
            measure(step)

    with _progress_bar(console, model_name, pconf.max_steps) as update:
        summary = execute(job, wrap=capture, progress=update, on_step=on_step)
    final = dict(curve[str(pconf.max_steps)])
    final.pop("tokens")
    if conf.humaneval:
        from trainers.config import EvalConfig
        from trainers.evaluate import humaneval
        from trainers.tokenizer import load_tokenizer

        model = held["model"]
        ecfg = EvalConfig(humaneval=conf.humaneval, max_new_tokens=conf.max_new_tokens,
                          sandbox=conf.sandbox, sandbox_hide=conf.sandbox_hide)
        hide = (str(work.parents[3]), str(tmp), str(stream))  # run folder (RUN/ablations/NAME/models/.work), model, data
        result = humaneval(model, load_tokenizer(tok.folder, tok.gguf_file), ecfg,
                           next(model.parameters()).device, hide)
        final["humaneval"] = {k: v for k, v in result.items() if k != "samples"}
    return summary, final
