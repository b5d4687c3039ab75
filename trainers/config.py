"""``[train.NAME]`` and ``[eval]`` tables: what to train, on which dataset, from which base.

Each ``[train.NAME]`` table has an ``objective`` (``tokenizer``, ``pretrain``, ``sft`` or ``dpo``;
default: the table's name) and runs in file order after the run's datasets are published. Names
of datasets (``dataset = "code"``) are the run's ``[datasets.*]``; names of models
(``base = "pretrain"``, ``tokenizer = "tokenizer"``) are earlier ``[train.*]`` tables; any of
them may instead be a path. This module imports no torch: configs load fast and fail early.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

OBJECTIVES = ("tokenizer", "pretrain", "sft", "dpo")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoopConfig(Strict):
    """The training loop's knobs, shared by every objective."""

    max_steps: int = Field(default=200, ge=1)  # optimizer steps
    micro_batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    seq_len: int = Field(default=256, ge=8)
    lr: float = Field(default=1e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decays to lr * this
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=50, ge=1)
    eval_batches: int = Field(default=8, ge=1)
    eval_fraction: float = Field(default=0.02, gt=0, lt=0.5)  # held out for the eval loss
    save_every: int = Field(default=100, ge=1)  # checkpoint period, in optimizer steps
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA if supported
    compile: Literal["auto", "on", "off"] = "auto"  # auto: torch.compile on CUDA only
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    workers: int = Field(default=1, ge=1)  # > 1: Ray Train TorchTrainer (DDP)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    use_gpu: bool | None = None  # Ray Train workers on GPUs; default: if the cluster has GPUs
    max_nonfinite_steps: int = Field(default=5, ge=1)  # NaN/inf losses in a row before aborting
    threads: int | None = Field(default=None, ge=1)  # torch CPU threads per worker
    on_empty: Literal["error", "skip"] = "error"  # no rows in the dataset: fail, or skip the model


class LoraConfig(Strict):
    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"
    quantize_4bit: bool = False  # QLoRA: NF4 base weights through bitsandbytes (CUDA only)
    merge: bool = True  # merge the adapters into the saved model


class TokenizerConfig(Strict):
    dataset: str
    text_column: str = "text"
    vocab_size: int = Field(default=8192, ge=300)
    min_frequency: int = Field(default=2, ge=1)
    max_chars: int = Field(default=50_000_000, ge=1000)  # training text read from the dataset
    seed: int = 0
    on_empty: Literal["error", "skip"] = "error"


class PretrainConfig(LoopConfig):
    dataset: str | list[str] | dict[str, float]  # a table {name = weight}: a mixture by tokens
    text_column: str = "text"
    upsample: Literal["none", "cluster_size"] = "none"  # repeat documents by dedup cluster size
    max_repeats: int = Field(default=5, ge=1)  # the cap on those repeats
    tokenizer: str = "tokenizer"  # a [train.*] tokenizer, a tokenizer folder, or a model folder
    preset: str = "phi-tiny"  # see trainers/models.py PRESETS
    sample: float = Field(default=1.0, gt=0, le=1)  # tokenize this fraction of the documents
    model: dict[str, Any] = Field(default_factory=dict)  # PhiConfig overrides


class ChatColumns(Strict):
    """Where an example's turns come from: a ``messages`` list, or instruction columns."""

    messages: str = "messages"
    system: str = "system"
    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"
    default_system: str = ""  # used when a record has no system message


class SFTConfig(LoopConfig):
    """Finetuning of a pretrained base on chat examples (full, LoRA or QLoRA)."""

    dataset: str | list[str]
    base: str  # a [train.*] model, a local HF folder, a .gguf file, or "smollm2"
    tokenizer: str | None = None  # default: the base model's
    columns: ChatColumns = Field(default_factory=ChatColumns)
    lora: LoraConfig | None = None
    lr: float = Field(default=2e-4, gt=0)
    warmup_steps: int = Field(default=5, ge=0)
    save_dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    @model_validator(mode="after")
    def _lora_strategy(self) -> SFTConfig:
        if self.lora and self.strategy == "fsdp" and self.workers > 1:
            raise ValueError("LoRA trains few weights: use strategy = \"ddp\" (FSDP is for full "
                             "training of large presets)")
        return self


class DPOConfig(SFTConfig):
    beta: float = Field(default=0.1, gt=0)
    disable_dropout: bool = True  # in the policy and the reference, as TRL's DPO does
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    lr: float = Field(default=5e-6, gt=0)


class TrainEntry(Strict):
    name: str
    objective: Literal["tokenizer", "pretrain", "sft", "dpo"]
    enabled: bool = True
    config: Any = None


class EvalConfig(Strict):
    """``[eval]``: held-out perplexity and HumanEval pass@1 of the run's models."""

    models: list[str] = Field(default_factory=list)  # [train.*] names or model folders
    dataset: str | None = None  # perplexity on this dataset's held-out part
    text_column: str = "text"
    seq_len: int = Field(default=256, ge=8)  # keep equal to the pretraining's: held-out blocks
    eval_fraction: float = Field(default=0.02, gt=0, lt=0.5)  # match, as the pretraining cut them
    max_blocks: int = Field(default=64, ge=1)
    sample: float = Field(default=1.0, gt=0, le=1)  # as the pretraining's: the same documents
    humaneval: int = Field(default=0, ge=0, le=164)  # problems (0: skip; 164: all)
    max_new_tokens: int = Field(default=256, ge=1)
    timeout_s: float = Field(default=10.0, gt=0)
    sandbox: Literal["namespaces", "guards"] = "namespaces"  # guards: no kernel walls (risky)
    sandbox_hide: list[str] = Field(default_factory=list)  # secrets completions must not see
    enabled: bool = True


class AblationEvalSet(Strict):
    """An evaluation set of an ablation: built-in (``humaneval``), a JSONL/Parquet file with
    text fields, or a held-out slice of a dataset (its documents are then kept out of every
    variant's training)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str | None = None
    fields: list[str] = Field(default_factory=lambda: ["text"])
    holdout: str | None = None  # a dataset, "stage:NAME" or path to hold a slice out of
    max_chars: int = Field(default=200_000, ge=1000)  # the slice: documents by hash up to this

    @model_validator(mode="after")
    def _one_kind(self) -> AblationEvalSet:
        if self.path and self.holdout:
            raise ValueError("an evaluation set is a path or a holdout, not both")
        return self


class AblationConfig(LoopConfig):
    """``[ablation.NAME]``: one model preset trained on each data variant with equal tokens and
    several seeds, evaluated on shared held-out sets. A variant is a dataset name, a stage's kept
    rows (``"stage:NAME"``), a Parquet path, or a table ``{source = weight, ...}`` (a mixture)."""

    variants: dict[str, str | dict[str, float]] = Field(min_length=1)
    preset: str = "phi-tiny"
    model: dict[str, Any] = Field(default_factory=dict)
    tokenizer: str | None = None  # a [train.*] tokenizer or folder; default: trained on the union
    vocab_size: int = Field(default=8192, ge=300)
    tokenizer_chars: int = Field(default=5_000_000, ge=1000)  # union text, split among sources
    tokens: int | None = Field(default=None, ge=1)  # per model; default: max_steps x step tokens
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    text_column: str = "text"
    sample: float = Field(default=1.0, gt=0, le=1)  # of each source's documents, by text hash
    sample_min_rows: int = Field(default=1000, ge=0)  # sources this small are used whole
    upsample: Literal["none", "cluster_size"] = "none"
    max_repeats: int = Field(default=5, ge=1)
    evalsets: list[AblationEvalSet] = Field(
        default_factory=lambda: [AblationEvalSet(name="humaneval")], min_length=1)
    humaneval: int = Field(default=0, ge=0, le=164)  # pass@1 problems (0: skip; tiny models: noise)
    max_new_tokens: int = Field(default=128, ge=1)
    sandbox: Literal["namespaces", "guards"] = "namespaces"  # as [eval]: guards only is risky
    sandbox_hide: list[str] = Field(default_factory=list)
    on_empty: Literal["error", "skip"] = "error"  # a variant drawing on a source with no rows
    enabled: bool = True

    @model_validator(mode="after")
    def _sane(self) -> AblationConfig:
        for name, spec in self.variants.items():
            if isinstance(spec, dict) and (not spec or any(w <= 0 for w in spec.values())):
                raise ValueError(f"variants.{name}: a mixture needs sources with positive weights")
        names = [e.name for e in self.evalsets]
        if len(set(names)) != len(names):
            raise ValueError("evalsets: every evaluation set needs its own name")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: repeated seed")
        return self

    def sources(self) -> list[str]:
        """Every data source the variants draw from, in first-use order."""
        out: list[str] = []
        for spec in self.variants.values():
            for name in ([spec] if isinstance(spec, str) else list(spec)):
                if name not in out:
                    out.append(name)
        return out


CONFIGS: dict[str, type[BaseModel]] = {
    "tokenizer": TokenizerConfig, "pretrain": PretrainConfig, "sft": SFTConfig, "dpo": DPOConfig,
}


class _Entry(Strict):
    objective: str
    enabled: bool = True

    @model_validator(mode="after")
    def _known(self) -> _Entry:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        return self


def build_entries(tables: dict, format_errors, path) -> list[TrainEntry]:
    """Validate ``[train.*]`` tables; errors carry the key path, like stage tables."""
    from pipeline.config import ConfigError

    entries = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"invalid configuration in {path}:\n  train.{name}: expected a table")
        engine = {"objective": table.get("objective", name), "enabled": table.get("enabled", True)}
        own = {k: v for k, v in table.items() if k not in ("objective", "enabled")}
        try:
            _Entry.model_validate(engine)
            config = CONFIGS[engine["objective"]].model_validate(own)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, path, f"train.{name}.")) from exc
        entries.append(TrainEntry(name=name, objective=engine["objective"],
                                  enabled=engine["enabled"], config=config))
    return entries
