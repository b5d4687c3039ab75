"""One training job, built and run on one worker: tokenizer, model, data, objective, loop, save.

``execute`` is what a single process runs and what every Ray Train worker runs; everything it
needs travels in a picklable ``Job`` (resolved paths, the validated config as a dict).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from trainers.config import CONFIGS
from trainers.models import Base


@dataclass
class Job:
    name: str
    objective: str  # pretrain | sft | dpo
    config: dict
    key: str  # config hash + inputs: checkpoints of another key are never resumed
    work_dir: Path  # checkpoints, metrics.csv, tensorboard/
    out_dir: Path  # the saved model (a temporary folder renamed by the caller)
    tokenizer: Base
    base: Base | None = None
    files: list[Path] = field(default_factory=list)  # SFT / DPO records
    shard_dir: Path | None = None  # pretraining tokens


def read_rows(files: list[Path]) -> list[dict]:
    tables = [pq.read_table(f) for f in files]
    if not tables:
        return []
    return pa.concat_tables(tables, promote_options="permissive").to_pylist()


def build(job: Job, rt, cfg):
    """The tokenizer, model, data split, objective and facts for the model card."""
    import torch

    from trainers.chat import ChatExamples, PreferencePairs
    from trainers.data import PackedBlocks, Split
    from trainers.models import (
        add_lora,
        count_params,
        disable_dropout,
        load_pretrained,
        new_phi,
        quiet_transformers,
    )
    from trainers.objectives import DPO, CausalLM
    from trainers.tokenizer import load_tokenizer

    quiet_transformers()
    tok = load_tokenizer(job.tokenizer.folder, job.tokenizer.gguf_file)
    facts: dict = {}
    if job.objective == "pretrain":
        model = new_phi(cfg.preset, tok, cfg.model, cfg.seed)
        blocks = PackedBlocks(job.shard_dir, cfg.seq_len)
        data, objective = Split(blocks, cfg.eval_fraction, cfg.seed), CausalLM()
        facts["blocks"] = len(blocks)
    else:
        torch.manual_seed(cfg.seed)
        model = load_pretrained(job.base, rt.device, bool(cfg.lora and cfg.lora.quantize_4bit))
        if cfg.lora:
            model = add_lora(model, cfg.lora)
        if job.objective == "dpo" and cfg.disable_dropout:
            facts["dropout_disabled"] = disable_dropout(model)
        rows = read_rows(job.files)
        if job.objective == "sft":
            examples = ChatExamples.build(rows, tok, cfg.columns, cfg.seq_len)
            objective = CausalLM()
        else:
            examples = PreferencePairs.build(rows, tok, cfg.columns, cfg.prompt_column,
                                             cfg.chosen_column, cfg.rejected_column, cfg.seq_len)
            objective = DPO(cfg.beta)
        if len(examples) == 0:
            raise ValueError(f"no usable example in {len(rows)} records: {examples.rejected}")
        data = Split(examples, cfg.eval_fraction, cfg.seed)
        facts.update(records=len(rows), examples=len(examples), unusable=examples.rejected)
        if job.objective == "dpo":
            model.to(rt.device)
            objective.compute_reference(model, examples, cfg.micro_batch_size, rt.device, rt.autocast)
    facts.update(parameters=count_params(model), trainable_parameters=count_params(model, True),
                 train_examples=len(data.train_ids), eval_examples=len(data.eval_ids))
    return tok, model, data, objective, facts


def execute(job: Job, rank: int = 0, world: int = 1, device: str | None = None,
            wrap: Callable | None = None, progress: Callable | None = None,
            on_step: Callable | None = None) -> dict:
    """Build the job, train it (resuming), and on rank 0 save the model to ``job.out_dir``."""
    from trainers.checkpoint import full_state
    from trainers.loop import runtime, train

    cfg = CONFIGS[job.objective].model_validate(job.config)
    rt = runtime(cfg, device)
    tok, model, data, objective, facts = build(job, rt, cfg)
    model.to(rt.device)
    if wrap is not None:
        model = wrap(model)
    summary = train(model, objective, data, cfg, job.work_dir, rt, job.key, rank, world,
                    progress, on_step)
    sharded = world > 1 and cfg.strategy == "fsdp"
    weights = full_state(model)[0] if sharded else None  # every worker gathers its shards
    if rank == 0:
        save_model(model, tok, job.out_dir, cfg, weights)
    return {**summary, **facts, "device": str(rt.device), "bf16": rt.bf16,
            "compiled": rt.compile, "workers": world}


def save_model(model, tok, out_dir: Path, cfg, weights: dict | None = None) -> None:
    """A ``save_pretrained`` folder: safetensors, config, generation config, tokenizer.

    ``weights``: the gathered full state of a sharded (FSDP) model, loaded into it first.
    """
    import torch

    from trainers.checkpoint import unwrap

    model = unwrap(model)
    lora = getattr(cfg, "lora", None)
    if lora and lora.merge and not lora.quantize_4bit:
        model = model.merge_and_unload()
    if getattr(cfg, "save_dtype", "auto") == "bfloat16":
        model = model.to(torch.bfloat16)
    stops = [tok.eos_token_id]
    end_turn = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_turn, int) and end_turn not in stops and end_turn != tok.unk_token_id:
        stops.append(end_turn)
    gen = model.generation_config
    gen.eos_token_id, gen.pad_token_id = stops if len(stops) > 1 else stops[0], tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    if weights is not None:  # FSDP: the module holds flat shards; save the gathered tensors
        model.save_pretrained(out_dir, state_dict=weights, safe_serialization=True)
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
