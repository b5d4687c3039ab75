"""Tokenizer, packed data, the loop (loss, resume, guards) and saved models, on the CPU."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from tests.trainers.conftest import pretrain_job


def test_tokenizer_round_trip_and_special_tokens(tokenizer_dir, corpus):
    from trainers.tokenizer import CHAT_TEMPLATE, load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    text = 'def f(x):\n    return {"ünïcode": x}  # tab\there\n'
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.chat_template == CHAT_TEMPLATE
    assert len(tok) == 600


def test_shards_hold_every_document_separated_by_eos(shards, tokenizer_dir, corpus):
    import pyarrow.parquet as pq

    from trainers.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    index = json.loads((shards / "index.json").read_text())
    tokens = np.fromfile(shards / index["shards"][0]["file"], dtype=index["dtype"])
    texts = pq.read_table(corpus)["text"].to_pylist()
    assert index["docs"] == len(texts) and int((tokens == tok.eos_token_id).sum()) == len(texts)
    first = tokens[: int(np.argmax(tokens == tok.eos_token_id))]
    assert tok.decode(first.tolist()) == texts[0]


def test_packed_blocks_are_next_token_pairs_and_split_disjoint(shards):
    from trainers.data import PackedBlocks, Split

    blocks = PackedBlocks(shards, 64)
    split = Split(blocks, 0.1, seed=0)
    assert not set(split.train_ids) & set(split.eval_ids) and len(split.eval_ids) > 0
    batch = split.batch(0, 4)
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    n = len(split.train_ids)
    seen = torch.cat([split.batch(i, 1)["input_ids"] for i in range(n)])
    assert len({tuple(row.tolist()) for row in seen}) == n  # one epoch: every train block once
    again = split.batch(n, 1)["input_ids"]  # the next epoch starts a new permutation
    assert any(torch.equal(again[0], row) for row in seen)


def test_loss_decreases_and_logs(tmp_path, tokenizer_dir, shards):
    from trainers.job import execute

    job = pretrain_job(tmp_path, tokenizer_dir, shards, max_steps=24, eval_every=8)
    summary = execute(job)
    with open(job.work_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["loss"]) for r in rows]
    assert losses[-1] < losses[0] - 0.5, losses
    evals = [float(r["eval_loss"]) for r in rows if r["eval_loss"]]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert summary["tokens"] == 24 * 4 * 64 and float(rows[-1]["tokens_per_s"]) > 0
    assert any((job.work_dir / "tensorboard").iterdir())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job.out_dir)
    assert model.config.rope_parameters["partial_rotary_factor"] == 0.5
    assert model.config.model_type == "phi"


def test_resume_after_interruption_matches_uninterrupted(tmp_path, tokenizer_dir, shards):
    from safetensors.torch import load_file

    from trainers.job import execute

    whole = pretrain_job(tmp_path / "whole", tokenizer_dir, shards, save_every=3)
    execute(whole)

    def crash(step):
        if step == 5:
            raise KeyboardInterrupt  # killed after the checkpoint of step 3

    broken = pretrain_job(tmp_path / "broken", tokenizer_dir, shards, save_every=3)
    with pytest.raises(KeyboardInterrupt):
        execute(broken, on_step=crash)
    assert sorted(p.name for p in (broken.work_dir / "checkpoints").iterdir()) == ["step-000003.pt"]
    resumed = execute(broken)
    a = load_file(whole.out_dir / "model.safetensors")
    b = load_file(broken.out_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["tokens"] == 8 * 4 * 64
    with open(broken.work_dir / "metrics.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # rows past the checkpoint were dropped


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, tokenizer_dir, shards):
    from trainers import checkpoint
    from trainers.job import execute

    job = pretrain_job(tmp_path, tokenizer_dir, shards, max_steps=4, save_every=2)
    execute(job)
    assert checkpoint.latest(job.work_dir / "checkpoints", "k") is not None
    assert checkpoint.latest(job.work_dir / "checkpoints", "other") is None


def test_nonfinite_loss_stops_with_a_clear_error(tmp_path, tokenizer_dir, shards):
    from trainers.job import execute
    from trainers.loop import TrainingError

    job = pretrain_job(tmp_path, tokenizer_dir, shards, lr=1e30, warmup_steps=0, grad_clip=1e30,
                       max_nonfinite_steps=2, max_steps=30)
    with pytest.raises(TrainingError, match="steps in a row skipped"):
        execute(job)


def test_document_sample_is_the_same_whatever_the_file_layout(tmp_path, corpus, tokenizer_dir, ray_local):
    import pyarrow.parquet as pq

    from trainers.data import sampled, tokenize_to_shards

    texts = pq.read_table(corpus)["text"].to_pylist()
    half = sampled(texts, 0.5)
    assert 0.2 < len(half) / len(texts) < 0.8
    assert sampled(list(reversed(texts)), 0.5) == list(reversed(half))
    whole = tokenize_to_shards([corpus], tokenizer_dir, "text", tmp_path / "a", sample=0.5)
    table = pq.read_table(corpus)
    pq.write_table(table.slice(0, 10), tmp_path / "one.parquet")
    pq.write_table(table.slice(10), tmp_path / "two.parquet")
    split = tokenize_to_shards([tmp_path / "one.parquet", tmp_path / "two.parquet"], tokenizer_dir,
                               "text", tmp_path / "b", sample=0.5)
    assert whole["docs"] == split["docs"] == len(half) and whole["tokens"] == split["tokens"]
