"""Evaluation: held-out perplexity and HumanEval pass@1 (generated code run in the sandbox).

Perplexity is measured on the held-out blocks of a dataset, cut the way pretraining cuts them
(every 1/eval_fraction-th block of seq_len tokens): with the pretraining's seq_len and
eval_fraction (the defaults are the same), those are tokens the model never trained on.
HumanEval: greedy completion of each problem's prompt, cut at the first top-level stop sequence
(Codex's), then ``prompt + completion + test + check(entry_point)`` runs in a sandboxed
subprocess (``pipeline/sandbox.py``: time, memory and process limits, a temp dir, behind user,
network, mount and PID namespaces that hide the home folders, the run folder and
``sandbox_hide``; refused before any generation where the kernel refuses namespaces, unless
``sandbox = "guards"``). Which walls held is in ``humaneval_sandbox``.
Results go to ``eval.json`` and the model card; an unchanged model and config are not re-evaluated.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from rich.console import Console

from pipeline import io
from trainers.config import EvalConfig

STOP_SEQUENCES = ["\nclass ", "\ndef ", "\n#", "\nif ", "\nprint("]
RESULT = "eval.json"


def stream_loss(model, shard_dir: Path, seq_len: int, device, batch_size: int = 8) -> dict:
    """Mean next-token loss over a whole token stream: every block of ``seq_len`` and the tail
    that fills none (an evaluation set, evaluated whole)."""
    import numpy as np
    import torch

    from trainers.data import PackedBlocks
    from trainers.objectives import CausalLM

    blocks = PackedBlocks(shard_dir, seq_len)
    objective, total, count = CausalLM(), 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        batches = [blocks.batch_of(list(range(i, min(i + batch_size, len(blocks)))))
                   for i in range(0, len(blocks), batch_size)]
        start = len(blocks) * seq_len  # the tail: tokens after the last full block's inputs
        last = np.concatenate([np.asarray(a[max(0, start - int(lo)):]) for a, lo, hi in
                               zip(blocks.arrays, blocks.starts[:-1], blocks.starts[1:])
                               if hi > start]).astype(np.int64)
        if len(last) >= 2:
            batches.append({"input_ids": torch.from_numpy(last[None, :-1].copy()),
                            "targets": torch.from_numpy(last[None, 1:].copy())})
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, _ = objective.loss(model, batch)
            total += float(loss)
            count += objective.count(batch)
    model.train(was_training)
    return {"eval_loss": round(total / count, 5), "perplexity": round(math.exp(total / count), 3),
            "eval_tokens": count}


def perplexity(model, shard_dir: Path, cfg: EvalConfig, device) -> dict:
    import torch

    from trainers.data import PackedBlocks, Split
    from trainers.objectives import CausalLM

    blocks = PackedBlocks(shard_dir, cfg.seq_len)
    split = Split(blocks, cfg.eval_fraction, seed=0)
    objective, total, count = CausalLM(), 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, min(len(split.eval_ids), cfg.max_blocks), 8):
            ids = [int(i) for i in split.eval_ids[start:min(start + 8, cfg.max_blocks)]]
            batch = {k: v.to(device) for k, v in blocks.batch_of(ids).items()}
            loss, _ = objective.loss(model, batch)
            total += float(loss)
            count += objective.count(batch)
    if not count:
        return {"perplexity": None, "eval_tokens": 0}
    return {"eval_loss": round(total / count, 5), "perplexity": round(math.exp(total / count), 3),
            "eval_tokens": count}


def complete(model, tok, prompt: str, max_new_tokens: int, device) -> str:
    """Greedy completion, cut at the first stop sequence."""
    import torch

    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, stop_strings=STOP_SEQUENCES, tokenizer=tok,
                             pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    cut = min([text.find(s) for s in STOP_SEQUENCES if s in text] or [len(text)])
    return text[:cut]


def humaneval(model, tok, cfg: EvalConfig, device, hide: tuple = ()) -> dict:
    from pipeline import sandbox
    from pipeline.evalsets import humaneval_problems

    walls = sandbox.require(cfg.sandbox)  # refused before the model generates anything
    problems = humaneval_problems()[:cfg.humaneval]
    started = time.time()
    completions = [complete(model, tok, p["prompt"], cfg.max_new_tokens, device) for p in problems]
    generate_s = time.time() - started
    programs = [f"{p['prompt']}{c}\n\n{p['test']}\n\ncheck({p['entry_point']})\n"
                for p, c in zip(problems, completions)]
    results = sandbox.run_many(programs, timeout_s=cfg.timeout_s, mode=cfg.sandbox,
                               hide=(*hide, *cfg.sandbox_hide))
    reasons: dict[str, int] = {}
    for res in results:
        if not res.ok:
            reasons[res.reason] = reasons.get(res.reason, 0) + 1
    passed = sum(r.ok for r in results)
    return {"humaneval_problems": len(problems), "humaneval_passed": passed,
            "humaneval_pass@1": round(passed / len(problems), 4) if problems else None,
            "humaneval_failures": reasons, "humaneval_generate_s": round(generate_s, 2),
            "humaneval_sandbox": f"{cfg.sandbox}: {sandbox.describe(walls)}",
            "samples": [{"task_id": p["task_id"], "completion": c, "passed": r.ok, "reason": r.reason}
                        for p, c, r in zip(problems, completions, results)]}


def evaluate_model(folder: Path, cfg: EvalConfig, dataset: dict | None, tokens_root: Path,
                   console: Console, run_dir: Path | None = None) -> dict:
    """Evaluate one saved model folder; reuse ``eval.json`` when nothing changed. The sandbox
    hides the model folder, ``tokens_root`` and ``run_dir`` from the generated code."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainers.data import tokenize_to_shards, tokenizer_fingerprint
    from trainers.models import quiet_transformers
    from trainers.tokenizer import load_tokenizer

    key = io.fingerprint([cfg.model_dump(mode="json"), dataset and dataset["fingerprint"],
                          dataset and dataset.get("whole", False),
                          [[f.name, f.stat().st_size] for f in sorted(folder.glob("*.safetensors"))]])
    cached = _read_json(folder / RESULT)
    if cached and cached.get("key") == key:
        console.print(f"[green]✓[/green] eval {folder.name}: unchanged, skipped")
        return cached
    console.print(f"[cyan]▶[/cyan] eval {folder.name}")
    quiet_transformers()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).to(device)
    result: dict = {"key": key, "model": str(folder)}
    if dataset:  # models with the same tokenizer share the held-out tokens
        whole = dataset.get("whole", False)  # an evaluation set: every document, every block
        sample = 1.0 if whole else cfg.sample
        shard_dir = tokens_root / "eval-{}".format(io.fingerprint(
            [dataset["fingerprint"], cfg.text_column, sample, tokenizer_fingerprint(folder)]))
        tokenize_to_shards(dataset["files"], folder, cfg.text_column, shard_dir, sample=sample)
        measured = stream_loss(model, shard_dir, cfg.seq_len, device) if whole \
            else perplexity(model, shard_dir, cfg, device)
        result.update(measured, dataset=dataset["name"], dataset_whole=whole)
    if cfg.humaneval:
        hide = tuple(str(p) for p in (folder, tokens_root, run_dir) if p is not None)
        result.update(humaneval(model, tok, cfg, device, hide))
    io.write_text_atomic(folder / RESULT, json.dumps(result, indent=2))
    _update_card(folder, result)
    shown = {k: result[k] for k in ("perplexity", "humaneval_pass@1") if k in result}
    console.print(f"  eval {folder.name}: {shown}")
    return result


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _update_card(folder: Path, result: dict) -> None:
    from trainers.card import write_model_card

    record = _read_json(folder / "_SUCCESS.json")
    if record:
        write_model_card(folder, record, {k: v for k, v in result.items() if k not in ("key", "model")})


def evaluate_run(cfg, console: Console, models: list[str] | None = None) -> dict[str, dict]:
    """``[eval]`` of a run: every listed model (run model names or folders)."""
    from trainers.run import TrainError, dataset_input

    conf: EvalConfig = cfg.eval or EvalConfig()
    dataset = dataset_input(cfg, conf.dataset) if conf.dataset else None
    if dataset is not None and conf.dataset not in cfg.datasets:
        dataset["whole"] = True  # a file named as an evaluation set is evaluated whole
    out = {}
    trained = {e.name for e in cfg.train}
    for name in models or conf.models:
        folder = cfg.run_dir / "models" / name
        if name in trained and not folder.is_dir():
            console.print(f"[yellow]eval {name}: no such model (its training was skipped)[/yellow]")
            continue
        if not folder.is_dir():
            folder = Path(name) if Path(name).is_absolute() else cfg.path.parent / name
        if not (folder / "config.json").is_file():
            raise TrainError(f"eval: {name!r} is no trained model (no {folder}/config.json)")
        out[name] = evaluate_model(folder, conf, dataset, cfg.run_dir / "tokens", console,
                                   run_dir=cfg.run_dir)
    return out
