"""bench/cold_cache_bench.py, briefly, in its own process (it wraps the service's functions to
time them): every part it names is found and timed, and the parts fit inside the whole call, warm
and cold. (How much more a cold call costs is the benchmark's figure, not a test's.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def table_rows(output: str) -> dict[str, tuple[float, float]]:
    """The table's rows: label -> (warm ms, cold ms)."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].replace(".", "").isdigit():
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def test_times_each_part_of_a_call_warm_and_cold(mnist_data_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "cold_cache_bench.py"),
            "--duration",
            "1.6",
            "--rounds",
            "2",
            "--evict-mib",
            "64",
            "--data-dir",
            str(mnist_data_dir),
        ],
        cwd=tmp_path,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = table_rows(result.stdout)
    whole_warm, whole_cold = rows["service: whole call"]
    parts = [label for label in rows if label.startswith("service: ") and "whole" not in label]
    assert len(parts) == 5, rows
    for label in parts:
        warm, cold = rows[label]
        assert 0 < warm < whole_warm and 0 < cold < whole_cold, (label, rows[label])
    assert sum(rows[label][0] for label in parts) < whole_warm
    floor_warm, floor_cold = rows["Flask-parse floor: whole call"]
    assert floor_warm > 0 and floor_cold > 0
