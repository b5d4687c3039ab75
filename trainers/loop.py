"""The one training loop behind every objective (pretrain, SFT, LoRA, DPO), on one or many workers.

AdamW (fused kernels) with a cosine schedule and warmup; gradient accumulation where the step's
loss is normalized by the real (unmasked) tokens, or pairs, of all its micro-batches on all
workers; gradient clipping; bf16 autocast, torch.compile and SDPA attention on CUDA with plain
fp32 eager on CPU; periodic eval loss; checkpoints with everything needed to continue at the same
token; and a guard that skips steps with a non-finite loss or no real token, and stops after
``max_nonfinite_steps`` in a row. Logs go to a progress bar, ``metrics.csv`` and TensorBoard.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from trainers import checkpoint
from trainers.config import LoopConfig
from trainers.errors import TrainingError
from trainers.models import flops_per_token

log = logging.getLogger("pipeline")

# dense bf16 peak FLOP/s by device name (for MFU); other devices report no MFU
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
             "A10G": 125e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    compile: bool

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def peak_flops(self) -> float | None:
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((v for k, v in PEAK_BF16.items() if k in name), None)


def runtime(cfg: LoopConfig, device: str | None = None) -> Runtime:
    """Device, precision and compilation for this machine: GPU paths only where they work."""
    wanted = device or cfg.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(wanted)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {wanted!r} asked for, but torch sees no CUDA GPU")
    cuda = dev.type == "cuda"
    bf16 = {"auto": cuda and torch.cuda.is_bf16_supported(), "bf16": True, "fp32": False}[cfg.precision]
    if cfg.threads and not cuda:
        torch.set_num_threads(cfg.threads)
    return Runtime(dev, bf16, {"auto": cuda, "on": True, "off": False}[cfg.compile])


def make_optimizer(model, cfg: LoopConfig, rt: Runtime):
    """AdamW; weight decay on matrices only; fused kernels (one per group) on CPU and CUDA."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                            fused=rt.device.type in ("cpu", "cuda"))
    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, min(cfg.warmup_steps, cfg.max_steps - 1), cfg.max_steps, min_lr_rate=cfg.min_lr_ratio)
    return opt, sched


class MetricsLog:
    """``metrics.csv`` and TensorBoard events (rank 0); a resumed run drops rows past its step."""

    FIELDS = ["step", "loss", "eval_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu",
              "skipped", "reward_margin", "reward_accuracy", "wall_s"]

    def __init__(self, folder: Path, resume_step: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "metrics.csv"
        rows = []
        if resume_step and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(folder / "tensorboard"), purge_step=resume_step or None)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.FIELDS).writerow({k: row.get(k) for k in self.FIELDS})
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and value is not None:
                self.tb.add_scalar(f"train/{key}", value, row["step"])
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _reduce(value: float, world: int) -> float:
    if world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _tokens(batch: dict) -> int:
    """Input tokens of a (host) micro-batch: its unpadded positions."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def evaluate(model, objective, data, cfg: LoopConfig, rt: Runtime, rank: int = 0, world: int = 1) -> float | None:
    """Mean held-out loss per target token (or pair) over ``eval_batches`` micro-batches."""
    model.eval()
    total, count = torch.zeros((), device=rt.device), 0.0
    with torch.no_grad():
        for index in range(rank, cfg.eval_batches, world):
            batch = data.eval_batch(index, cfg.micro_batch_size)
            if batch is None:
                break
            count += objective.count(batch)
            with rt.autocast():
                loss, _ = objective.loss(model, _to(batch, rt.device))
            total += loss.float()
    model.train()
    total, count = _reduce(float(total), world), _reduce(count, world)
    return total / count if count else None


def train(model, objective, data, cfg: LoopConfig, out_dir: Path, rt: Runtime, key: str,
          rank: int = 0, world: int = 1, progress: Callable | None = None,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Train until ``max_steps``, resuming from the newest checkpoint with the same ``key``."""
    model.to(rt.device).train()
    opt, sched = make_optimizer(model, cfg, rt)
    ckpt_dir = out_dir / "checkpoints"
    state = checkpoint.latest(ckpt_dir, key)
    step = cursor = tokens = 0
    if state is not None:
        checkpoint.restore(state, model, opt, sched)
        step, cursor, tokens = state["step"], state["cursor"], state["tokens"]
        log.info("resuming at step %d (data cursor %d)", step, cursor)
    fwd = torch.compile(model) if rt.compile else model
    metrics = MetricsLog(out_dir, step) if rank == 0 else None
    per_token = flops_per_token(checkpoint.unwrap(model), cfg.seq_len)
    sync = getattr(model, "no_sync", None)
    skipped_in_row = skipped = 0
    last: dict = {"step": step}
    started, window_tokens, window_start = time.time(), 0, time.time()
    try:
        while step < cfg.max_steps:
            micro = [data.batch(cursor + i * world + rank, cfg.micro_batch_size)
                     for i in range(cfg.grad_accum)]
            cursor += cfg.grad_accum * world
            real = _reduce(float(sum(objective.count(b) for b in micro)), world)
            if real == 0:
                skipped, skipped_in_row = skipped + 1, skipped_in_row + 1
                _guard(skipped_in_row, cfg, "every target token of the step is masked")
                continue
            local_tokens = sum(_tokens(b) for b in micro)
            loss_sum, extras = torch.zeros((), device=rt.device), {}
            for i, batch in enumerate(micro):
                batch = _to(batch, rt.device)
                last_micro = i == len(micro) - 1
                with (sync() if sync and not last_micro else contextlib.nullcontext()), rt.autocast():
                    loss, extra = objective.loss(fwd, batch)
                    (loss * world / real).backward()
                loss_sum += loss.detach().float()  # read once per step, not per micro-batch
                extras = extra or extras
            step_loss = _reduce(float(loss_sum), world) / real
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                opt.zero_grad(set_to_none=True)
                skipped, skipped_in_row = skipped + 1, skipped_in_row + 1
                _guard(skipped_in_row, cfg, f"non-finite loss ({step_loss}) or gradient norm")
                continue
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step, skipped_in_row = step + 1, 0
            step_tokens = int(_reduce(local_tokens, world))
            tokens, window_tokens = tokens + step_tokens, window_tokens + step_tokens
            last = {"step": step, "loss": round(step_loss, 5), "lr": sched.get_last_lr()[0],
                    "grad_norm": round(grad_norm, 4), "skipped": skipped, "tokens": tokens,
                    **{k: float(v) for k, v in extras.items()}}
            log_now = step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step == cfg.max_steps
            if log_now:  # throughput of the training steps since the last log, eval excluded
                rate = window_tokens / max(time.time() - window_start, 1e-9)
                peak = rt.peak_flops
                last.update(tokens_per_s=round(rate, 1), wall_s=round(time.time() - started, 2),
                            mfu=round(rate * per_token / (peak * world), 4) if peak else None)
            paused = time.time()  # eval and checkpoints are not training throughput
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                loss_eval = evaluate(model, objective, data, cfg, rt, rank, world)
                last["eval_loss"] = round(loss_eval, 5) if loss_eval is not None else None
            if log_now and metrics:
                metrics.write(last)
            if progress:
                progress(step, last)
            if step % cfg.save_every == 0 and step < cfg.max_steps:
                checkpoint.save(ckpt_dir, key, step, cursor, tokens, model, opt, sched,
                                cfg.keep_checkpoints, rank)
                if world > 1:
                    torch.distributed.barrier()
            if log_now:
                window_tokens, window_start = 0, time.time()
            else:
                window_start += time.time() - paused
            if on_step:
                on_step(step)
    finally:
        if metrics:
            metrics.close()
    return {**last, "skipped_steps": skipped, "train_s": round(time.time() - started, 2)}


def _guard(in_row: int, cfg: LoopConfig, what: str) -> None:
    log.warning("step skipped: %s", what)
    if in_row >= cfg.max_nonfinite_steps:
        raise TrainingError(f"{in_row} steps in a row skipped: {what}; lower lr, check the data, "
                            "or raise max_nonfinite_steps")

