"""Quality benchmark: heuristic filters vs DataTrove's chain, fastText scoring speed, classifier F1.

Heuristics: our prose rule sets (Gopher quality, Gopher repetition, C4, FineWeb) against
DataTrove's GopherQuality + GopherRepetition + C4Quality + FineWebQuality filters on the same
documents (the default corpus: this interpreter's stdlib files), one process each, MB/s per core.
fastText: documents/s scoring 1.5 KB excerpts with a model trained on documented vs minified code
(whose validation F1 is reported). Writes ``bench/results/quality.json``.

    pip install -e '.[bench]'; python bench/quality.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.heuristics import Config, process  # noqa: E402
from stages.quality import Config as QualityConfig  # noqa: E402
from stages.quality import score_batch, train  # noqa: E402
from tests.stages.test_quality import documented_modules, minify  # noqa: E402

PEER_MB = 4.0  # DataTrove runs ~0.3 MB/s: time it on the first 4 MB


def corpus(limit_mb: float) -> list[str]:
    import sysconfig

    texts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        size += len(text.encode())
        if size >= limit_mb * 1e6:
            break
    return texts


def ours(texts: list[str]) -> float:
    batch = pa.table({"text": texts, "path": ["x.txt"] * len(texts)})
    config = Config(profile="prose")
    process(batch.slice(0, 20), config)  # compile
    start = time.perf_counter()
    for offset in range(0, batch.num_rows, 2000):
        process(batch.slice(offset, 2000), config)
    return time.perf_counter() - start


def datatrove(texts: list[str]) -> float:
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    chain = [GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(), FineWebQualityFilter()]
    chain[0].filter(Document(text="warm up the tokenizer " * 20, id="w"))
    start = time.perf_counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        for step in chain:
            verdict = step.filter(doc)
            if verdict is False or (isinstance(verdict, tuple) and not verdict[0]):
                break
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
    texts = corpus(40.0)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    ours_s = ours(texts)
    peer_texts, size = [], 0
    for t in texts:
        peer_texts.append(t)
        size += len(t.encode())
        if size >= PEER_MB * 1e6:
            break
    peer_mb = size / 1e6
    peer_s = datatrove(peer_texts)
    docs_per_s, f1 = fasttext_bench(Path(tempfile.mkdtemp(prefix="bench-quality-")))
    results = {
        "corpus_mb": round(mb, 1), "datatrove_corpus_mb": round(peer_mb, 1),
        "heuristics_mb_per_s_per_core": round(mb / ours_s, 2),
        "datatrove_mb_per_s_per_core": round(peer_mb / peer_s, 3),
        "ratio_vs_datatrove": round((mb / ours_s) / (peer_mb / peer_s), 1),
        "fasttext_docs_per_s_per_core": round(docs_per_s, 1),
        "classifier_f1": f1,
    }
    out = ROOT / "bench" / "results" / "quality.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
