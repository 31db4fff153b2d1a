"""bench/store_purge_bench.py on a small table: the purge as it was and as it is do the same work
(the benchmark compares their cost, so it must compare like with like), on SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import store_purge_bench

from service.store.config import sqlalchemy_url
from service.store.database import PredictionStore


def test_before_and_after_erase_and_delete_the_same_rows(database_url: str) -> None:
    args = store_purge_bench.parse_args(["--rows", "3000", "--added", "500", "--rounds", "1"])
    store = PredictionStore.open(sqlalchemy_url(database_url))
    try:
        results = store_purge_bench.measure(store, args, lambda: 0.0)
    finally:
        store.close()
    for case in ("nothing to do", "a minute's work"):
        [before] = results[("before", case)]
        [after] = results[("after", case)]
        assert (before["erased"], before["deleted"]) == (after["erased"], after["deleted"])
    [idle] = results[("after", "nothing to do")]
    assert (idle["erased"], idle["deleted"]) == (0, 0)
    # 500 rows over the limit each time, one in 500 of them kept for its feedback
    [work] = results[("after", "a minute's work")]
    assert work["deleted"] == 499
