"""An ablation's inputs: its data sources, its evaluation sets, the shared tokenizer, leak checks.

A source is a run dataset (``code``), a stage's kept rows (``stage:ingest``) or a Parquet path.
An evaluation set is built in (``humaneval``: each problem's prompt and canonical solution), a
JSONL/Parquet file with text fields (``pipeline/evalsets.py`` reads both), or a held-out slice
of a source: its documents in the order of their text hash up to ``max_chars``. Documents are
compared by a hash of their words (``trainers.data.text_hash``): a slice's documents are left
out of every variant's training, and any other set that shares a document with a variant's
training documents is refused, naming the set, the variant and the source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import io
from trainers.config import AblationConfig, AblationEvalSet
from trainers.data import sample_mask, text_hash, tokenize_to_shards
from trainers.errors import TrainError
from trainers.mixture import hashes


@dataclass
class EvalData:
    name: str
    kind: str  # builtin | file | holdout
    texts: list[str]
    hashes: np.ndarray
    fingerprint: str
    shard_dir: Path | None = None


def source_input(cfg, ref: str) -> dict:
    """Files, fingerprint and card of a source: a dataset, ``stage:NAME`` or a Parquet path."""
    from pipeline import ledger
    from pipeline.run import stage_folder
    from trainers.run import _sha, dataset_input

    if not ref.startswith("stage:"):
        return dataset_input(cfg, ref)
    name = ref.split(":", 1)[1]
    index = next((i for i, s in enumerate(cfg.stages, start=1) if s.name == name), None)
    if index is None:
        raise TrainError(f"{ref}: no stage named {name!r}; stages are {cfg.stage_names()}")
    folder = stage_folder(cfg.run_dir, index, name)
    record = ledger.read_success(folder)
    if record is None:
        raise TrainError(f"{ref}: stage {name!r} has not finished; run `pipeline run` first")
    return {"name": ref, "files": io.parquet_parts(folder), "card": str(folder / "_SUCCESS.json"),
            "card_sha256": _sha(folder / "_SUCCESS.json"), "fingerprint": record["output_fingerprint"]}


def _texts(files: list[Path], column: str, sample: float = 1.0):
    """The kept texts of Parquet files, in file order."""
    for path in files:
        parquet = pq.ParquetFile(path)
        if column not in parquet.schema_arrow.names:
            raise TrainError(f"{path}: no column {column!r} (columns: {parquet.schema_arrow.names})")
        for batch in parquet.iter_batches(columns=[column], batch_size=1024):
            raw = batch.column(0).to_pylist()
            yield from (t for t, keep in zip(raw, sample_mask(raw, sample)) if keep)


def load_evalset(cfg, spec: AblationEvalSet, column: str) -> EvalData:
    """The texts of one evaluation set, and their hashes."""
    from pipeline import evalsets

    if spec.holdout:
        source = source_input(cfg, spec.holdout)
        texts = list(dict.fromkeys(_texts(source["files"], column)))
        by_hash = sorted((text_hash(t), t) for t in texts)
        chosen, chars = [], 0
        for _, text in by_hash:
            if chars >= spec.max_chars:
                break
            chosen.append(text)
            chars += len(text)
        fp = io.fingerprint([source["fingerprint"], spec.max_chars, column])
        kind, texts = "holdout", chosen
    else:
        path = spec.path and str(Path(spec.path) if Path(spec.path).is_absolute()
                                 else cfg.path.parent / spec.path)
        try:
            loaded = evalsets.load(evalsets.EvalSpec(name=spec.name, path=path,
                                                     fields=spec.fields if spec.path else None))
        except evalsets.EvalSetError as exc:
            raise TrainError(f"evaluation set {spec.name!r}: {exc}") from exc
        kind, texts, fp = ("file" if spec.path else "builtin"), loaded.texts, loaded.fingerprint
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise TrainError(f"evaluation set {spec.name!r} has no text")
    return EvalData(spec.name, kind, texts, np.array([text_hash(t) for t in texts], np.uint64), fp)


def tokenize_evalset(data: EvalData, tokenizer: Path, root: Path) -> None:
    """The set's texts as one Parquet file, tokenized with the shared tokenizer (whole)."""
    folder = root / "evalsets"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data.name}-{data.fingerprint}.parquet"
    if not path.is_file():
        io.write_parquet_atomic(pa.table({"text": data.texts}), path)
    data.shard_dir = root / "tokens" / f"eval-{data.name}-{data.fingerprint}"
    tokenize_to_shards([path], tokenizer, "text", data.shard_dir)


def source_sample(source: dict, conf: AblationConfig) -> float:
    """The fraction of a source's documents used: ``conf.sample``, except for a source of at
    most ``conf.sample_min_rows`` rows (a small synthetic set), which is used whole."""
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in source["files"])
    return 1.0 if rows <= conf.sample_min_rows else conf.sample


def tokenize_sources(sources: dict[str, dict], tokenizer: Path, conf: AblationConfig,
                     root: Path) -> dict[str, Path]:
    """Every source tokenized once with the shared tokenizer (``conf.sample`` of its documents)."""
    out = {}
    for ref, source in sources.items():
        label = hashlib.sha256(ref.encode()).hexdigest()[:8]
        out[ref] = root / "tokens" / f"source-{label}"
        tokenize_to_shards(source["files"], tokenizer, conf.text_column, out[ref],
                           sample=source_sample(source, conf))
    return out


def held_hashes(evals: list[EvalData]) -> np.ndarray:
    """The hashes of the held-out slices' documents: kept out of every variant."""
    return np.unique(np.concatenate([e.hashes for e in evals if e.kind == "holdout"]
                                    or [np.zeros(0, np.uint64)]))


def check_leaks(conf: AblationConfig, shard_dirs: dict[str, Path], evals: list[EvalData]) -> None:
    """Refuse an evaluation set that shares a document with a variant's training documents."""
    held = held_hashes(evals)
    for ref, folder in shard_dirs.items():
        trained = hashes(folder)
        trained = trained[~np.isin(trained, held)]
        for data in evals:
            if data.kind == "holdout":
                continue
            shared = np.isin(data.hashes, trained)
            if shared.any():
                users = [v for v, spec in conf.variants.items()
                         if ref == spec or (isinstance(spec, dict) and ref in spec)]
                raise TrainError(
                    f"evaluation set {data.name!r} leaks into variant {users[0]!r}: "
                    f"{int(shared.sum())} of its {len(data.texts)} documents are training "
                    f"documents of {ref!r}; decontaminate the source (a decontaminate stage with "
                    f"this set) or evaluate on another set")


def union_tokenizer(sources: dict[str, dict], conf: AblationConfig, root: Path,
                    held: np.ndarray) -> Path:
    """A BPE tokenizer trained on an equal share of text from every source (slices left out)."""
    from trainers.tokenizer import train_tokenizer

    key = io.fingerprint([[s["fingerprint"] for s in sources.values()], conf.vocab_size,
                          conf.tokenizer_chars, conf.text_column, conf.sample, conf.sample_min_rows,
                          io.fingerprint(sorted(int(h) for h in held))])
    out = root / "tokenizer"
    if (out / ".key").is_file() and (out / ".key").read_text() == key:
        return out
    share = conf.tokenizer_chars // len(sources)
    held_set = {int(h) for h in held}
    texts: list[str] = []
    for source in sources.values():
        chars = 0
        for text in _texts(source["files"], conf.text_column, source_sample(source, conf)):
            if held_set and text_hash(text) in held_set:
                continue
            texts.append(text)
            chars += len(text)
            if chars >= share:
                break
    union = root / "tokenizer-union.parquet"
    io.write_parquet_atomic(pa.table({"text": texts}), union)
    tmp = io.temp_sibling(out)
    try:
        train_tokenizer([union], tmp, "text", conf.vocab_size, max_chars=conf.tokenizer_chars)
    except ValueError as exc:
        raise TrainError(f"tokenizer of the ablation: {exc}") from exc
    io.write_text_atomic(tmp / ".key", key)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    union.unlink()
    return out
