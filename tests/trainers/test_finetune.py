"""SFT masking, LoRA, DPO, a GGUF base and Ray Train workers, on tiny models and the CPU."""

from __future__ import annotations

import csv
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.trainers.conftest import pretrain_job


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, tokenizer_dir, shards):
    from trainers.job import execute

    job = pretrain_job(tmp_path_factory.mktemp("base"), tokenizer_dir, shards)
    execute(job)
    return job.out_dir


@pytest.fixture(scope="module")
def instructions(tmp_path_factory):
    rows = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}",
             "system": "Answer with the sum." if a % 2 else ""}
            for a in range(1, 9) for b in range(1, 5)]
    path = tmp_path_factory.mktemp("sft") / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def finetune_job(tmp, objective, base, files, **config):
    from trainers.job import Job
    from trainers.models import Base

    defaults = {"dataset": "x", "base": "x", "seq_len": 64, "micro_batch_size": 4, "max_steps": 6,
                "warmup_steps": 1, "eval_every": 3, "save_every": 3, "log_every": 1,
                "eval_fraction": 0.1}
    return Job(name=objective, objective=objective, config={**defaults, **config}, key="k",
               work_dir=tmp / "work", out_dir=tmp / "out", tokenizer=Base(base), base=Base(base),
               files=files)


def test_sft_targets_are_exactly_the_replies(tokenizer_dir):
    from trainers.chat import IGNORE, encode_chat
    from trainers.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."},
             {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 and 4?"},
             {"role": "assistant", "content": "8, since 4 + 4 = 8."}]
    ids, targets = encode_chat(tok, turns, seq_len=256)
    full = tok(tok.apply_chat_template(turns, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids + [full[-1]] == full and len(targets) == len(ids)  # inputs, then next tokens
    learned = [t for t in targets if t != IGNORE]
    assert tok.decode(learned) == "5<|im_end|>\n8, since 4 + 4 = 8.<|im_end|>\n"
    masked = tok.decode([full[i + 1] for i, t in enumerate(targets) if t == IGNORE])
    assert "Be brief." in masked and "Add 2 and 3." in masked and "4 + 4 = 8" not in masked


def test_sft_loss_ignores_prompt_tokens(tokenizer_dir, base_model):
    from transformers import AutoModelForCausalLM

    from trainers.chat import ChatExamples
    from trainers.config import ChatColumns
    from trainers.objectives import CausalLM
    from trainers.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    rows = [{"instruction": "Add 2 and 3.", "output": "5"},
            {"instruction": "Subtract 9 from 11, then say it twice.", "output": "5"}]
    examples = ChatExamples.build(rows, tok, ChatColumns(), 64)
    obj = CausalLM()
    batch = examples.batch_of([0, 1])
    assert obj.count(batch) == 2 * len(tok("5<|im_end|>\n", add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        loss, _ = obj.loss(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits, -1)
    keep = batch["targets"] != -100
    by_hand = -logp[keep].gather(-1, batch["targets"][keep].unsqueeze(-1)).sum()
    assert torch.allclose(loss, by_hand, atol=1e-3)


def test_sft_with_lora_merged_and_unmerged(tmp_path, base_model, instructions):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from trainers.job import execute

    lora = {"r": 4, "alpha": 8}
    summary = execute(finetune_job(tmp_path / "m", "sft", base_model, [instructions], lr=5e-3,
                                   lora=lora))
    assert summary["trainable_parameters"] < summary["parameters"] / 5
    merged = load_file(tmp_path / "m" / "out" / "model.safetensors")
    base = load_file(base_model / "model.safetensors")
    assert merged.keys() == base.keys()  # plain weights, no adapter tensors left
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    AutoModelForCausalLM.from_pretrained(tmp_path / "m" / "out")

    execute(finetune_job(tmp_path / "a", "sft", base_model, [instructions], lr=5e-3,
                         lora={**lora, "merge": False}))
    assert (tmp_path / "a" / "out" / "adapter_config.json").is_file()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model),
                                      tmp_path / "a" / "out")
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_dpo_loss_matches_hand_computation():
    from trainers.objectives import dpo_loss, sequence_logps

    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]),
                            torch.tensor([-1.5]), beta=0.1)
    assert math.isclose(float(margin), 0.1, rel_tol=1e-6)
    assert math.isclose(float(loss), -math.log(1 / (1 + math.exp(-0.1))), rel_tol=1e-6)  # 0.6444
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    got = sequence_logps(logits, torch.tensor([[0, -100]]))
    assert math.isclose(float(got), math.log(0.5), rel_tol=1e-5)


def test_dpo_raises_the_chosen_margin(tmp_path, base_model):
    from trainers.job import execute

    rows = [{"prompt": f"Add {a} and {b}.", "chosen": f"{a} + {b} = {a + b}",
             "rejected": "I cannot help with that."} for a in range(1, 7) for b in range(1, 4)]
    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    job = finetune_job(tmp_path, "dpo", base_model, [path], lr=2e-3, max_steps=8, log_every=1)
    execute(job)
    with open(job.work_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    margins = [float(r["reward_margin"]) for r in rows]
    assert abs(margins[0]) < 0.05 and margins[-1] > margins[0] + 0.1, margins
    assert float(rows[-1]["reward_accuracy"]) == 1.0 and float(rows[-1]["loss"]) < math.log(2)


def test_qlora_is_refused_on_cpu(tmp_path, base_model, instructions):
    from trainers.job import execute
    from trainers.models import ModelError

    job = finetune_job(tmp_path, "sft", base_model, [instructions],
                       lora={"quantize_4bit": True}, device="cpu")
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        execute(job)


@pytest.mark.teacher
def test_smollm2_gguf_loads_and_takes_an_sft_step(tmp_path, instructions):
    from trainers.job import execute
    from trainers.models import resolve_base

    base = resolve_base("smollm2", tmp_path, tmp_path)
    job = finetune_job(tmp_path, "sft", base.folder, [instructions], max_steps=1, micro_batch_size=1,
                       seq_len=48, lora={"r": 2, "alpha": 4, "merge": False})
    job.base = job.tokenizer = base
    summary = execute(job)
    assert summary["step"] == 1 and math.isfinite(summary["loss"]) and summary["loss"] < 8
    assert summary["parameters"] > 130_000_000
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_two_ray_train_workers_match_one_worker(tmp_path, tokenizer_dir, shards, ray_local):
    from safetensors.torch import load_file

    from trainers.distributed import run_workers
    from trainers.job import execute

    one = pretrain_job(tmp_path / "one", tokenizer_dir, shards, max_steps=4, micro_batch_size=4,
                       threads=1)
    execute(one)
    two = pretrain_job(tmp_path / "two", tokenizer_dir, shards, max_steps=4, micro_batch_size=2,
                       threads=1, workers=2)
    summary = run_workers(two, 2, "ddp", use_gpu=False)
    assert summary["workers"] == 2 and summary["step"] == 4
    a, b = load_file(one.out_dir / "model.safetensors"), load_file(two.out_dir / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=2e-4) for k in a)


def test_fsdp_without_gpus_is_refused_before_starting(tmp_path, tokenizer_dir, shards, ray_local):
    from trainers.distributed import run_workers
    from trainers.errors import TrainError

    job = pretrain_job(tmp_path, tokenizer_dir, shards, workers=2, strategy="fsdp")
    with pytest.raises(TrainError, match="needs GPU workers"):
        run_workers(job, 2, "fsdp", use_gpu=False)


def test_dpo_disables_dropout_as_trl_does():
    from transformers import PhiConfig, PhiForCausalLM

    from trainers.config import DPOConfig
    from trainers.models import disable_dropout

    config = PhiConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, resid_pdrop=0.1, embd_pdrop=0.1,
                       attention_dropout=0.1)
    model = PhiForCausalLM(config)
    assert disable_dropout(model) > 0
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())
    assert DPOConfig(dataset="d", base="b").disable_dropout
