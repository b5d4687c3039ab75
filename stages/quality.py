"""The "textbook quality" classifier: fastText trained on LLM annotations, then every document
scored in parallel (phi-1, Gunasekar et al. 2023; FineWeb-Edu, Penedo et al. 2024).

Training data: the output of the stage named in ``uses`` (``annotate``: ``text`` excerpts with
0-5 ``score``), binarized at ``binarize_at`` (3, FineWeb-Edu's cut), split into train and
validation parts (``valid_fraction``, seeded). Precision, recall and F1 of the positive class on
the validation part are stored with the model in ``runs/NAME/artifacts/NN-quality/``. With
``model_path`` a fastText model of your own is used and nothing is trained.

Every document keeps ``quality_score`` (the probability of the positive label). Documents under
``threshold``, or outside the ``top_fraction`` best when that is set, are dropped as
``low_quality``. fastText reads one line per example: text is lowercased and put on one line.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.stage import DROP_REASON, Decisions, GlobalContext

VERSION = "1"
POSITIVE, NEGATIVE = "__label__hq", "__label__lq"
FENCE = "`" * 3
_MODELS: dict[str, object] = {}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text_column: str = "text"
    model_path: str | None = None
    binarize_at: int = Field(default=3, ge=1, le=5)
    valid_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    seed: int = 0
    epoch: int = Field(default=25, ge=1)
    lr: float = Field(default=0.5, gt=0.0)
    word_ngrams: int = Field(default=2, ge=1)
    dim: int = Field(default=64, ge=2)
    max_chars: int = Field(default=4000, ge=100)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    top_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    min_per_class: int = Field(default=4, ge=1)
    # when the annotations cannot train a classifier: fail, or keep every document (scores null)
    on_too_few_labels: str = Field(default="error", pattern="^(error|keep_all)$")


def one_line(texts: list[str | None], max_chars: int) -> list[str]:
    """fastText's input: lowercase, one line, whitespace collapsed."""
    return [re.sub(r"\s+", " ", (t or "")[:max_chars].lower()).strip() for t in texts]


def _model(path: str):
    import fasttext

    if path not in _MODELS:
        fasttext.FastText.eprint = lambda *args, **kwargs: None  # quiet load warnings
        _MODELS[path] = fasttext.load_model(path)
    return _MODELS[path]


def positive_probability(model, texts: list[str]) -> np.ndarray:
    """P(positive) from the top label (two classes, softmax): fastText-wheel 0.9.2 under
    numpy 2 repeats the first probability for every k > 1, so only k = 1 is trusted."""
    labels, probs = model.predict(texts, k=1)
    top = np.array([float(p[0]) for p in probs])
    is_positive = np.array([names[0] == POSITIVE for names in labels])
    return np.clip(np.where(is_positive, top, 1.0 - top), 0.0, 1.0)


def score_batch(batch: pa.Table, model_path: str, text_column: str, max_chars: int) -> pa.Table:
    texts = one_line(batch.column(text_column).to_pylist(), max_chars)
    scores = positive_probability(_model(model_path), texts)
    return pa.table({"id": batch.column("id"), "quality_score": pa.array(scores, pa.float64())})


def train(examples: list[tuple[str, int]], config: Config, folder: Path) -> tuple[Path, dict]:
    """Train on (text, score) pairs; return the model path and validation metrics."""
    import fasttext

    texts = one_line([text for text, _ in examples], config.max_chars)
    labelled = [(text, POSITIVE if score >= config.binarize_at else NEGATIVE)
                for text, (_, score) in zip(texts, examples) if text]
    counts = {label: sum(1 for _, lab in labelled if lab == label) for label in (POSITIVE, NEGATIVE)}
    if min(counts.values()) < config.min_per_class:
        raise ValueError(
            f"annotations too few or one-sided to train on: {counts[POSITIVE]} positive and "
            f"{counts[NEGATIVE]} negative at binarize_at = {config.binarize_at} (need "
            f"{config.min_per_class} of each); annotate more documents, change binarize_at, "
            "or give model_path")
    rng = random.Random(config.seed)
    rng.shuffle(labelled)
    n_valid = max(2, int(len(labelled) * config.valid_fraction))
    valid, training = labelled[:n_valid], labelled[n_valid:]
    train_file = folder / "train.txt"
    train_file.write_text("".join(f"{lab} {text}\n" for text, lab in training), encoding="utf-8")
    try:
        model = fasttext.train_supervised(str(train_file), epoch=config.epoch, lr=config.lr,
                                          wordNgrams=config.word_ngrams, dim=config.dim,
                                          minCount=1, seed=config.seed, thread=1, verbose=0)
    except RuntimeError as exc:  # fastText's "Encountered NaN" on degenerate input
        raise ValueError(f"fastText training failed ({exc}); lower lr or add annotations") from exc
    path = folder / "model.bin"
    model.save_model(str(path))
    predicted = positive_probability(model, [t for t, _ in valid]) >= 0.5
    truth = np.array([lab == POSITIVE for _, lab in valid])
    tp = int((predicted & truth).sum())
    precision = tp / max(1, int(predicted.sum()))
    recall = tp / max(1, int(truth.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metrics = {"train": len(training), "valid": len(valid), "labels": counts,
               "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return path, metrics


def run(ctx: GlobalContext, config: Config) -> Decisions:
    info: dict = {}
    if config.model_path:
        model_path = Path(config.model_path)
        if not model_path.is_file():
            raise ValueError(f"model_path {model_path} does not exist")
    else:
        if not ctx.uses:
            raise ValueError("quality needs uses = ['<annotate stage>'] or model_path")
        tables = [pa.concat_tables([pq.read_table(f, columns=["text", "score"]) for f in files])
                  for files in ctx.uses.values() if files]
        data = pa.concat_tables(tables) if tables else pa.table({"text": [], "score": []})
        examples = list(zip(one_line(data.column("text").to_pylist(), config.max_chars),
                            data.column("score").to_pylist()))
        info["labels"] = {str(k): sum(1 for _, s in examples if s == k) for k in range(6)}
        try:
            model_path, metrics = train([(t, s) for t, s in examples if s is not None], config,
                                        ctx.artifact_dir)
        except ValueError as exc:
            if config.on_too_few_labels == "error" or "too few or one-sided" not in str(exc):
                raise
            ids = ctx.read(["id"]).column("id")
            info.update({"skipped": str(exc), "cut": None, "histogram": []})
            return Decisions(table=pa.table({"id": ids, DROP_REASON: pa.nulls(len(ids), pa.string()),
                                             "quality_score": pa.nulls(len(ids), pa.float64())}),
                             info=info)
        info["metrics"] = metrics
    scored = ctx.map(score_batch, columns=["id", config.text_column], model_path=str(model_path),
                     text_column=config.text_column, max_chars=config.max_chars)
    scores = scored.column("quality_score").to_numpy() if scored.num_rows else np.zeros(0)
    cut = config.threshold
    if config.top_fraction is not None and len(scores):
        cut = float(np.quantile(scores, 1.0 - config.top_fraction))
    low = pc.less(scored.column("quality_score"), cut) if scored.num_rows else pa.array([], pa.bool_())
    reasons = pc.if_else(low, pa.scalar("low_quality"), pa.scalar(None, pa.string()))
    hist, edges = np.histogram(scores, bins=20, range=(0.0, 1.0))
    near = np.argsort(np.abs(scores - cut))[:6] if len(scores) else []
    near_ids = [scored.column("id")[int(i)].as_py() for i in near]
    texts = ctx.read(["id", config.text_column], ids=near_ids) if near_ids else pa.table({})
    excerpt = dict(zip(texts.column("id").to_pylist(), texts.column(config.text_column).to_pylist())) \
        if texts.num_rows else {}
    info.update({"model_path": str(model_path), "cut": cut, "threshold": config.threshold,
                 "top_fraction": config.top_fraction, "histogram": hist.tolist(),
                 "near_cut": [{"id": i, "quality_score": round(float(scores[k]), 4),
                               "excerpt": (excerpt.get(i) or "")[:300]}
                              for k, i in zip(near, near_ids)]})
    return Decisions(table=pa.table({"id": scored.column("id"), DROP_REASON: reasons,
                                     "quality_score": scored.column("quality_score")}), info=info)


def card_section(record: dict, plot_dir: Path) -> str:
    import matplotlib.pyplot as plt

    info = record.get("info", {})
    hist = info.get("histogram", [])
    if hist:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(np.linspace(0.025, 0.975, len(hist)), hist, width=0.05, color="#4a7ab5")
        ax.axvline(info.get("cut", 0.5), color="#c0504d", linestyle="--")
        ax.set_xlabel("quality_score")
        ax.set_ylabel("documents")
        fig.tight_layout()
        fig.savefig(plot_dir / "quality_scores.png", dpi=100)
        plt.close(fig)
    metrics = info.get("metrics", {})
    if info.get("skipped"):
        return (f"## Quality classifier (`{record['folder']}`)\n\nNot applied, every document kept: "
                f"{info['skipped']}")
    lines = [f"## Quality classifier (`{record['folder']}`)", "",
             f"- model: `{info.get('model_path')}`; documents under {info.get('cut', 0):.3f} dropped "
             f"as `low_quality` (threshold {info.get('threshold')}, top fraction {info.get('top_fraction')})"]
    if metrics:
        lines.append(f"- labels (annotation scores 0-5): {info.get('labels')}; trained on "
                     f"{metrics['train']}, validated on {metrics['valid']}: precision "
                     f"{metrics['precision']}, recall {metrics['recall']}, F1 {metrics['f1']}")
    lines += ["", "![quality scores](plots/quality_scores.png)" if hist else "", "",
              "Documents nearest the cut:", ""]
    for item in info.get("near_cut", []):
        text = item["excerpt"].replace(FENCE, "~~~")
        lines += [f"- `{item['id']}`, quality_score {item['quality_score']}:", "", "  " + FENCE,
                  "  " + text.replace("\n", "\n  "), "  " + FENCE]
    return "\n".join(lines)
