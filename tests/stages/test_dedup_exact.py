from __future__ import annotations

import polars as pl
import pytest

from stages.dedup_exact import Config, decide

FRAME = pl.DataFrame({
    "id": ["c", "a", "b", "d", "e", "f"],
    "content_hash": ["h1", "h1", "h1", "h2", None, None],
    "n_chars": [5, 7, 7, 3, 1, 1],
    "score": [0.1, 0.2, 0.9, 0.5, None, None],
})


def verdicts(config: Config) -> dict:
    out = decide(FRAME, config)
    return {r["id"]: (r["drop_reason"], r["duplicate_of"], r["copies"]) for r in out.iter_rows(named=True)}


@pytest.mark.parametrize("keep, column, keeper", [
    ("first", None, "c"), ("lowest_id", None, "a"), ("longest", None, "a"), ("highest", "score", "b"),
])
def test_each_policy_keeps_one_per_group(keep, column, keeper):
    got = verdicts(Config(keep=keep, column=column))
    group = {"a", "b", "c"}
    assert got[keeper] == (None, None, 3)
    for other in group - {keeper}:
        assert got[other] == ("exact_duplicate", keeper, 3)
    assert got["d"] == (None, None, 1)
    # rows without a hash are never grouped together
    assert got["e"][0] is None and got["f"][0] is None


def test_highest_needs_a_column():
    with pytest.raises(ValueError, match="needs column"):
        Config(keep="highest")
