"""mnist-store's endings: one line on stderr and the exit code documented in --help and
docs/feedback.md, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.store.cli import EXIT_STORE_OFF, EXIT_USAGE, build_parser
from tests.conftest import REPO_ROOT


def store_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    settings = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODEL_DIR": str(tmp_path / "m")}
    for name in ("DATABASE_URL", "STORE", "STORE_PATH"):
        settings.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "service.store.cli", *args],
        capture_output=True,
        text=True,
        env={**settings, **env},
        cwd=tmp_path,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("bogus://x", "DATABASE_URL='bogus://x': the store speaks postgresql and sqlite only"),
        ("mysql://u:secret@h/db", "DATABASE_URL='mysql://u:***@h/db': the store speaks"),
        ("postgresql+asyncpg://u@h/db", "no driver 'asyncpg' installed"),
        ("postgresql://u@h:port/db", "DATABASE_URL: not a database URL"),
    ],
)
def test_a_database_url_nothing_here_speaks_is_one_line_and_exit_2(
    tmp_path: Path, url: str, words: str
) -> None:
    done = store_cli(tmp_path, "purge", DATABASE_URL=url)
    assert done.returncode == EXIT_USAGE == 2
    assert done.stderr.startswith("mnist-store: configuration error: ") and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "secret" not in done.stderr


@pytest.mark.parametrize("command", [["purge"], ["delete", "abc"], ["migrate"]])
def test_a_store_switched_off_says_so(tmp_path: Path, command: list[str]) -> None:
    done = store_cli(tmp_path, *command, STORE="off")
    assert done.returncode == EXIT_STORE_OFF == 5
    assert done.stderr == f"mnist-store: the store is off (STORE=off): nothing to {command[0]}\n"
    assert done.stdout == "" and not list(tmp_path.glob("*.sqlite3"))


def test_every_exit_code_is_documented() -> None:
    help_text = " ".join(build_parser().format_help().split("exit codes:")[1].split())
    doc = (REPO_ROOT / "docs" / "feedback.md").read_text().split("`mnist-store` exit codes:")[1]
    doc = " ".join(doc.split("\n\n")[0].split())
    for code in (2, 3, 4, 5, 141):
        assert f" {code} " in help_text and f" {code} " in doc
