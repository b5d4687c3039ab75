"""Training benchmark: our loop versus transformers' ``Trainer``, same model, data and batch, CPU.

Both arms train the same phi-class model (``phi-tiny`` preset, seeded init) on the same packed
blocks of this interpreter's stdlib source, tokenized by a BPE trained on it, with the same micro
batch, sequence length, optimizer (AdamW, fp32) and number of steps. Each arm runs in its own
process (so peak RSS is its own); throughput is tokens per second over the steps after a short
warm-up, best of two interleaved runs per arm (so a noisy neighbour does not favour either). Writes ``bench/results/train.json``.

    python bench/train.py
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import write  # noqa: E402

SEQ, BATCH, STEPS, WARMUP = 256, 8, 25, 4
END = STEPS - 1  # the last step also evaluates and saves: time the steps before it


def prepare(folder: Path) -> None:
    """Corpus Parquet, tokenizer and token shards shared by both arms."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from trainers.data import tokenize_to_shards
    from trainers.tokenizer import train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))[:120]
    pq.write_table(pa.table({"text": [f.read_text(encoding="utf-8", errors="replace") for f in files]}),
                   folder / "corpus.parquet")
    train_tokenizer([folder / "corpus.parquet"], folder / "tokenizer", vocab_size=4096)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tokenize_to_shards([folder / "corpus.parquet"], folder / "tokenizer", "text", folder / "shards")
    ray.shutdown()


def arm_ours(folder: Path) -> dict:
    from trainers.job import Job, execute
    from trainers.models import Base

    shutil.rmtree(folder / "ours-work", ignore_errors=True)  # no resume from the previous run
    marks: dict[int, float] = {}
    job = Job(name="bench", objective="pretrain", key="bench", work_dir=folder / "ours-work",
              out_dir=folder / "ours-out", tokenizer=Base(folder / "tokenizer"),
              shard_dir=folder / "shards",
              config={"dataset": "x", "preset": "phi-tiny", "seq_len": SEQ, "micro_batch_size": BATCH,
                      "max_steps": STEPS, "warmup_steps": 2, "eval_every": 10_000,
                      "save_every": 10_000, "log_every": 10_000, "lr": 1e-3, "eval_batches": 1})
    execute(job, on_step=lambda step: marks.setdefault(step, time.perf_counter()))
    return {"seconds": marks[END] - marks[WARMUP]}


def arm_hf(folder: Path) -> dict:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from trainers.data import PackedBlocks
    from trainers.models import new_phi
    from trainers.tokenizer import load_tokenizer

    tok = load_tokenizer(folder / "tokenizer")
    model = new_phi("phi-tiny", tok, {}, seed=0)
    blocks = PackedBlocks(folder / "shards", SEQ)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            ids = blocks._block(i)
            return {"input_ids": torch.from_numpy(ids[:-1].copy()),
                    "labels": torch.from_numpy(ids[:-1].copy())}

    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.setdefault(state.global_step, time.perf_counter())

    args = TrainingArguments(output_dir=str(folder / "hf-out"), per_device_train_batch_size=BATCH,
                             max_steps=STEPS, learning_rate=1e-3, warmup_steps=2,
                             lr_scheduler_type="cosine", weight_decay=0.1, adam_beta2=0.95,
                             logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Clock()]).train()
    return {"seconds": marks[END] - marks[WARMUP]}


def run_arm(name: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--arm", name, "--folder", str(folder)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"arm {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=["ours", "hf"])
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.arm:
        result = (arm_ours if args.arm == "ours" else arm_hf)(Path(args.folder))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        runs = [(arm, run_arm(arm, folder)) for arm in ("ours", "hf", "ours", "hf")]  # interleaved
    ours = min((r for arm, r in runs if arm == "ours"), key=lambda r: r["seconds"])
    hf = min((r for arm, r in runs if arm == "hf"), key=lambda r: r["seconds"])
    tokens = (END - WARMUP) * BATCH * SEQ
    result = {
        "model": "phi-tiny (d=256, 4 layers, vocab 4096)", "seq_len": SEQ, "micro_batch": BATCH,
        "timed_steps": END - WARMUP, "device": "cpu",
        "ours_tokens_per_s": round(tokens / ours["seconds"], 1),
        "hf_trainer_tokens_per_s": round(tokens / hf["seconds"], 1),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "hf_trainer_peak_rss_mb": round(hf["peak_rss_mb"], 1),
    }
    result["ratio_vs_hf_trainer"] = round(result["ours_tokens_per_s"] / result["hf_trainer_tokens_per_s"], 3)
    write("train", result)


if __name__ == "__main__":
    main()
