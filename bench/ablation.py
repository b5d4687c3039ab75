"""Ablation benchmark: does the pipeline's curation train a better model on this interpreter's code?

The source is this interpreter's ``.py`` files (stdlib and site-packages, vendored near-copies
included). The pipeline's curation without an LLM (exact and MinHash dedup, code heuristics,
HumanEval decontamination) publishes the ``code`` dataset; the ablation trains phi-tiny on the
raw corpus (the ingest stage's kept rows: before dedup and filters) and on ``code``, with equal
tokens, one tokenizer trained on their union and two seeds each, and evaluates every model whole
on HumanEval's prompts with their canonical solutions and on a held-out slice of the curated code
(kept out of both variants). The goal: a curated held-out loss below the raw one by more than
twice the seed spread; the figures are written either way. Writes ``bench/results/ablation.json``.

    python bench/ablation.py [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402

CONFIG = """
[run]
name = "bench-ablation"

[[sources]]
name = "stdlib"
kind = "files"
path = "{{python_stdlib}}"
include = ["**/*.py"]
exclude = ["site-packages/**"]

[[sources]]
name = "site-packages"
kind = "files"
path = "{{site_packages}}"
include = ["**/*.py"]
exclude = ["_distutils_hack/**", "__editable__*"]

[stages.ingest]
[stages.dedup_exact]
[stages.dedup_minhash]
[stages.heuristics]
[stages.decontaminate]

[datasets.code]
from = "decontaminate"

[ablation.curation]
variants = {{ raw = "stage:ingest", curated = "code" }}
preset = "phi-tiny"
sample = 0.05
seq_len = 256
micro_batch_size = 8
max_steps = {steps}
lr = 3e-3
warmup_steps = 20
eval_every = {eval_every}
seeds = [0, 1]

[[ablation.curation.evalsets]]
name = "humaneval"

[[ablation.curation.evalsets]]
name = "heldout"
holdout = "code"
max_chars = 60000
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    import ray
    from rich.console import Console

    from pipeline.config import load_config
    from pipeline.run import run_pipeline

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.toml"
        path.write_text(CONFIG.format(steps=args.steps, eval_every=max(1, args.steps // 3)))
        started = time.time()
        result = run_pipeline(load_config(path), console=Console(stderr=True))
        wall = time.time() - started
        require("curation" in result.ablations, "the ablation did not run")
        report = json.loads((result.ablations["curation"] / "report.json").read_text())
        funnel = {r["stage"]: r["rows_kept"] for r in result.records}
        stage_s = round(sum(r["wall_s"] for r in result.records), 1)
    variants = {}
    for name, entry in report["variants"].items():
        he, held = entry["eval"]["humaneval"], entry["eval"]["heldout"]
        variants[name] = {"eval_loss": he["loss_mean"], "eval_loss_std": he["loss_std"],
                          "eval_losses": he["losses"], "tokens": entry["tokens"][0],
                          "epochs": entry["epochs"], "heldout_loss": held["loss_mean"],
                          "heldout_loss_std": held["loss_std"]}
    require(len({v["tokens"] for v in variants.values()}) == 1, "unequal token budgets")
    raw, curated = variants["raw"], variants["curated"]
    lead = round(raw["eval_loss"] - curated["eval_loss"], 5)
    spread = max(raw["eval_loss_std"], curated["eval_loss_std"])
    write("ablation", {
        "variants": variants, "raw_variant": "raw", "curated_variant": "curated",
        "seeds": len(report["seeds"]), "eval_set": "humaneval (164 prompts + canonical solutions)",
        "steps": report["steps"], "tokens_per_model": report["tokens_per_model"],
        "curated_lead_humaneval": lead, "twice_seed_spread": round(2 * spread, 5),
        "curated_better_beyond_spread": bool(lead > 2 * spread),
        "curated_lead_heldout": round(raw["heldout_loss"] - curated["heldout_loss"], 5),
        "verdicts": report["verdicts"], "funnel_rows_kept": funnel,
        "stages_s": stage_s, "wall_s": round(wall, 1)})


if __name__ == "__main__":
    main()
