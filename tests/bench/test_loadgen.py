"""bench/loadgen.py: how rounds are ordered and how two rows are compared."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import loadgen


def result(*rates: float) -> loadgen.LoadResult:
    return loadgen.LoadResult(
        requests=int(sum(rates)),
        seconds=float(len(rates)),
        errors=0,
        p50_ms=1.0,
        p99_ms=2.0,
        images_per_request=1,
        round_rates=rates,
    )


def test_swap_neighbours_keeps_pairs_side_by_side() -> None:
    assert loadgen.swap_neighbours([1, 2, 3, 4]) == [2, 1, 4, 3]
    assert loadgen.swap_neighbours(["a", "b", "c"]) == ["b", "a", "c"]
    assert loadgen.swap_neighbours([]) == []


def test_paired_ratio_is_the_median_of_the_rounds() -> None:
    ours = result(80.0, 90.0, 10.0)  # the VM stalled during our third round
    baseline = result(100.0, 100.0, 100.0)
    median, ratios = loadgen.paired_ratio(ours, baseline)
    assert ratios == pytest.approx([0.8, 0.9, 0.1])
    assert median == pytest.approx(0.8)
    assert ours.requests_per_second / baseline.requests_per_second == pytest.approx(0.6)


def test_paired_ratio_needs_the_same_rounds() -> None:
    with pytest.raises(ValueError):
        loadgen.paired_ratio(result(1.0, 2.0), result(1.0))
