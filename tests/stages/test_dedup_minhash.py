"""MinHash dedup: datasketch as the oracle, and precision/recall on a planted set of real code."""

from __future__ import annotations

import itertools
import random
import sysconfig
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from datasketch import MinHash

from pipeline.config import load_config
from pipeline.run import run_pipeline
from stages import _minhash as mh
from stages.dedup_minhash import Config
from tests.conftest import make_config, read_folder, write_jsonl

CRAFTED = [
    "", "   ", "one two", "Ünïcödé ÄÖÜ straße ΣΊΣΥΦΟΣ ﬁ 12 ٣٤ — “quotes” … done",
    "CamelCase_words, snake_case.attr(42) != 3.14; x += y ** 2  # comment",
    "tab\tseparated\u00a0nbsp\u2003em-space line\nnext line\r\nend", "a a a a a a a a a a a",
]


def real_documents(n: int, min_words: int = 0) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if len(text.split()) >= min_words:
            docs.append(text)
        if len(docs) == n:
            break
    return docs


@pytest.mark.parametrize("scheme", ["affine64", "legacy"])
def test_signatures_are_bit_identical_to_datasketch(scheme):
    docs = real_documents(300) + CRAFTED
    a, b = mh.permutations(128, 7, scheme)
    values, offsets = mh.shingle_sets_of(pa.array(docs), 5, "word")
    sig = mh.signatures(values, offsets, a, b, scheme == "legacy")
    normalized = mh.normalize(pa.array(docs)).to_pylist()
    for d, text in enumerate(normalized):
        items = mh.shingle_items(text, 5, "word")
        oracle = MinHash(num_perm=128, seed=7, hashfunc=mh.item_hash, scheme=scheme)
        oracle.update_batch(items)
        assert np.array_equal(oracle.hashvalues.astype(np.uint64), sig[d]), f"document {d}"
        assert list(values[offsets[d]:offsets[d + 1]]) == sorted({mh.item_hash(i) for i in items})
    # the unsorted fast path gives the same signatures
    fast = mh.signatures(*mh.shingle_sets_of(pa.array(docs), 5, "word", unique=False), a, b,
                         scheme == "legacy")
    assert np.array_equal(fast, sig)


def test_character_shingles_match_the_reference():
    docs = real_documents(30) + CRAFTED
    values, offsets = mh.shingle_sets_of(pa.array(docs), 7, "char")
    for d, text in enumerate(mh.normalize(pa.array(docs)).to_pylist()):
        expect = sorted({mh.item_hash(i) for i in mh.shingle_items(text, 7, "char")})
        assert list(values[offsets[d]:offsets[d + 1]]) == expect


def test_band_parameters_follow_the_threshold_and_validate():
    assert Config().band_params() == (17, 7)  # recall-weighted, candidates are verified
    assert Config(verify="none").band_params() == (9, 13)  # datasketch's default weights
    assert Config(bands=16, rows=8).band_params() == (16, 8)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        Config(bands=20, rows=10)
    with pytest.raises(ValueError, match="both bands and rows"):
        Config(bands=4)


def mutate(text: str, rate: float, rng: random.Random) -> str:
    """A copy with ``rate`` of its (normalized) words replaced by random words."""
    words = mh.normalize(pa.array([text]))[0].as_py().split()
    for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
        words[i] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(7))
    return " ".join(words)


def test_planted_near_duplicates_precision_and_recall(tmp_path, ray_local, quiet_console):
    rng = random.Random(0)
    originals = real_documents(120, min_words=300)
    rates = [0.01, 0.02, 0.03, 0.05, 0.10]
    docs = list(originals) + [mutate(t, rates[i % 5], rng) for i, t in enumerate(originals)]
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": t} for t in docs])
    path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                       "[stages.ingest]\n[stages.dedup_minhash]\n")
    result = run_pipeline(load_config(path), console=quiet_console)
    kept = read_folder(result.run_dir / "stages" / "02-dedup_minhash")
    dropped = read_folder(result.run_dir / "rejected" / "02-dedup_minhash")
    ingest = read_folder(result.run_dir / "stages" / "01-ingest")
    assert kept.num_rows + dropped.num_rows == len(docs)
    # truth: exact Jaccard of the shingle sets of every pair
    values, offsets = mh.shingle_sets_of(ingest.column("text"), 5, "word")
    pairs = np.array(list(itertools.combinations(range(ingest.num_rows), 2)), dtype=np.int64)
    jac = mh.pair_jaccard(values, offsets, pairs[:, 0], pairs[:, 1])
    ids = ingest.column("id").to_pylist()
    clusters = dict(zip(*[pl.concat([pl.from_arrow(kept.select(["id", "cluster_id"])),
                                     pl.from_arrow(dropped.select(["id", "cluster_id"]))])[c].to_list()
                          for c in ("id", "cluster_id")]))
    same = np.array([clusters[ids[i]] == clusters[ids[j]] for i, j in pairs])
    true = jac >= 0.8
    assert true.sum() >= 40  # the 1% and 2% copies at least
    precision = (same & true).sum() / max(1, same.sum())
    recall = (same & true).sum() / true.sum()
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    for row in dropped.to_pylist():  # every drop names a document within the threshold
        assert row["drop_reason"] == "near_duplicate" and row["jaccard"] >= 0.8
        assert row["duplicate_of"] in set(kept.column("id").to_pylist())
    assert set(kept.column("cluster_size").to_pylist()) >= {1, 2}
    assert result.records[1]["info"]["clusters"] == "local"
    # rounds over Ray decide exactly as the driver; the other verifications keep their promise
    local = stage_rows(result.run_dir)
    for key, value in (("clusters", '"distributed"'), ("verify", '"estimate"'), ("verify", '"none"')):
        rerun = run_pipeline(load_config(path, [f"stages.dedup_minhash.{key}={value}"]), console=quiet_console)
        rows = stage_rows(rerun.run_dir)
        assert rows.height == len(docs) and rerun.records[1]["info"][key] == value.strip('"')
        if key == "clusters":
            assert rows.equals(local) and rerun.records[1]["info"]["cluster_rounds"] >= 1
        else:  # the 1% and 2% copies are found by every verification
            found = rows.filter(pl.col("duplicate_of").is_not_null())
            assert found.height >= 40 and (found["jaccard"] >= 0.8).all()


def stage_rows(run_dir: Path) -> pl.DataFrame:
    """Every row of the MinHash stage, kept and rejected, without the text, by id."""
    columns = ["id", "cluster_id", "cluster_size", "duplicate_of", "jaccard", "drop_reason"]
    parts = [pl.from_arrow(read_folder(run_dir / folder / "02-dedup_minhash")) for folder in ("stages", "rejected")]
    return pl.concat(parts, how="diagonal_relaxed").select(columns).sort("id")


def test_reference_dataset_removes_copies_and_is_not_touched(tmp_path, ray_local, quiet_console):
    docs = real_documents(20, min_words=200)
    write_jsonl(tmp_path / "old" / "a.jsonl", [{"text": t} for t in docs[:10]])
    write_jsonl(tmp_path / "new" / "a.jsonl", [{"text": t + " extra"} for t in docs[5:15]])
    src = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "{}"\n'
    old = run_pipeline(load_config(make_config(tmp_path, src.format("old"), "[stages.ingest]\n",
                                               '[datasets.old]\nfrom = "ingest"\n', name="old")),
                       console=quiet_console)
    ref = old.datasets["old"] / "data"
    stages = f'[stages.ingest]\n[stages.dedup_minhash]\nreference = ["{ref}"]\n'
    new = run_pipeline(load_config(make_config(tmp_path, src.format("new"), stages, name="new")),
                       console=quiet_console)
    rec = new.records[1]
    assert rec["rejected_by_reason"] == {"reference_duplicate": 5}
    assert rec["rows_kept"] == 5 and rec["info"]["reference_duplicates"] == 5
    assert read_folder(old.run_dir / "stages" / "01-ingest").num_rows == 10


def clusters_both_ways(tmp_path, docs: np.ndarray, rank: np.ndarray, edges: pl.DataFrame,
                       partitions: int = 4) -> tuple:
    """Decisions of the driver greedy and of the rounds over Ray for the same edges."""
    from pipeline.runner import RayGlobalContext
    from stages import _dedup_graph as gr
    from stages._dedup_shuffle import write_partitioned

    root = str(tmp_path / "edges")
    write_partitioned(edges, pl.col("b"), partitions, root, "e")
    graph = gr.Graph.build(docs, rank)
    ctx = RayGlobalContext([], tmp_path, 0, 50)
    local = gr.local(graph, root, partitions)
    rounds = gr.distributed(ctx, graph, root, str(tmp_path / "rounds"), partitions, local_edges=-1)
    return local, rounds


def test_distributed_clusters_equal_the_greedy_on_chains_and_random_graphs(tmp_path, ray_local):
    # a chain 0-1-2-...: every document waits for the one before it (kept, duplicate, kept, ...)
    n = 30
    chain = pl.DataFrame({"a": np.arange(n - 1), "b": np.arange(1, n), "jaccard": np.full(n - 1, 0.9)})
    (keeper, best), (keeper2, best2, rounds) = clusters_both_ways(tmp_path / "chain", np.arange(n),
                                                                  np.arange(n), chain)
    assert keeper.tolist() == [-1 if i % 2 == 0 else i - 1 for i in range(n)]
    assert np.array_equal(keeper, keeper2) and np.array_equal(best, best2) and rounds == n - 1
    # random graphs with many ties, random keep order and sparse document numbers
    rng = np.random.default_rng(0)
    for trial in range(3):
        m = 400
        docs = np.sort(rng.choice(10**6, m, replace=False))
        a, b = rng.integers(0, m, 3000), rng.integers(0, m, 3000)
        edges = pl.DataFrame({"a": docs[np.minimum(a, b)], "b": docs[np.maximum(a, b)],
                              "jaccard": rng.choice([0.8, 0.85, 0.9, 1.0], 3000)}) \
            .filter(pl.col("a") != pl.col("b")).unique(["a", "b"])
        (keeper, best), (keeper2, best2, rounds) = clusters_both_ways(
            tmp_path / f"r{trial}", docs, rng.permutation(m), edges, partitions=3)
        assert np.array_equal(keeper, keeper2) and np.array_equal(best, best2)
        assert (keeper >= 0).sum() > 50 and 1 <= rounds < 40
