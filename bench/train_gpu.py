"""GPU training benchmark: tokens/s and MFU of our loop on ``phi-1.5`` (1.3B), bf16, seq 2048.

Runs the same loop as ``pipeline train`` (bf16 autocast, torch.compile, SDPA flash attention,
fused AdamW) on random tokens (throughput does not depend on the text), one GPU. MFU counts
6 N + 12 L d T FLOPs per token against the device's dense bf16 peak. Goal: >= 40% on one H100.
Writes ``bench/results/train_gpu.json``. ``--smoke`` runs a tiny preset on whatever device there
is (the CPU here) to check the script itself, and writes nothing.

    python bench/train_gpu.py [--steps 30] [--micro-batch 8] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import write  # noqa: E402


def random_shards(folder: Path, vocab: int, tokens: int) -> Path:
    rng = np.random.default_rng(0)
    rng.integers(0, vocab, tokens, dtype=np.uint16).tofile(folder / "shard-00000.bin")
    (folder / "index.json").write_text(json.dumps({
        "dtype": "uint16", "vocab_size": vocab, "tokens": tokens, "docs": 1,
        "shards": [{"file": "shard-00000.bin", "tokens": tokens, "docs": 1}]}))
    return folder


def main() -> None:
    import torch
    from transformers import PhiForCausalLM

    from trainers.config import LoopConfig
    from trainers.data import PackedBlocks, Split
    from trainers.loop import runtime, train
    from trainers.models import count_params, phi_config
    from trainers.objectives import CausalLM

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--preset", default="phi-1.5")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.seq_len, args.micro_batch, args.steps = "phi-tiny", 128, 2, 6
    vocab = 51200
    cfg = LoopConfig(max_steps=args.steps, micro_batch_size=args.micro_batch, seq_len=args.seq_len,
                     warmup_steps=2, log_every=max(1, args.steps // 3), eval_every=10**6,
                     save_every=10**6, eval_batches=1, lr=2e-4)
    rt = runtime(cfg)
    config = phi_config(args.preset, vocab, 0, 0, {})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = PhiForCausalLM(config)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = (args.steps + 2) * args.micro_batch * (args.seq_len + 1) + 10
        blocks = PackedBlocks(random_shards(Path(tmp), vocab, tokens), args.seq_len)
        started = time.time()
        summary = train(model, CausalLM(), Split(blocks, 0.01, 0), cfg, Path(tmp) / "work", rt, "gpu")
    result = {
        "preset": args.preset, "parameters": count_params(model), "seq_len": args.seq_len,
        "micro_batch": args.micro_batch, "steps": args.steps, "device": str(rt.device),
        "device_name": torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu",
        "bf16": rt.bf16, "compiled": rt.compile, "tokens_per_s": summary.get("tokens_per_s"),
        "mfu": summary.get("mfu"), "peak_flops": rt.peak_flops, "loss": summary.get("loss"),
        "wall_s": round(time.time() - started, 1),
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if rt.device.type == "cuda" else None,
    }
    if args.smoke:
        print(json.dumps(result, indent=2))
    else:
        write("train_gpu", result)


if __name__ == "__main__":
    main()
