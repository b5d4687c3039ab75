"""Pretraining data: Parquet texts tokenized in parallel into packed token shards, memory-mapped.

``tokenize_to_shards`` runs one Ray task per Parquet file; each writes ``shard-NNNNN.bin``
(uint16 when the vocabulary fits, else uint32): every document's tokens followed by EOS
(optionally only a ``sample`` of the documents, chosen by a hash of their text), and beside
it ``shard-NNNNN.docs.npy``: each document's token count, text hash and dedup ``cluster_size``
(1 without that column), what mixtures and held-out checks need. An ``index.json`` names the
shards, their token counts and the fingerprint of the inputs, so a rerun reuses the shards. ``PackedBlocks`` cuts the concatenated stream into blocks of
``seq_len + 1`` tokens (inputs and next-token targets). ``Split`` holds every
1/eval_fraction-th example (block, SFT example, DPO pair) out for the eval loss and serves
micro-batch ``i`` of a seeded per-epoch permutation: the data cursor is a single integer that a
checkpoint saves, so a resumed run continues at the same token.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline import io

INDEX = "index.json"
FORMAT = "docs-1"  # shard layout version, part of the fingerprint
DOC_DTYPE = np.dtype([("tokens", np.int64), ("hash", np.uint64), ("cluster_size", np.int64)])


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def sample_mask(texts: list, fraction: float) -> list[bool]:
    """Which texts are kept: non-empty ones, and only the ``fraction`` of them whose CRC-32 falls
    under it: the same documents whatever file or order they come in, so pretraining and
    evaluation agree."""
    if fraction >= 1.0:
        return [bool(t) for t in texts]
    cut = fraction * 2**32
    return [bool(t) and zlib.crc32(t.encode("utf-8", "surrogatepass")) < cut for t in texts]


def sampled(texts: list, fraction: float) -> list[str]:
    """The texts ``sample_mask`` keeps."""
    return [t for t, keep in zip(texts, sample_mask(texts, fraction)) if keep]


def text_hash(text: str) -> int:
    """A 64-bit hash of a document's words (whitespace-insensitive): equal documents, equal hash."""
    words = " ".join(text.split()).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(words, digest_size=8).digest(), "little")


def docs_path(shard: Path) -> Path:
    return shard.with_name(shard.name.removesuffix(".bin") + ".docs.npy")


def tokenize_file(path: str, tokenizer_dir: str, column: str, out_path: str,
                  gguf_file: str | None = None, sample: float = 1.0) -> dict:
    """Tokenize one Parquet file's ``column`` into a flat token file (docs joined by EOS)."""
    from trainers.tokenizer import load_tokenizer

    tok = load_tokenizer(Path(tokenizer_dir), gguf_file)
    backend = tok.backend_tokenizer
    dtype = _dtype(len(tok))
    eos = tok.eos_token_id
    parquet = pq.ParquetFile(path)
    if column not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: no column {column!r} (columns: {parquet.schema_arrow.names})")
    columns = [column] + (["cluster_size"] if "cluster_size" in parquet.schema_arrow.names else [])
    docs = tokens = 0
    table: list[np.ndarray] = []
    tmp = Path(out_path + ".tmp")
    with open(tmp, "wb") as fh:
        for batch in parquet.iter_batches(columns=columns, batch_size=512):
            raw = batch.column(0).to_pylist()
            keep = sample_mask(raw, sample)
            texts = [t for t, k in zip(raw, keep) if k]
            if not texts:
                continue
            sizes = [s for s, k in zip(batch.column(1).to_pylist(), keep) if k] \
                if len(columns) > 1 else [1] * len(texts)
            encoded = backend.encode_batch(texts, add_special_tokens=False)
            parts = []
            for enc in encoded:
                parts.append(np.asarray(enc.ids, dtype=dtype))
                parts.append(np.asarray([eos], dtype=dtype))
            flat = np.concatenate(parts)
            fh.write(flat.tobytes())
            rows = np.zeros(len(texts), DOC_DTYPE)
            rows["tokens"] = [len(enc.ids) + 1 for enc in encoded]
            rows["hash"] = [text_hash(t) for t in texts]
            rows["cluster_size"] = [max(1, s or 1) for s in sizes]
            table.append(rows)
            docs += len(texts)
            tokens += int(flat.size)
    np.save(docs_path(Path(out_path)), np.concatenate(table) if table else np.zeros(0, DOC_DTYPE))
    tmp.rename(out_path)
    return {"file": Path(out_path).name, "tokens": tokens, "docs": docs}


def tokenizer_fingerprint(folder: Path, gguf_file: str | None = None) -> str:
    """What a tokenizer is: its ``tokenizer.json`` bytes (a copy in another folder is the same)."""
    vocab = Path(folder) / "tokenizer.json"
    if vocab.is_file() and not gguf_file:
        return hashlib.sha256(vocab.read_bytes()).hexdigest()[:16]
    return f"{folder}/{gguf_file}"


def tokenize_to_shards(files: list[Path], tokenizer_dir: Path, column: str, out_dir: Path,
                       gguf_file: str | None = None, sample: float = 1.0) -> dict:
    """Tokenize every file in parallel on Ray (or reuse shards of the same inputs)."""
    import ray

    fingerprint = io.fingerprint([[str(f), f.stat().st_size] for f in files]
                                 + [tokenizer_fingerprint(tokenizer_dir, gguf_file), column, sample,
                                    FORMAT])
    index_path = out_dir / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index.get("fingerprint") == fingerprint:
            return index
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*"):
        old.unlink()
    task = ray.remote(num_cpus=1)(tokenize_file)
    refs = [task.remote(str(f), str(tokenizer_dir), column, str(out_dir / f"shard-{i:05d}.bin"),
                        gguf_file, sample) for i, f in enumerate(files)]
    shards = ray.get(refs)
    from trainers.tokenizer import load_tokenizer

    vocab = len(load_tokenizer(tokenizer_dir, gguf_file))
    index = {"fingerprint": fingerprint, "dtype": _dtype(vocab).name, "vocab_size": vocab,
             "shards": shards, "tokens": sum(s["tokens"] for s in shards),
             "docs": sum(s["docs"] for s in shards)}
    io.write_text_atomic(index_path, json.dumps(index, indent=2))
    return index


class PackedBlocks:
    """Next-token blocks of ``seq_len + 1`` tokens over memory-mapped shards."""

    def __init__(self, shard_dir: Path, seq_len: int):
        index = json.loads((shard_dir / INDEX).read_text())
        dtype = np.dtype(index["dtype"])
        self.arrays = [np.memmap(shard_dir / s["file"], dtype=dtype, mode="r")
                       for s in index["shards"] if s["tokens"]]
        sizes = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.seq_len = seq_len
        total = int(self.starts[-1])
        self.blocks = max(0, (total - 1) // seq_len)
        if self.blocks < 2:
            raise ValueError(f"{total:,} tokens make fewer than 2 blocks of {seq_len}; "
                             "use more data or a shorter seq_len")

    def __len__(self) -> int:
        return self.blocks

    def _block(self, block: int) -> np.ndarray:
        """Tokens [block * seq_len, (block + 1) * seq_len + 1) of the stream, across shards."""
        start, end = block * self.seq_len, (block + 1) * self.seq_len + 1
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < end:
            offset = start - int(self.starts[shard])
            piece = self.arrays[shard][offset:offset + end - start]
            pieces.append(piece)
            start += len(piece)
            shard += 1
        return np.concatenate(pieces).astype(np.int64)

    def batch_of(self, ids: list[int]) -> dict:
        import torch

        arr = np.stack([self._block(i) for i in ids])
        return {"input_ids": torch.from_numpy(arr[:, :-1].copy()),
                "targets": torch.from_numpy(arr[:, 1:].copy())}


class Split:
    """Train/held-out split of an example set; micro-batch ``i`` of a seeded per-epoch order."""

    def __init__(self, examples, eval_fraction: float, seed: int):
        n = len(examples)
        every = max(2, round(1 / eval_fraction))
        ids = np.arange(n)
        held = ids % every == every - 1 if n >= 2 * every else np.zeros(n, dtype=bool)
        self.examples, self.seed = examples, seed
        self.train_ids, self.eval_ids = ids[~held], ids[held]
        if len(self.train_ids) == 0:
            raise ValueError("no usable training example")
        self._order: tuple[int, np.ndarray] | None = None

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(self.train_ids))
        return self._order[1]

    def batch(self, index: int, size: int) -> dict:
        n = len(self.train_ids)
        ids = [int(self._epoch(pos // n)[pos % n]) for pos in range(index * size, (index + 1) * size)]
        return self.examples.batch_of(ids)

    def eval_batch(self, index: int, size: int) -> dict | None:
        ids = [int(i) for i in self.eval_ids[index * size:(index + 1) * size]]
        return self.examples.batch_of(ids) if ids else None
