"""The failing cases reported against pictures and JSON pixels, run as written against a real
gunicorn on the committed model: each script exits 0 once the fault is gone.

The scripts and their inputs are copies of the reported cases (MNIST test digits, CC BY-SA 3.0,
Y. LeCun, C. Cortes, C. J. C. Burges): a shadow across the sheet, white ink carried only by the
alpha channel, blank JSON images, JSON pixels already divided by 255, a gzip body on /predict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import RunningServer

CASES = Path(__file__).resolve().parent / "cases"


@pytest.mark.parametrize(
    "case",
    [
        "photo-shading",
        "white-ink-transparent",
        "json-blank-image",
        "json-0-1-scale",
        "gzip-on-predict",
    ],
)
def test_the_reported_case_passes(committed_server: RunningServer, case: str) -> None:
    script = CASES / case / "case.py"
    done = subprocess.run(
        [sys.executable, str(script), committed_server.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{case} still fails:\n{done.stdout}\n{done.stderr}"
