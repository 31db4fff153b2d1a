"""The README's curl lines run as written against a real server, and answer what the README shows.

Every ``curl`` line of the README's shell blocks is run with bash in the folder the block ``cd``s
into, with ``localhost:8000`` pointed at a real gunicorn on the committed model. A comment line
right under a command that starts with ``# {`` is the answer the README shows: it must match the
real answer, ``...`` standing for any text.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.conftest import RunningServer

README = REPO_ROOT / "README.md"


@dataclass(frozen=True)
class Command:
    line: str  # the command, continuation lines joined
    cwd: Path
    shown: str | None  # the answer the README shows under it, if any


def readme_curl_commands() -> list[Command]:
    """The curl commands of the README's ```sh blocks, with their folder and shown answer."""
    commands: list[Command] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S):
        cwd = REPO_ROOT
        lines = block.splitlines()
        index = 0
        while index < len(lines):
            line = lines[index].strip()
            index += 1
            if line.startswith("cd "):
                cwd = REPO_ROOT / line.split()[1]
            if not line.startswith("curl "):
                continue
            while line.endswith("\\"):
                line = line[:-1] + " " + lines[index].strip()
                index += 1
            line = line.split("  # ")[0].strip()  # a trailing comment
            shown = None
            if index < len(lines) and lines[index].startswith("# {"):
                shown = lines[index][2:]
                index += 1
                while index < len(lines) and lines[index].startswith("#  "):
                    shown += lines[index][3:]
                    index += 1
            commands.append(Command(line, cwd, shown))
    return commands


COMMANDS = readme_curl_commands()


def test_the_readme_has_the_curl_lines_this_test_runs() -> None:
    assert len(COMMANDS) >= 10
    assert sum(command.shown is not None for command in COMMANDS) >= 3


@pytest.mark.parametrize("command", COMMANDS, ids=[c.line[:60] for c in COMMANDS])
def test_a_readme_curl_line_runs_and_answers_as_shown(
    command: Command, committed_server: RunningServer
) -> None:
    host = committed_server.url.removeprefix("http://")
    line = command.line.replace("localhost:8000", host)
    result = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            line + " -w '\\n%{http_code}'" if "|" not in line else line,
        ],
        cwd=command.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout.strip()
    assert output
    if "|" not in line:
        body, _, status = output.rpartition("\n")
        body = body.strip()
        if "$ADMIN_TOKEN" in line:
            # the README says these answer 403 until the service runs with ADMIN_TOKEN set
            assert status == "403" and "ADMIN_TOKEN" in body, (status, body[:300])
            return
        expected = "4" if '"error"' in (command.shown or "") else "2"
        assert status.startswith(expected), (status, body[:300])
    else:
        body = output
    if command.shown is not None:
        pattern = ".*?".join(re.escape(part) for part in command.shown.split("..."))
        assert re.fullmatch(pattern, body, flags=re.S), (
            f"README shows {command.shown}\ngot {body[:400]}"
        )
