"""bench/loadgen.py: how rounds are ordered and how two rows are compared."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
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


def measured_over(*runs: loadgen.RunCpu, requests: int) -> loadgen.LoadResult:
    """A result whose rounds used the CPU of ``runs``."""
    return dataclasses.replace(result(float(requests)), round_cpu=runs)


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


def test_rotate_groups_keeps_groups_and_turns_each_first() -> None:
    arrange = loadgen.rotate_groups(3)
    cases = ["a1", "b1", "c1", "a8", "b8", "c8"]
    assert arrange(cases, 0) == cases
    assert arrange(cases, 1) == ["b8", "c8", "a8", "b1", "c1", "a1"]
    assert arrange(cases, 2) == ["c1", "a1", "b1", "c8", "a8", "b8"]
    firsts = {arrange(cases, n)[0] for n in range(6)}
    assert firsts >= {"a1", "b1", "c1"}


def run_cpu(*per_process: float, busy: float = 4.0, client: float = 1.0) -> loadgen.RunCpu:
    return loadgen.RunCpu(
        wall_seconds=2.0,
        server=dict(enumerate(per_process)),
        client_seconds=client,
        machine_busy_seconds=busy,
        steal_seconds=0.0,
    )


def test_rounds_where_one_process_did_most_of_the_work_are_flagged() -> None:
    balanced, lopsided = run_cpu(0.01, 1.0, 0.9), run_cpu(0.0, 1.5, 0.4)
    assert balanced.top_share == pytest.approx(1.0 / 1.91)
    assert lopsided.top_share == pytest.approx(1.5 / 1.9) and lopsided.top_share > 0.7
    assert balanced.other_cores == pytest.approx((4.0 - 1.91 - 1.0) / 2.0)
    measured = measured_over(balanced, lopsided, requests=1000)
    assert measured.flagged_rounds() == [1]
    assert measured.server_cpu_ms_per_request == pytest.approx((1.91 + 1.9) / 1000 * 1000)


def test_cpu_of_a_real_process_tree_is_read_from_proc() -> None:
    import os

    before = loadgen.process_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))  # burn some CPU
    after = loadgen.process_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before
    assert os.getpid() in loadgen.process_tree(os.getppid())
    assert loadgen.process_cpu_seconds(2**22 + 12345) is None  # no such process


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


def test_wait_idle_waits_out_work_left_after_the_load_and_is_bounded() -> None:
    # busy for a given amount of its own CPU time (not wall time: a loaded machine slows it)
    spin = "import time\nwhile time.process_time() < {}: pass\n"
    idle = _child("import time; time.sleep(30)")
    busy_then_idle = _child(spin.format(1.0) + "time.sleep(30)")
    always_busy = _child(spin.format(60))
    try:
        time.sleep(0.3)  # the interpreters have started
        assert loadgen.wait_idle(idle.pid) < 0.2  # its work was done from the start
        started = time.monotonic()
        done_after = loadgen.wait_idle(busy_then_idle.pid)
        assert busy_then_idle.poll() is None  # it went idle, not away
        assert 0.2 <= done_after < 5.0  # the rest of its second of CPU
        assert time.monotonic() - started >= done_after + loadgen.IDLE_QUIET_SECONDS - 0.06
        started = time.monotonic()
        loadgen.wait_idle(always_busy.pid, timeout=0.6)
        assert time.monotonic() - started < 3.0  # the timeout ends the wait
    finally:
        for child in (idle, busy_then_idle, always_busy):
            child.kill()
            child.wait()


def test_the_kept_up_rate_counts_the_work_left_after_the_load() -> None:
    measured = dataclasses.replace(result(100.0), after_seconds=0.25)
    assert measured.requests_per_second == pytest.approx(100)  # what the clients saw
    assert measured.kept_up_requests_per_second == pytest.approx(100 / 1.25)


def test_cpu_after_the_last_answer_is_counted_apart() -> None:
    import os

    meter = loadgen.CpuMeter(os.getpid())
    with meter.measure() as during_and_after:
        sum(i * i for i in range(1_000_000))  # "the load"
        meter.load_ended()
        sum(i * i for i in range(3_000_000))  # "work it left behind", three times as much
    (run,) = during_and_after
    assert 0.0 < run.server_after_seconds < run.server_seconds
    with meter.measure() as unmarked:
        sum(i * i for i in range(1_000_000))
    assert unmarked[0].server_after_seconds == 0.0  # nothing marked: nothing after
    measured = measured_over(run, unmarked[0], requests=10)
    total = run.server_seconds + unmarked[0].server_seconds
    assert measured.after_share == pytest.approx(run.server_after_seconds / total)
