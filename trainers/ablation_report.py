"""An ablation's report: variants x evaluation sets (mean and spread over seeds), tokens and
epochs per variant, loss curves, links to every model card, and one verdict per evaluation set.

A verdict names the variant with the lowest mean loss and says whether its lead over the next
one exceeds twice the larger of their seed spreads (sample standard deviations); when it does
not, the report says that no variant is clearly better on that set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pipeline import io


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return {"loss_mean": round(float(arr.mean()), 5), "loss_std": round(std, 5) if std is not None else None,
            "perplexity_mean": round(math.exp(float(arr.mean())), 3),
            "losses": [round(float(v), 5) for v in arr]}


def verdict(set_name: str, stats: dict[str, dict]) -> tuple[str, str | None, bool]:
    """The verdict line for one evaluation set, its best variant, and whether the lead is real."""
    ranked = sorted(stats, key=lambda v: stats[v]["loss_mean"])
    best = ranked[0]
    a = stats[best]
    if len(ranked) == 1:
        return f"{set_name}: one variant ({best}), nothing to compare", best, False
    runner = ranked[1]
    b = stats[runner]
    lead = b["loss_mean"] - a["loss_mean"]
    shown = (f"{best} {a['loss_mean']:.4f}" + (f" ± {a['loss_std']:.4f}" if a["loss_std"] is not None else "")
             + f" vs {runner} {b['loss_mean']:.4f}" + (f" ± {b['loss_std']:.4f}" if b["loss_std"] is not None else ""))
    if a["loss_std"] is None or b["loss_std"] is None:
        return (f"{set_name}: {best} has the lowest loss ({shown}, lead {lead:.4f}); one seed, "
                "so no spread to judge the lead by"), best, False
    spread = max(a["loss_std"], b["loss_std"])
    if lead > 2 * spread:
        return (f"{set_name}: {best} is best ({shown}); its lead {lead:.4f} exceeds twice the "
                f"seed spread ({2 * spread:.4f})"), best, True
    return (f"{set_name}: no variant is clearly better; {best} has the lowest loss ({shown}) but "
            f"its lead {lead:.4f} is within twice the seed spread ({2 * spread:.4f})"), best, False


def build(name: str, conf, records: list[dict], evals: list, tokenizer: str) -> dict:
    """The report's figures, from the models' ``_SUCCESS.json`` records."""
    variants: dict[str, dict] = {}
    for rec in records:
        entry = variants.setdefault(rec["variant"], {
            "spec": conf.variants[rec["variant"]], "models": [], "tokens": [], "epochs": 0.0,
            "components": rec["summary"]["mixture"]["components"]})
        mix = rec["summary"]["mixture"]
        trained = rec["summary"]["tokens"]
        entry["tokens"].append(trained)
        entry["epochs"] = max(entry["epochs"], max(
            trained * c["weight"] / c["available_tokens"] for c in mix["components"]))
        entry["models"].append({"name": rec["name"], "seed": rec["seed"],
                                "card": f"models/{rec['name']}/README.md",
                                "evaluation": rec["evaluation"]})
    table: dict[str, dict[str, dict]] = {e.name: {} for e in evals}
    for variant, entry in variants.items():
        entry["epochs"] = round(entry["epochs"], 4)
        entry["eval"] = {}
        for e in evals:
            stats = _stats([m["evaluation"][e.name]["eval_loss"] for m in entry["models"]])
            entry["eval"][e.name] = table[e.name][variant] = stats
    verdicts, best, clear = {}, {}, {}
    for set_name, stats in table.items():
        verdicts[set_name], best[set_name], clear[set_name] = verdict(set_name, stats)
    first = records[0]
    return {"ablation": name, "preset": conf.preset, "tokenizer": tokenizer, "seeds": conf.seeds,
            "steps": first["summary"]["step"], "seq_len": conf.seq_len,
            "tokens_per_model": first["summary"]["tokens"],
            "evalsets": {e.name: {"kind": e.kind, "documents": len(e.texts),
                                  "tokens": records[0]["evaluation"][e.name]["eval_tokens"]}
                         for e in evals},
            "variants": variants, "verdicts": verdicts, "best": best, "clear": clear}


def plot(root: Path, report: dict) -> Path:
    """Loss on each evaluation set against training tokens: one colour per variant, a thin line
    per seed, a thick one for the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(report["evalsets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for number, (variant, entry) in enumerate(report["variants"].items()):
        colour = f"C{number}"
        curves = [json.loads((root / "models" / m["name"] / "curve.json").read_text())
                  for m in entry["models"]]
        steps = sorted(set.intersection(*[set(c) for c in curves]), key=int)
        x = [curves[0][s]["tokens"] for s in steps]
        for ax, set_name in zip(axes[0], sets):
            ys = np.array([[c[s][set_name]["eval_loss"] for s in steps] for c in curves])
            for y in ys:
                ax.plot(x, y, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(x, ys.mean(axis=0), color=colour, linewidth=2, label=variant)
    for ax, set_name in zip(axes[0], sets):
        ax.set_title(f"{set_name} (held out)")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("loss per token")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = root / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _cell(stats: dict) -> str:
    spread = f" ± {stats['loss_std']:.4f}" if stats["loss_std"] is not None else ""
    return f"{stats['loss_mean']:.4f}{spread} (ppl {stats['perplexity_mean']:.1f})"


def markdown(report: dict, conf) -> str:
    sets = list(report["evalsets"])
    lines = [f"# Ablation `{report['ablation']}`", "",
             f"Preset `{report['preset']}`, tokenizer `{report['tokenizer']}`, "
             f"{report['tokens_per_model']:,} training tokens per model ({report['steps']} steps "
             f"of {conf.micro_batch_size * conf.grad_accum} x {conf.seq_len} tokens, lr {conf.lr}, "
             f"{conf.warmup_steps} warmup steps, cosine to {conf.min_lr_ratio} x lr), seeds "
             f"{', '.join(map(str, report['seeds']))}.", "", "## Verdicts", ""]
    lines += [f"- {report['verdicts'][s]}" for s in sets]
    lines += ["", f"## Held-out loss (mean ± sample std over {len(report['seeds'])} seeds)", "",
              "| variant | tokens | epochs | " + " | ".join(sets) + " |",
              "|---|---:|---:|" + "---:|" * len(sets)]
    for variant, entry in report["variants"].items():
        lines.append(f"| {variant} | {entry['tokens'][0]:,} | {entry['epochs']:.2f} | "
                     + " | ".join(_cell(entry["eval"][s]) for s in sets) + " |")
    lines += ["", "![eval-loss curves](curves.png)", "", "## Variants and models", "",
              "| variant | data (requested -> realized weight, epochs) | models |", "|---|---|---|"]
    for variant, entry in report["variants"].items():
        parts = ", ".join(f"`{c['name']}` {c['weight']:.0%} -> {c['realized_weight']:.1%}, "
                          f"{c['epochs']:.2f}" for c in entry["components"])
        models = ", ".join(f"[{m['name']}]({m['card']})" for m in entry["models"])
        lines.append(f"| {variant} | {parts} | {models} |")
    lines += ["", "## Evaluation sets", "", "| set | kind | documents | tokens |", "|---|---|---:|---:|"]
    lines += [f"| {s} | {v['kind']} | {v['documents']:,} | {v['tokens']:,} |"
              for s, v in report["evalsets"].items()]
    lines += ["", "Every set is evaluated whole. No variant trains on any of them: a held-out "
              "slice's documents are left out of every variant, and any other set sharing a "
              "document (by a hash of its words) with a variant's training data is refused. "
              "Near-duplicates are not checked here; a decontaminate stage does that.", ""]
    return "\n".join(lines)


def write_report(root: Path, name: str, conf, records: list[dict], evals: list,
                 tokenizer: str) -> Path:
    report = build(name, conf, records, evals, tokenizer)
    plot(root, report)
    io.write_text_atomic(root / "report.json", json.dumps(report, indent=2))
    io.write_text_atomic(root / "report.md", markdown(report, conf))
    return root / "report.md"
