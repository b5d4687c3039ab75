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
POOL_BLOCK = 100_000  # pool rows per cdist call: bounds the score matrix's memory


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenization (lowercase, alphanumeric runs), no stemming."""
    return TOKEN.findall(text.lower())


def f_measure(lcs: np.ndarray, target_len: np.ndarray, prediction_len: np.ndarray) -> np.ndarray:
    """ROUGE-L F from LCS lengths, with rouge_score's exact operations (0 for empty sides)."""
    lcs = lcs.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / prediction_len
        recall = lcs / target_len
        f = 2 * precision * recall / (precision + recall)
    empty = (target_len == 0) | (prediction_len == 0) | ~(precision + recall > 0)
    return np.where(empty, 0.0, f)


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
        for start in range(0, len(self.codes), POOL_BLOCK):
            block = self.codes[start:start + POOL_BLOCK]
            f = f_measure(self._lcs(codes, block), lens[:, None],
                          np.array(self.lengths[start:start + POOL_BLOCK])[None, :])
            total += f.sum(axis=1)
            local = f.argmax(axis=1)
            value = f[np.arange(len(codes)), local]
            better = value > best
            best[better], arg[better] = value[better], local[better] + start
        within = f_measure(self._lcs(codes, codes), lens[:, None], lens[None, :])
        verdicts, kept = [], []
        base = len(self.codes)
        for i, (text, code) in enumerate(zip(candidates, codes)):
            top, where, summed, count = best[i], int(arg[i]), total[i], base
            for j, pool_index in kept:
                count += 1
                summed += within[i, j]
                if within[i, j] > top:
                    top, where = within[i, j], pool_index
            keep = bool(top <= threshold)
            mean = summed / count if count else 0.0
            verdicts.append(Verdict(keep, max(float(top), 0.0), where, float(mean)))
            if keep:
                kept.append((i, len(self.codes)))
                self.texts.append(text)
                self.codes.append(code)
                self.lengths.append(len(code))
        return verdicts
