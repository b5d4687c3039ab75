"""Quality benchmark: heuristic filters vs DataTrove's, fastText scoring speed, classifier F1.

Heuristics: each prose rule set of ours alone against the DataTrove filter it reproduces, with
its default arguments (C4QualityFilter, FineWebQualityFilter, GopherRepetitionFilter,
GopherQualityFilter), on a prose corpus every machine has: the Markdown, reST and text files
(and package METADATA) of this interpreter's site-packages and standard library and of
/usr/share/doc (plain or gzipped), in a stable hashed order, each cut at a line boundary to
20,000 characters, 6 MB in all. Agreement is the fraction of documents both keep or both drop;
for C4 also the fraction of documents both keep whose cleaned text is identical. Speed: all four
rule sets, ours vs DataTrove's, on that corpus (MB/s per core), and the default prose chain of
ours on 40 MB of this interpreter's stdlib files. fastText: documents/s scoring 1.5 KB excerpts
with a model trained on documented vs minified code (whose validation F1 is reported). Writes
``bench/results/quality.json``.

    pip install -e '.[bench]'; python bench/quality.py
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._results import require, write  # noqa: E402
from stages.heuristics import Config, apply_rules, process  # noqa: E402
from stages.quality import Config as QualityConfig  # noqa: E402
from stages.quality import score_batch, train  # noqa: E402
from tests.stages.test_quality import documented_modules, minify  # noqa: E402

PROSE_MB = 6.0
DOC_CHARS = 20_000
PROSE_SUFFIXES = {".md", ".rst", ".txt"}
RULE_SETS = ["c4", "fineweb", "gopher_repetition", "gopher_quality"]
TARGETS = {"c4": 0.98, "fineweb": 0.97, "gopher_repetition": 0.95}


def corpus(limit_mb: float) -> list[str]:
    """This interpreter's stdlib Python files, in path order, up to ``limit_mb``."""
    def read(path: Path) -> str | None:
        try:
            return path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            return None

    return _up_to(map(read, sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))), limit_mb)


def _up_to(texts, limit_mb: float) -> list[str]:
    """The readable texts (not None) of an iterable, in order, until they reach ``limit_mb``."""
    out, size = [], 0
    for text in texts:
        if text is None:
            continue
        out.append(text)
        size += len(text.encode())
        if size >= limit_mb * 1e6:
            break
    return out


def _is_prose(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).suffix.lower() in PROSE_SUFFIXES or name == "METADATA" \
        or name.split(".")[0] in ("README", "NEWS", "changelog", "CHANGES")


def _read(path: Path) -> str | None:
    try:
        data = path.read_bytes()
        text = (gzip.decompress(data) if path.name.endswith(".gz") else data).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\0" in text or not text.strip():
        return None
    if len(text) > DOC_CHARS:
        cut = text.rfind("\n", 0, DOC_CHARS)
        text = text[: cut if cut > 0 else DOC_CHARS]
    return text


def prose_corpus(limit_mb: float) -> list[str]:
    """Documentation files of this machine (see the module docstring), up to ``limit_mb``."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["purelib"]), Path(paths["stdlib"]), Path("/usr/share/doc")]
    files = {p for root in roots if root.is_dir() for p in root.rglob("*")
             if _is_prose(p) and p.is_file()
             and not (root.name != "site-packages" and "site-packages" in p.parts)}
    order = sorted(files, key=lambda p: hashlib.blake2b(str(p).encode(), digest_size=8).digest())
    return _up_to(map(_read, order), limit_mb)


def ours_by_rule_set(texts: list[str]) -> tuple[dict, dict, float]:
    """(kept mask per rule set, cleaned C4 text, seconds for the four) with our stage."""
    text, config = pa.array(texts), Config(profile="prose")
    apply_rules(text.slice(0, 20), RULE_SETS, config)  # compile
    kept, start = {}, time.perf_counter()
    for rule_set in RULE_SETS:
        reasons, out, _ = apply_rules(text, [rule_set], config)
        kept[rule_set] = reasons == None  # noqa: E711
        if rule_set == "c4":
            cleaned = out.to_pylist()
    return kept, cleaned, time.perf_counter() - start


def datatrove_by_rule_set(texts: list[str]) -> tuple[dict, dict, list, float]:
    """(kept mask per rule set, DataTrove's reason per dropped document, cleaned C4 text,
    seconds): each filter on every document (their spaCy word split is cached across them)."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    filters = {"c4": C4QualityFilter(), "fineweb": FineWebQualityFilter(),
               "gopher_repetition": GopherRepetitionFilter(), "gopher_quality": GopherQualityFilter()}
    filters["gopher_quality"].filter(Document(text="warm up the tokenizer. " * 20, id="w"))
    kept = {name: np.zeros(len(texts), dtype=bool) for name in filters}
    why = {name: [None] * len(texts) for name in filters}
    cleaned = [None] * len(texts)
    start = time.perf_counter()
    for i, text in enumerate(texts):
        for name, step in filters.items():
            doc = Document(text=text, id=str(i))
            verdict = step.filter(doc)
            kept[name][i] = verdict is True or (isinstance(verdict, tuple) and verdict[0])
            why[name][i] = None if kept[name][i] else (verdict[1] if isinstance(verdict, tuple) else "")
            if name == "c4":
                cleaned[i] = doc.text
    return kept, why, cleaned, time.perf_counter() - start


def agreement(texts: list[str]) -> dict:
    ours, our_text, ours_s = ours_by_rule_set(texts)
    theirs, why, their_text, theirs_s = datatrove_by_rule_set(texts)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    out = {"prose_docs": len(texts), "prose_mb": round(mb, 1)}
    for name in RULE_SETS:
        out[f"agreement_{name}"] = round(float((ours[name] == theirs[name]).mean()), 4)
        out[f"kept_{name}"] = {"ours": int(ours[name].sum()), "datatrove": int(theirs[name].sum())}
    both = np.flatnonzero(ours["c4"] & theirs["c4"])
    out["c4_identical_text"] = round(float(np.mean([our_text[i] == their_text[i] for i in both])), 4)
    only_theirs = collections.Counter(why["gopher_quality"][i] for i in np.flatnonzero(
        ours["gopher_quality"] & ~theirs["gopher_quality"]))
    out["gopher_quality_dropped_only_by_datatrove"] = dict(only_theirs.most_common())
    out["targets_met"] = {name: out[f"agreement_{name}"] >= limit for name, limit in TARGETS.items()}
    out["targets_met"]["c4_identical_text"] = out["c4_identical_text"] >= 0.95
    out["rule_sets_mb_per_s_per_core"] = {"ours": round(4 * mb / ours_s, 2),
                                          "datatrove": round(4 * mb / theirs_s, 3)}
    out["ratio_vs_datatrove"] = round(theirs_s / ours_s, 1)
    return out


def ours_throughput(texts: list[str]) -> float:
    batch = pa.table({"text": texts, "path": ["x.txt"] * len(texts)})
    config = Config(profile="prose")
    process(batch.slice(0, 20), config)  # compile
    start = time.perf_counter()
    for offset in range(0, batch.num_rows, 2000):
        process(batch.slice(offset, 2000), config)
    return time.perf_counter() - start


def fasttext_bench(folder: Path) -> tuple[float, float]:
    docs = documented_modules(300)
    examples = [(t, 5) for t in docs[::2]] + [(minify(t), 0) for t in docs[1::2]]
    model_path, metrics = train(examples, QualityConfig(valid_fraction=0.3), folder)
    excerpts = [t[:1500] for t in corpus(40.0)]
    excerpts = (excerpts * (1 + 20000 // max(1, len(excerpts))))[:20000]
    batch = pa.table({"id": [str(i) for i in range(len(excerpts))], "text": excerpts})
    score_batch(batch.slice(0, 10), str(model_path), "text", 1500)
    start = time.perf_counter()
    for offset in range(0, batch.num_rows, 2000):
        score_batch(batch.slice(offset, 2000), str(model_path), "text", 1500)
    return batch.num_rows / (time.perf_counter() - start), metrics["f1"]


def main() -> None:
    prose = prose_corpus(PROSE_MB)
    require(len(prose) >= 200, f"only {len(prose)} documentation files found")
    results = agreement(prose)
    code = corpus(40.0)
    mb = sum(len(t.encode()) for t in code) / 1e6
    results.update({"corpus_mb": round(mb, 1),
                    "heuristics_mb_per_s_per_core": round(mb / ours_throughput(code), 2)})
    docs_per_s, f1 = fasttext_bench(Path(tempfile.mkdtemp(prefix="bench-quality-")))
    results.update({"fasttext_docs_per_s_per_core": round(docs_per_s, 1), "classifier_f1": f1})
    write("quality", results)


if __name__ == "__main__":
    main()
