"""Datasets and their cards: Parquet shards plus a Hugging Face Hub style ``README.md``.

A card has YAML front matter (license, task categories, size category, configs/data_files,
features), then the schema, counts and sizes, the funnel by stage and reason, the sources, the
resolved configuration and PNG plots. A stage adds a section of its own by defining
``card_section(record, plot_dir) -> str | None`` in its module (``record`` is its ledger entry).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from pipeline import io  # noqa: E402
from pipeline.stage import load_stage_module  # noqa: E402

CARD_VERSION = "1"
HUB_LICENSES = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0",
                "cc0-1.0", "gpl-2.0", "gpl-3.0", "lgpl-3.0", "odc-by", "openrail", "unknown"}


def size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"),
              (1_000_000_000, "100M<n<1B")]
    return next((label for bound, label in bounds if n < bound), "n>1T" if n > 10**12 else "1B<n<10B")


def hub_dtype(kind: pa.DataType) -> str:
    """The Hub's name for an Arrow type (``double`` is ``float64`` there)."""
    return {"double": "float64", "float": "float32", "halffloat": "float16"}.get(str(kind), str(kind))


def chain(records: list[dict], last: str) -> list[dict]:
    """The stages that led to ``last``, first to last, following each stage's input."""
    by_name = {r["stage"]: r for r in records}
    out, name = [], last
    while name in by_name:
        out.append(by_name[name])
        name = by_name[name].get("input")
    return out[::-1]


def publish(cfg, name: str, spec, record: dict, records: list[dict]) -> Path:
    """Publish a stage's kept rows as dataset ``name`` (hard links when no columns are chosen)."""
    dest = cfg.run_dir / "datasets" / name
    stages = chain(records, record["stage"])
    fp = io.fingerprint([CARD_VERSION, spec.model_dump(mode="json", by_alias=True),
                         [r["output_fingerprint"] for r in stages]])
    marker = dest / ".fingerprint"
    if marker.is_file() and marker.read_text() == fp:
        return dest
    tmp = io.temp_sibling(dest)
    (tmp / "data").mkdir(parents=True)
    parts = io.parquet_parts(Path(record["path"]))
    for i, part in enumerate(parts):
        target = tmp / "data" / f"train-{i:05d}-of-{len(parts):05d}.parquet"
        if spec.columns:
            pq.write_table(pq.read_table(part, columns=spec.columns), target, compression="zstd")
        else:
            try:
                os.link(part, target)
            except OSError:
                shutil.copyfile(part, target)
    schema = io.output_schema(Path(record["path"]))
    if not parts and schema is not None:  # no rows is still a dataset: one shard, 0 rows
        empty = schema.empty_table()
        empty = empty.select(spec.columns) if spec.columns else empty
        # no row group at all: readers that size batches by the first row group read nothing
        pq.ParquetWriter(tmp / "data" / "train-00000-of-00001.parquet", empty.schema).close()
    files = io.parquet_parts(tmp / "data")
    (tmp / "README.md").write_text(render(cfg, name, spec, stages, files, tmp), encoding="utf-8")
    (tmp / ".fingerprint").write_text(fp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _license(cfg, spec) -> tuple[str, list[str]]:
    licenses = sorted({spec.license} if spec.license else {s.license for s in cfg.sources})
    if len(licenses) == 1 and licenses[0].lower() in HUB_LICENSES:
        return licenses[0].lower(), licenses
    return "other", licenses


def render(cfg, name: str, spec, stages: list[dict], files: list[Path], folder: Path) -> str:
    schema = pq.read_schema(files[0]) if files else pa.schema([])
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    nbytes = sum(f.stat().st_size for f in files)
    license_id, licenses = _license(cfg, spec)
    front = {
        "license": license_id,
        "task_categories": spec.task_categories,
        "size_categories": [size_category(rows)],
        "tags": ["textbook-pipeline", "synthetic" if name.startswith("synthetic") else "curated"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        "dataset_info": {
            "features": [{"name": f.name, "dtype": hub_dtype(f.type)} for f in schema],
            "splits": [{"name": "train", "num_bytes": nbytes, "num_examples": rows}],
        },
    }
    if spec.language:
        front["language"] = spec.language
    if license_id == "other":
        front["license_name"] = " / ".join(licenses)
    plots = folder / "plots"
    plots.mkdir(exist_ok=True)
    out = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
           f"# {name}", "", spec.description or f"Dataset `{name}` from run `{cfg.run.name}`.", "",
           f"Built by textbook-pipeline; the kept rows of stage `{stages[-1]['folder']}`.", "",
           "## Size", "", f"- rows: {rows:,}", f"- Parquet files: {len(files)} ({nbytes / 1e6:,.1f} MB)"]
    if rows == 0:
        out += ["", "## Why this dataset is empty", "", why_empty(stages)]
    out += _length_section(files, schema, plots)
    out += ["", "## Schema", "", "| column | type |", "|---|---|"]
    out += [f"| `{f.name}` | {f.type} |" for f in schema]
    out += ["", "## Funnel", "", "| stage | in | kept | rejected | reasons |", "|---|---:|---:|---:|---|"]
    for r in stages:
        reasons = ", ".join(f"`{k}` {v:,}" for k, v in
                            sorted(r["rejected_by_reason"].items(), key=lambda kv: -kv[1]))
        out.append(f"| {r['folder']} | {r['rows_in']:,} | {r['rows_kept']:,} | "
                   f"{r['rows_rejected']:,} | {reasons or '-'} |")
    _funnel_plot(stages, plots / "funnel.png")
    out += ["", "![funnel](plots/funnel.png)"]
    for r in stages:
        section = _stage_section(r, plots)
        if section:
            out += ["", section.strip()]
    out += _llm_section(stages)
    out += ["", "## Sources", "", "| source | kind | path | license |", "|---|---|---|---|"]
    out += [f"| {s.name} | {s.kind} | `{s.path}` | {s.license} |" for s in cfg.sources]
    out += ["", "## Configuration", "", "The resolved run configuration:", "", "```json",
            json.dumps(cfg.raw, indent=2, default=str), "```", "",
            "## Provenance", ""]
    out += [f"- `{r['folder']}`: config `{r['config_hash']}`, output `{r['output_fingerprint']}`, "
            f"{r['wall_s']:.1f}s, finished {r['finished_at']}" for r in stages]
    if stages:
        out.append("- versions: " + ", ".join(f"{k} {v}" for k, v in stages[-1]["versions"].items()))
    return "\n".join(out) + "\n"


def why_empty(stages: list[dict]) -> str:
    """Which stage of the chain left no row, and for what reasons."""
    for r in stages:
        if r["rows_kept"] == 0:
            if r["rows_in"] == 0:
                return f"Stage `{r['folder']}` received no rows."
            reasons = ", ".join(f"`{k}` ({v:,})" for k, v in
                                sorted(r["rejected_by_reason"].items(), key=lambda kv: -kv[1]))
            return (f"Stage `{r['folder']}` received {r['rows_in']:,} rows and rejected all of "
                    f"them: {reasons}. `pipeline inspect RUN --stage {r['stage']} --rejected` "
                    "shows them.")
    return "No stage kept a row."


def _llm_section(stages: list[dict]) -> list[str]:
    rows = [u for r in stages for u in r.get("info", {}).get("llm_usage", [])]
    if not rows:
        return []
    out = ["", "## LLM usage", "", "| stage | model | requests | cache hits | retries | failures | "
           "prompt tokens | completion tokens |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {u['stage']} | {u['model']} | {u['requests']:,} | {u['cache_hits']:,} | "
            f"{u['retries']:,} | {u['failures']:,} | {u['prompt_tokens']:,} | "
            f"{u['completion_tokens']:,} |" for u in rows]
    return out


def _stage_section(record: dict, plots: Path) -> str | None:
    try:
        module = load_stage_module(record["kind"])
    except ImportError:
        return None
    hook = getattr(module, "card_section", None)
    return hook(record, plots) if hook else None


def _length_section(files: list[Path], schema: pa.Schema, plots: Path) -> list[str]:
    if "n_chars" in schema.names:
        lengths = np.concatenate([pq.read_table(f, columns=["n_chars"]).column(0).to_numpy()
                                  for f in files]) if files else np.array([])
    elif "text" in schema.names:
        lengths = np.array([len(t or "") for f in files
                            for t in pq.read_table(f, columns=["text"]).column(0).to_pylist()])
    else:
        return []
    if lengths.size == 0:
        return []
    q = np.percentile(lengths, [5, 50, 95])
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.log10(np.maximum(lengths, 1)), bins=50, color="#4a7ab5")
    ax.set_xlabel("log10(characters)")
    ax.set_ylabel("documents")
    ax.set_title("Document length")
    fig.tight_layout()
    fig.savefig(plots / "length_hist.png", dpi=100)
    plt.close(fig)
    return [f"- characters: {int(lengths.sum()):,} in all; median {q[1]:,.0f}, "
            f"5th percentile {q[0]:,.0f}, 95th {q[2]:,.0f}", "",
            "![length histogram](plots/length_hist.png)"]


def _funnel_plot(stages: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * max(1, len(stages))))
    names = [r["folder"] for r in stages][::-1]
    kept = [r["rows_kept"] for r in stages][::-1]
    rejected = [r["rows_rejected"] for r in stages][::-1]
    ax.barh(names, kept, color="#4a9a5b", label="kept")
    ax.barh(names, rejected, left=kept, color="#c0504d", label="rejected")
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
