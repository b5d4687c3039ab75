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


def run_stage(tmp_path, texts: list[str], **config) -> tuple[pl.DataFrame, dict]:
    """The stage on one Parquet file of ``texts`` (ids d0, d1, ... in order), on the local Ray:
    its decisions per id, and its info."""
    from pipeline.runner import RayGlobalContext
    from stages import dedup_minhash

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "input.parquet"
    ids = [f"d{i}" for i in range(len(texts))]
    pa.parquet.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=20_000)
    ctx = RayGlobalContext([path], tmp_path / "scratch", 0, 50)
    decisions = dedup_minhash.run(ctx, Config(**config))
    return pl.from_arrow(decisions.table), decisions.info


def random_words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
            for _ in range(n)]


def copies_with_tails(rng: random.Random, base: str, n: int) -> list[str]:
    """``n`` copies of ``base``, each with its own 3-word tail."""
    return [f"{base} {' '.join(random_words(rng, 3))}" for _ in range(n)]


def greedy_over_buckets(texts: list[str], config: Config) -> tuple[set[int], int]:
    """The oracle: documents in input order, each kept unless it is within the threshold of a
    kept earlier document that shares an LSH bucket with it (every pair of every bucket
    compared, plain Python). Returns the kept documents and the most kept ones in one bucket."""
    bands, rows = config.band_params()
    a, b = mh.permutations(config.num_perm, config.seed, config.scheme)
    values, offsets = mh.shingle_sets_of(pa.array(texts), config.ngram, config.unit)
    keys = mh.band_keys(mh.signatures(values, offsets, a, b, False), bands, rows)
    buckets: dict[tuple[int, int], list[int]] = {}
    for doc in range(len(texts)):
        for band in range(bands):
            buckets.setdefault((band, int(keys[doc, band])), []).append(doc)
    kept: list[int] = []
    kept_in: dict[tuple[int, int], list[int]] = {}
    for doc in range(len(texts)):
        rivals = {u for band in range(bands) for u in kept_in.get((band, int(keys[doc, band])), [])}
        rivals = np.array(sorted(rivals), dtype=np.int64)
        scores = mh.pair_jaccard(values, offsets, rivals, np.full(len(rivals), doc))
        if not (scores >= config.threshold).any():
            kept.append(doc)
            for band in range(bands):
                kept_in.setdefault((band, int(keys[doc, band])), []).append(doc)
    return set(kept), max(len(members) for members in kept_in.values())


def kept_docs(decisions: pl.DataFrame) -> set[int]:
    return {int(i[1:]) for i in decisions.filter(pl.col("drop_reason").is_null())["id"]}


def check_drops(decisions: pl.DataFrame, texts: list[str], threshold: float) -> None:
    """Every dropped document names a kept one, within the threshold by exact Jaccard."""
    dropped = decisions.filter(pl.col("drop_reason").is_not_null())
    kept = kept_docs(decisions)
    values, offsets = mh.shingle_sets_of(pa.array(texts), 5, "word")
    left = np.array([int(i[1:]) for i in dropped["id"]], dtype=np.int64)
    right = np.array([int(i[1:]) for i in dropped["duplicate_of"]], dtype=np.int64)
    assert set(right.tolist()) <= kept
    scores = mh.pair_jaccard(values, offsets, left, right)
    assert (scores >= threshold).all() and np.allclose(scores, dropped["jaccard"].to_numpy())


def test_a_large_cluster_keeps_one_copy(tmp_path, ray_local, quiet_console):
    rng = random.Random(1)
    vocabulary = random_words(rng, 5000)
    base = " ".join(rng.choices(vocabulary, k=400))
    copies = copies_with_tails(rng, base, 1000)
    others = [" ".join(rng.choices(vocabulary, k=400)) for _ in range(500)]
    docs = copies + others
    rng.shuffle(docs)
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": t} for t in docs])
    path = make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                       "[stages.ingest]\n[stages.dedup_minhash]\nthreshold = 0.8\n", batch_size=500)
    result = run_pipeline(load_config(path), console=quiet_console)
    kept = read_folder(result.run_dir / "stages" / "02-dedup_minhash").to_pylist()
    dropped = read_folder(result.run_dir / "rejected" / "02-dedup_minhash").to_pylist()
    assert len(kept) + len(dropped) == len(docs)
    kept_copies = [r for r in kept if r["text"].startswith(base)]
    first_copy = next(t for t in docs if t.startswith(base))
    assert [r["text"] for r in kept_copies] == [first_copy]  # the first in keep order
    assert sorted(r["text"] for r in kept if r not in kept_copies) == sorted(others)
    assert kept_copies[0]["cluster_size"] == 1000
    assert {r["duplicate_of"] for r in dropped} == {kept_copies[0]["id"]}
    assert all(r["jaccard"] >= 0.8 for r in dropped)
    # each copy met the first copy: about one candidate pair per copy, not fifty
    assert result.records[1]["info"]["candidate_pairs"] < 5 * len(copies)


def test_100000_copies_keep_one(tmp_path, ray_local):
    rng = random.Random(2)
    base = " ".join(random_words(rng, 60))
    copies = copies_with_tails(rng, base, 100_000)
    others = [" ".join(random_words(rng, 60)) for _ in range(200)]
    texts = others[:100] + copies + others[100:]
    decisions, info = run_stage(tmp_path, texts)
    assert kept_docs(decisions) == set(range(100)) | {100} | set(range(100_100, 100_200))
    assert decisions.filter(pl.col("id") == "d100")["cluster_size"].item() == 100_000
    bands, _ = Config().band_params()
    assert info["candidate_pairs"] <= bands * len(copies)  # linear in the cluster


def chain_texts(rng: random.Random) -> tuple[list[str], list[int]]:
    """A ~ B ~ C with A !~ C (Jaccard about 0.82, 0.82 and 0.66), five exact copies of each
    in that order; returns the texts and the positions of A, B and C."""
    a = random_words(rng, 300)
    b = list(a)
    for i in range(10, 300, 50):
        b[i] = "bword"
    c = list(b)
    for i in range(35, 300, 50):
        c[i] = "cword"
    texts = [" ".join(words) for words in (a, b, c) for _ in range(5)]
    return texts, [0, 5, 10]


@pytest.mark.parametrize("max_bucket", [2, 50])
def test_a_chain_keeps_what_the_greedy_keeps(tmp_path, ray_local, max_bucket):
    texts, (a, b, c) = chain_texts(random.Random(3))
    values, offsets = mh.shingle_sets_of(pa.array(texts), 5, "word")
    ab, bc, ac = mh.pair_jaccard(values, offsets, np.array([a, b, a]), np.array([b, c, c]))
    assert ab >= 0.8 and bc >= 0.8 and ac < 0.8
    decisions, info = run_stage(tmp_path, texts, max_bucket=max_bucket)
    assert kept_docs(decisions) == {a, c} == greedy_over_buckets(texts, Config())[0]
    duplicate_of = dict(zip(decisions["id"], decisions["duplicate_of"]))
    assert [duplicate_of[f"d{i}"] for i in range(b, b + 5)] == [f"d{a}"] * 5
    check_drops(decisions, texts, 0.8)
    assert (info["large_bucket_rows"] > 0) == (max_bucket == 2)


def test_leader_pairing_keeps_what_full_pairing_keeps(tmp_path, ray_local):
    """Families of variants (1-20% of words replaced, so chains and near misses) with copies,
    in buckets over ``max_bucket``: the kept set equals the greedy over every pair."""
    rng = random.Random(4)
    texts = []
    for _ in range(12):
        base = " ".join(random_words(rng, 200))
        for _ in range(rng.randint(5, 40)):
            text = mutate(base, rng.choice([0.01, 0.03, 0.05, 0.08, 0.12, 0.2]), rng)
            texts.extend([text] * rng.randint(1, 3))
    rng.shuffle(texts)
    full, most = greedy_over_buckets(texts, Config())
    assert most <= 6 < len(texts) - len(full)  # the windows reach every kept member; many drops
    decisions, info = run_stage(tmp_path, texts, max_bucket=6)
    assert kept_docs(decisions) == full
    assert info["pairing_rounds"] >= 2 and info["large_bucket_rows"] > 0
    check_drops(decisions, texts, 0.8)
