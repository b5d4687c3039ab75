"""Model cards: a README.md with Hugging Face front matter, naming the dataset cards trained on."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

KEYS = ("loss", "eval_loss", "tokens", "tokens_per_s", "mfu", "train_s", "skipped_steps",
        "reward_margin", "reward_accuracy")


def summary_line(summary: dict) -> str:
    parts = []
    for key, fmt in (("loss", "loss {:.3f}"), ("eval_loss", "eval {:.3f}"),
                     ("tokens_per_s", "{:,.0f} tok/s")):
        if summary.get(key) is not None:
            parts.append(fmt.format(summary[key]))
    return "(" + ", ".join(parts) + ")" if parts else ""


def write_model_card(folder: Path, record: dict, evaluation: dict | None = None) -> None:
    summary = record.get("summary", {})
    tags = ["textbook-pipeline", record["objective"]]
    front = {"library_name": "transformers" if record["objective"] != "tokenizer" else None,
             "tags": tags, "datasets": [d["name"] for d in record["datasets"]]}
    if "base" in record.get("bases", {}):
        front["base_model"] = record["bases"]["base"]
    title = "Tokenizer" if record["objective"] == "tokenizer" else "Model"
    lines = ["---", yaml.safe_dump({k: v for k, v in front.items() if v}, sort_keys=False).strip(),
             "---", "", f"# {title} `{record['name']}` ({record['objective']})", "",
             "Trained by textbook-pipeline. Load it with "
             f"`AutoModelForCausalLM.from_pretrained(\"{record['name']}\")` on this folder." if title == "Model" else
             "Load it with `AutoTokenizer.from_pretrained(...)` on this folder.", "",
             "## Training data", "", "| dataset | card | card sha256 |", "|---|---|---|"]
    lines += [f"| {d['name']} | `{d['card']}` | `{d['card_sha256'] or 'none'}` |"
              for d in record["datasets"]]
    for role, label in record.get("bases", {}).items():
        lines.append(f"\n{role}: `{label}`")
    lines += ["", "## Results", "", "| metric | value |", "|---|---:|"]
    for key in KEYS:
        if summary.get(key) is not None:
            lines.append(f"| {key} | {summary[key]} |")
    for key in ("parameters", "trainable_parameters", "vocab_size", "docs", "examples",
                "train_examples", "eval_examples", "device", "workers"):
        if summary.get(key) is not None:
            lines.append(f"| {key} | {summary[key]} |")
    if record.get("wall_s") is not None:
        lines.append(f"| wall time (s) | {record['wall_s']} |")
    if summary.get("mixture"):
        from trainers.mixture import card_section

        lines += [""] + card_section(summary["mixture"])
    if evaluation:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in evaluation.items() if not isinstance(v, dict | list)]
    lines += ["", "## Configuration", "", "```json",
              json.dumps(record["config"], indent=2, sort_keys=True), "```", "",
              f"Key `{record['key']}` (objective, configuration, dataset fingerprints, bases)."]
    (folder / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
