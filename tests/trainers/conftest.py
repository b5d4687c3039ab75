"""Shared tiny training inputs: real Python source as a Parquet corpus, a tokenizer trained on it."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 256}

STDLIB_SOURCES = f"""
[[sources]]
name = "stdlib"
kind = "files"
path = "{sysconfig.get_paths()['stdlib']}"
include = ["json/*.py", "email/*.py"]
"""
TINY_MODEL = ", ".join(f"{k} = {v}" for k, v in TINY.items())  # TINY as an inline TOML table body


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    path = tmp_path_factory.mktemp("corpus") / "code.parquet"
    pq.write_table(pa.table({"id": [f.name for f in files], "text": texts}), path)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    from trainers.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([corpus], out, vocab_size=600)
    return out


@pytest.fixture(scope="session")
def shards(corpus, tokenizer_dir, tmp_path_factory, ray_local) -> Path:
    from trainers.data import tokenize_to_shards

    out = tmp_path_factory.mktemp("tokens")
    tokenize_to_shards([corpus], tokenizer_dir, "text", out)
    return out


def pretrain_job(tmp: Path, tokenizer_dir: Path, shards: Path, **loop):
    from trainers.job import Job
    from trainers.models import Base

    config = {"dataset": "code", "preset": "phi-tiny", "model": TINY, "seq_len": 64,
              "micro_batch_size": 4, "max_steps": 8, "warmup_steps": 2, "eval_every": 4,
              "save_every": 4, "log_every": 2, "lr": 3e-3, **loop}
    return Job(name="pretrain", objective="pretrain", config=config, key="k", work_dir=tmp / "work",
               out_dir=tmp / "out", tokenizer=Base(tokenizer_dir), shard_dir=shards)
