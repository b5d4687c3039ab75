from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.config import load_config
from pipeline.run import RunError, run_pipeline
from stages import ingest
from tests.conftest import make_config, read_folder, write_jsonl


def _run(folder: Path, sources: str, console, stages: str = "[stages.ingest]\nmax_chars = 100\n"):
    cfg = load_config(make_config(folder, sources, stages))
    result = run_pipeline(cfg, console=console)
    run = result.run_dir
    return result, read_folder(run / "stages" / "01-ingest"), read_folder(run / "rejected" / "01-ingest")


def _reasons(rejected: pa.Table) -> dict[str, str]:
    return dict(zip(rejected.column("path").to_pylist(), rejected.column("drop_reason").to_pylist()))


def test_jsonl_bad_lines_become_rejections_with_file_and_line(tmp_path, ray_local, quiet_console):
    path = tmp_path / "data" / "a.jsonl"
    path.parent.mkdir()
    lines = [
        json.dumps({"text": "good one", "id": "x1", "lang": "en"}).encode(),
        b'{"text": "broken',
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": "   \n "}).encode(),
        json.dumps({"text": "y" * 101}).encode(),
        b'["not", "an", "object"]',
        b'{"text": "caf\xe9 latin-1"}',
        b"",
        json.dumps({"text": "second\r\ngood\x00 one"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines))
    src = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\nid_field = "id"\n'
    result, kept, rejected = _run(tmp_path, src, quiet_console)
    rec = result.records[0]
    assert rec["rows_in"] == 9 == rec["rows_kept"] + rec["rows_rejected"]
    assert kept.column("text").to_pylist() == ["good one", "second\ngood one"]
    meta = json.loads(kept.column("meta")[0].as_py())
    assert meta == {"line": 1, "source_id": "x1", "lang": "en"}
    by_line = {json.loads(m)["line"]: r for m, r in zip(rejected.column("meta").to_pylist(),
                                                         rejected.column("drop_reason").to_pylist())}
    assert by_line == {2: "invalid_json", 3: "missing_field:text", 4: "wrong_type:text",
                       5: "empty_text", 6: "too_long", 7: "not_an_object", 8: "not_utf8"}
    assert set(rejected.column("stage").to_pylist()) == {"ingest"}
    assert set(rejected.column("path").to_pylist()) == {"a.jsonl"}
    assert rec["rejected_by_reason"]["invalid_json"] == 1


def test_compressed_jsonl_and_parquet_sources(tmp_path, ray_local, quiet_console):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "from gzip"}\n'))
    (data / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "from zstd"}\n'))
    (data / "c.jsonl.gz").write_bytes(b"this is not gzip at all")
    pq.write_table(pa.table({"content": ["from parquet", None], "score": [0.5, 0.7]}),
                   tmp_path / "p.parquet")
    pq.write_table(pa.table({"other": ["no content column"]}), tmp_path / "q.parquet")
    src = """
[[sources]]
name = "j"
kind = "jsonl"
path = "data"

[[sources]]
name = "p"
kind = "parquet"
path = "."
include = ["*.parquet"]
text_field = "content"
"""
    result, kept, rejected = _run(tmp_path, src, quiet_console)
    assert sorted(kept.column("text").to_pylist()) == ["from gzip", "from parquet", "from zstd"]
    parquet_row = [json.loads(m) for m, t in zip(kept.column("meta").to_pylist(),
                                                 kept.column("text").to_pylist()) if t == "from parquet"]
    assert parquet_row == [{"score": 0.5, "row": 0}]
    assert sorted(rejected.column("drop_reason").to_pylist()) == \
        ["missing_field:content", "missing_field:content", "unreadable_file"]
    assert result.records[0]["rows_in"] == 6


def test_folder_globs_encodings_and_huge_files(tmp_path, ray_local, quiet_console):
    root = tmp_path / "code"
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("def f():\r\n    return 1\r\n")
    (root / "pkg" / "sub" / "b.py").write_text("x = 'e\u0301'\n")  # decomposed é
    (root / "pkg" / "latin1.py").write_bytes("# caf\xe9\n".encode("latin-1"))
    (root / "pkg" / "big.py").write_text("x" * 350)
    (root / "pkg" / "huge.py").write_text("x" * 5000)  # over 4 bytes/char * max_chars: not read whole
    (root / "pkg" / "empty.py").write_text("\n\n")
    (root / "pkg" / "notes.txt").write_text("not python")
    (root / "skip" / "c.py").parent.mkdir()
    (root / "skip" / "c.py").write_text("skipped = True\n")
    src = '[[sources]]\nname = "c"\nkind = "files"\npath = "code"\ninclude = ["**/*.py"]\nexclude = ["skip/**"]\n'
    result, kept, rejected = _run(tmp_path, src, quiet_console)
    texts = dict(zip(kept.column("path").to_pylist(), kept.column("text").to_pylist()))
    assert texts == {"pkg/a.py": "def f():\n    return 1\n", "pkg/sub/b.py": "x = '\u00e9'\n"}
    assert _reasons(rejected) == {"pkg/latin1.py": "not_utf8", "pkg/big.py": "too_long",
                                  "pkg/huge.py": "too_long", "pkg/empty.py": "empty_text"}
    details = dict(zip(rejected.column("path").to_pylist(), rejected.column("drop_detail").to_pylist()))
    assert details["pkg/big.py"] == "n_chars=350"
    assert details["pkg/huge.py"] == "bytes=5000"
    assert "invalid continuation byte" in details["pkg/latin1.py"]


def test_ids_are_stable_and_hashes_follow_content(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "same"}, {"text": "same"}, {"text": "other"}])
    src = '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n'
    _, first, _ = _run(tmp_path, src, quiet_console)
    cfg = load_config(make_config(tmp_path, src, "[stages.ingest]\nmax_chars = 100\n"),
                      ["run.name=again"])
    run_pipeline(cfg, console=quiet_console)
    second = read_folder(cfg.run_dir / "stages" / "01-ingest")
    assert first.column("id").to_pylist() == second.column("id").to_pylist()
    assert len(set(first.column("id").to_pylist())) == 3
    hashes = first.column("content_hash").to_pylist()
    assert hashes[0] == hashes[1] != hashes[2]


def test_uri_sources_and_sampling(tmp_path):
    for i in range(200):
        (tmp_path / f"f{i:03d}.txt").write_text(f"document {i}")
    src = load_config(make_config(tmp_path, f'[[sources]]\nname = "u"\nkind = "files"\npath = "file://{tmp_path}"\ninclude = ["*.txt"]\nsample = 0.25\n', "[stages.ingest]\n"))
    units = ingest.plan(src.sources, src.stage("ingest").config).units
    files = [f for u in units for f in u["files"]]
    assert 25 < len(files) < 75  # a stable quarter
    assert all(f[0].startswith("file://") for f in files)
    again = ingest.plan(src.sources, src.stage("ingest").config).units
    assert again == units
    tables = list(ingest.read(units[0], src.stage("ingest").config))
    assert sum(t.num_rows for t in tables) == len(units[0]["files"])


def test_source_that_disappears_is_a_clear_error(tmp_path, ray_local, quiet_console):
    write_jsonl(tmp_path / "data" / "a.jsonl", [{"text": "x"}])
    cfg = load_config(make_config(tmp_path, '[[sources]]\nname = "d"\nkind = "jsonl"\npath = "data"\n',
                                  "[stages.ingest]\n"))
    (tmp_path / "data" / "a.jsonl").unlink()
    (tmp_path / "data").rmdir()
    with pytest.raises(RunError, match="source path does not exist"):
        run_pipeline(cfg, console=quiet_console)


def test_a_symlink_loop_is_walked_once_and_links_out_are_counted_not_followed(
        tmp_path, ray_local, quiet_console):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    for i in range(5):
        (docs / ("sub" if i % 2 else "") / f"d{i}.txt").write_text(f"document number {i}")
    (docs / "loop").symlink_to(docs)  # a folder that contains itself
    (docs / "sub" / "up").symlink_to("..")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not part of the source")
    (docs / "out").symlink_to(outside)
    (docs / "out.txt").symlink_to(outside / "secret.txt")
    (docs / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    source = f'[[sources]]\nname = "d"\nkind = "files"\npath = "{docs}"\n'
    result = run_pipeline(load_config(make_config(tmp_path, source, "[stages.ingest]\n")),
                          console=quiet_console)
    record = result.records[0]
    assert record["rows_in"] == record["rows_kept"] == 5  # each document once, nothing else
    assert record["info"]["symlinks"]["d"] == {"inside_source": 2, "outside_source": 3,
                                               "followed": 0}
    kept = read_folder(result.run_dir / "stages" / "01-ingest")
    assert sorted(kept.column("path").to_pylist()) == [
        "d0.txt", "d2.txt", "d4.txt", "sub/d1.txt", "sub/d3.txt"]

    follow = source + "follow_symlinks = true\n"
    again = run_pipeline(load_config(make_config(tmp_path, follow, "[stages.ingest]\n")),
                         console=quiet_console)
    paths = read_folder(again.run_dir / "stages" / "01-ingest").column("path").to_pylist()
    assert sorted(paths) == ["d0.txt", "d2.txt", "d4.txt", "out.txt", "out/secret.txt",
                             "sub/d1.txt", "sub/d3.txt"]
    assert again.records[0]["info"]["symlinks"]["d"]["broken"] == 1
