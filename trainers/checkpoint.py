"""Checkpoints: trainable weights, optimizer, scheduler, RNG states and the data cursor.

One file per checkpoint (``step-000100.pt``), written to a temporary name and renamed, so a
crash never leaves a half-written checkpoint that looks whole. A checkpoint records the run key
(config hash + input fingerprint) of the training that wrote it; a different key is never resumed.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("pipeline")


def unwrap(model):
    """The module under DDP/FSDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def trainable_names(model) -> set[str]:
    return {name for name, p in unwrap(model).named_parameters() if p.requires_grad}


def full_state(model, optimizer=None) -> tuple[dict, dict | None]:
    """Whole (unsharded) CPU state of the trainable weights, and of the optimizer if given.

    Works for plain, DDP, FSDP and compiled models; under FSDP every worker must call it (it
    gathers shards) and worker 0 receives the tensors.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        weights, optim = get_model_state_dict(model, options=_options()), None
    else:
        weights, optim = get_state_dict(model, optimizer, options=_options())
    names = trainable_names(model)
    return {k: v for k, v in weights.items() if k in names}, optim


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, key: str, step: int, cursor: int, tokens: int, model, optimizer, scheduler,
         keep: int, rank: int = 0) -> Path | None:
    """Every worker calls it (FSDP gathers shards); worker 0 writes the file."""
    weights, optim = full_state(model, optimizer)
    if rank != 0:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "step": step, "cursor": cursor, "tokens": tokens, "weights": weights,
                "optimizer": optim, "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp)
    tmp.rename(path)
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest(folder: Path, key: str) -> dict | None:
    """The newest readable checkpoint written by a training with this key."""
    for path in sorted(folder.glob("step-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a torn or foreign file: say so and try the one before
            log.warning("checkpoint %s unreadable (%s); trying an older one", path, exc)
            continue
        if state.get("key") == key:
            return state
        log.info("checkpoint %s belongs to another configuration; not resumed", path)
    return None


def restore(state: dict, model, optimizer, scheduler) -> None:
    """Load a checkpoint into a (possibly wrapped or sharded) model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    unknown = set(state["weights"]) - trainable_names(model)
    if unknown:
        raise ValueError(f"checkpoint weights not trainable in this model: {sorted(unknown)[:3]}")
    set_state_dict(model, optimizer, model_state_dict=state["weights"],
                   optim_state_dict=state["optimizer"], options=_options(strict=False))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
