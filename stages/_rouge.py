"""ROUGE-L F-measure between short texts, vectorized: the Self-Instruct novelty filter.

Same numbers as ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(target, prediction)``
(Lin 2004; the scorer Self-Instruct and Alpaca use): tokens are the ``[a-z0-9]+`` runs of the
lowercased text (rouge_score's default tokenizer without stemming), LCS over token sequences,
precision = LCS / len(prediction), recall = LCS / len(target), F = 2PR / (P + R), and 0 when either
side has no token. The floating-point operations are the same, so the values are bit-identical.

Speed: every text is tokenized once and encoded as a string with one code point per distinct
token, so the LCS of two token sequences is ``rapidfuzz``'s bit-parallel ``LCSseq`` over those
strings, computed for a block of candidates against the whole pool by ``process.cdist`` in C++
threads. The reference runs a pure-Python O(n*m) dynamic program per pair in a process pool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

TOKEN = re.compile(r"[a-z0-9]+")
SURROGATES = range(0xD800, 0xE000)
POOL_BLOCK = 100_000  # pool rows per block
LCS_CELLS = 16_000_000  # candidates x pool rows per cdist call (64 MB of int32)
F_CELLS = 500_000  # cells per F-measure pass (a few MB of float64 temporaries)


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenization (lowercase, alphanumeric runs), no stemming."""
    return TOKEN.findall(text.lower())


def f_measure(lcs: np.ndarray, target_len: np.ndarray, prediction_len: np.ndarray) -> np.ndarray:
    """ROUGE-L F from LCS lengths, with rouge_score's exact operations (0 where LCS is 0,
    which covers empty sides)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / prediction_len
        recall = lcs / target_len
        f = 2 * precision * recall / (precision + recall)
    return np.where(lcs > 0, f, 0.0)


@dataclass
class Verdict:
    keep: bool
    max_score: float
    most_similar: int  # index into the pool (-1 for an empty pool)
    mean_score: float


class RougePool:
    """A growing pool of texts; ``screen`` keeps candidates whose ROUGE-L F to every pooled
    text (and to every candidate kept before them) is at most ``threshold``."""

    def __init__(self, texts: list[str] = (), workers: int = -1):
        self.workers = workers
        self.vocab: dict[str, str] = {}
        self.texts: list[str] = []
        self.codes: list[str] = []
        self.lengths: list[int] = []
        for text in texts:
            self.add(text)

    def encode(self, text: str) -> str:
        chars = []
        for token in tokenize(text):
            code = self.vocab.get(token)
            if code is None:
                n = len(self.vocab)
                code = chr(n + len(SURROGATES) if n >= SURROGATES.start else n)
                self.vocab[token] = code
            chars.append(code)
        return "".join(chars)

    def add(self, text: str) -> None:
        code = self.encode(text)
        self.texts.append(text)
        self.codes.append(code)
        self.lengths.append(len(code))

    def __len__(self) -> int:
        return len(self.texts)

    def _lcs(self, queries: list[str], choices: list[str]) -> np.ndarray:
        if not queries or not choices:
            return np.zeros((len(queries), len(choices)), np.int32)
        return process.cdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int32,
                             workers=self.workers)

    def scores(self, candidates: list[str]) -> np.ndarray:
        """ROUGE-L F of each candidate (target) against each pooled text (prediction)."""
        codes = [self.encode(c) for c in candidates]
        lcs = self._lcs(codes, self.codes)
        return f_measure(lcs, np.array([len(c) for c in codes])[:, None],
                         np.array(self.lengths)[None, :])

    def screen(self, candidates: list[str], threshold: float) -> list[Verdict]:
        """Judge candidates in order; kept ones join the pool (as in the reference loop, where a
        candidate is compared with everything kept before it, in this batch too)."""
        codes = [self.encode(c) for c in candidates]
        lens = np.array([len(c) for c in codes])
        best = np.full(len(codes), -1.0)
        arg = np.full(len(codes), -1, np.int64)
        total = np.zeros(len(codes))
        lengths = np.array(self.lengths)
        for start in range(0, len(self.codes), POOL_BLOCK):
            block = self.codes[start:start + POOL_BLOCK]
            rows = max(1, LCS_CELLS // len(block))  # candidates per cdist call
            for top in range(0, len(codes), rows):
                lcs = self._lcs(codes[top:top + rows], block)
                step = max(1, F_CELLS // len(block))  # rows per F pass, to stay in cache
                for r in range(0, lcs.shape[0], step):
                    i = slice(top + r, top + min(r + step, lcs.shape[0]))
                    f = f_measure(lcs[r:r + step], lens[i, None],
                                  lengths[None, start:start + len(block)])
                    total[i] += f.sum(axis=1)
                    local = f.argmax(axis=1)
                    value = f[np.arange(f.shape[0]), local]
                    better = value > best[i]
                    best[i] = np.where(better, value, best[i])
                    arg[i] = np.where(better, local + start, arg[i])
        within = f_measure(self._lcs(codes, codes), lens[:, None], lens[None, :])
        verdicts, kept, slots = [], [], []  # kept candidates and their pool indices
        base = len(self.codes)
        for i, (text, code) in enumerate(zip(candidates, codes)):
            top, where, mean = best[i], int(arg[i]), total[i] / base if base else 0.0
            if kept:
                row = within[i, kept]
                j = int(row.argmax())
                if row[j] > top:
                    top, where = row[j], slots[j]
                mean = (total[i] + row.sum()) / (base + len(kept))
            keep = bool(top <= threshold)
            verdicts.append(Verdict(keep, max(float(top), 0.0), where, float(mean)))
            if keep:
                kept.append(i)
                slots.append(len(self.codes))
                self.texts.append(text)
                self.codes.append(code)
                self.lengths.append(len(code))
        return verdicts
