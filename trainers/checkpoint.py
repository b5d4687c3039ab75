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


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().clone() for name, p in unwrap(model).named_parameters()
            if p.requires_grad}


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
         keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "step": step, "cursor": cursor, "tokens": tokens,
                "weights": trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp)
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
    params = dict(unwrap(model).named_parameters())
    missing = [name for name in state["weights"] if name not in params]
    if missing:
        raise ValueError(f"checkpoint weights not in the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in state["weights"].items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
