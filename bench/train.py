"""Training benchmark: our loop versus transformers' ``Trainer``, same model, data and batch, CPU.

Both arms train the same phi-class model (``phi-tiny`` preset, seeded init) on the same packed
blocks of this interpreter's stdlib source, tokenized by a BPE trained on it, with the same micro
batch, sequence length, optimizer (AdamW, fp32), schedule, number of steps and torch threads; each
arm runs in its own process (so peak RSS is its own).

The figure is the median over ``--pairs`` (5) pairs of runs of the ratio of our tokens/s to
``Trainer``'s, with its spread. In a pair both processes start together and then step in turn:
after each step an arm reports and waits until the parent lets it take the next one, and the
parent alternates the arms (and which goes first) step by step, so a neighbour's load on a shared
machine falls on both alike. A step's time runs from the moment an arm is let go to the end of
its step callback, so it holds all of the loop's own per-step work. A pair's ratio is that of
the arms' median step times over the steps after a short warm-up (the last step, where our loop
also evaluates and saves, is left out): a neighbour's burst that stalls one step of one arm
does not decide it. The ratio of the summed step times is reported too.
Writes ``bench/results/train.json``.

    python bench/train.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402

SEQ, BATCH, STEPS, WARMUP = 256, 8, 14, 3
TIMED = range(WARMUP + 1, STEPS)  # the last step also evaluates and saves: time the steps before it
ARMS = ("ours", "hf")
MARK, RESULT = "@step ", "@result "


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


class Gate:
    """Step callback of an arm: time the step, report it, wait for the parent's go."""

    def __init__(self):
        self.seconds: dict[int, float] = {}
        self.threads = 0
        self.resumed = time.perf_counter()

    def __call__(self, step: int) -> None:
        import torch

        self.seconds.setdefault(step, time.perf_counter() - self.resumed)
        self.threads = torch.get_num_threads()
        print(f"{MARK}{step}", flush=True)
        sys.stdin.readline()
        self.resumed = time.perf_counter()


def arm_ours(folder: Path, gate: Gate) -> None:
    from trainers.job import Job, execute
    from trainers.models import Base

    shutil.rmtree(folder / "ours-work", ignore_errors=True)  # no resume from the previous run
    job = Job(name="bench", objective="pretrain", key="bench", work_dir=folder / "ours-work",
              out_dir=folder / "ours-out", tokenizer=Base(folder / "tokenizer"),
              shard_dir=folder / "shards",
              config={"dataset": "x", "preset": "phi-tiny", "seq_len": SEQ, "micro_batch_size": BATCH,
                      "max_steps": STEPS, "warmup_steps": 2, "eval_every": 10_000,
                      "save_every": 10_000, "log_every": 10_000, "lr": 1e-3, "eval_batches": 1})
    execute(job, on_step=gate)


def arm_hf(folder: Path, gate: Gate) -> None:
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

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            gate(state.global_step)

    args = TrainingArguments(output_dir=str(folder / "hf-out"), per_device_train_batch_size=BATCH,
                             max_steps=STEPS, learning_rate=1e-3, warmup_steps=2,
                             lr_scheduler_type="cosine", weight_decay=0.1, adam_beta2=0.95,
                             logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[Clock()]).train()


def _wait(name: str, proc: subprocess.Popen, step: int, errors) -> None:
    """Read the arm's output until it reports ``step``."""
    for line in proc.stdout:
        if line.startswith(MARK) and int(line[len(MARK):]) == step:
            return
    errors.seek(0)
    raise RuntimeError(f"arm {name} stopped before step {step}:\n{errors.read()[-3000:]}")


def run_pair(folder: Path, pair: int) -> dict:
    """Both arms at once, stepping in turn; each arm's step times and peak RSS."""
    errors = {arm: tempfile.TemporaryFile("w+") for arm in ARMS}
    procs = {arm: subprocess.Popen([sys.executable, __file__, "--arm", arm, "--folder", str(folder)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors[arm], text=True, bufsize=1) for arm in ARMS}
    try:
        for step in range(1, STEPS + 1):
            order = ARMS if (step + pair) % 2 else ARMS[::-1]
            for arm in order:
                if step > 1:
                    procs[arm].stdin.write("go\n")
                    procs[arm].stdin.flush()
                _wait(arm, procs[arm], step, errors[arm])
        results = {}
        for arm in ARMS:
            out, _ = procs[arm].communicate("go\n", timeout=300)
            lines = [line for line in out.splitlines() if line.startswith(RESULT)]
            if procs[arm].returncode != 0 or not lines:
                errors[arm].seek(0)
                raise RuntimeError(f"arm {arm} failed:\n{errors[arm].read()[-3000:]}")
            results[arm] = json.loads(lines[-1][len(RESULT):])
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for handle in errors.values():
            handle.close()


def run_arm(name: str, folder: Path) -> None:
    gate = Gate()
    (arm_ours if name == "ours" else arm_hf)(folder, gate)
    print(RESULT + json.dumps({
        "steps": [gate.seconds[s] for s in TIMED], "threads": gate.threads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arm", choices=ARMS)
    parser.add_argument("--folder")
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    if args.arm:
        run_arm(args.arm, Path(args.folder))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare(folder)
        pairs = [run_pair(folder, i) for i in range(args.pairs)]
    threads = {p[arm]["threads"] for p in pairs for arm in ARMS}
    require(len(threads) == 1, f"the arms ran with different torch thread counts: {threads}")
    step_tokens = BATCH * SEQ
    typical = [{arm: statistics.median(p[arm]["steps"]) for arm in ARMS} for p in pairs]
    ratios = [t["hf"] / t["ours"] for t in typical]
    totals = [sum(p["hf"]["steps"]) / sum(p["ours"]["steps"]) for p in pairs]
    result = {
        "model": "phi-tiny (d=256, 4 layers, vocab 4096)", "seq_len": SEQ, "micro_batch": BATCH,
        "timed_steps": len(TIMED), "device": "cpu", "threads": threads.pop(), "pairs": len(pairs),
        "ours_tokens_per_s": round(statistics.median(step_tokens / t["ours"] for t in typical), 1),
        "hf_trainer_tokens_per_s": round(statistics.median(step_tokens / t["hf"] for t in typical), 1),
        "peak_rss_mb": round(max(p["ours"]["peak_rss_mb"] for p in pairs), 1),
        "hf_trainer_peak_rss_mb": round(max(p["hf"]["peak_rss_mb"] for p in pairs), 1),
        "median_ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "median_ratio_of_total_times": round(statistics.median(totals), 3),
        "ratios_of_total_times": [round(r, 3) for r in totals],
    }
    write("train", result)


if __name__ == "__main__":
    main()
