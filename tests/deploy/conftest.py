"""Fixtures for the deployment tests: the external tools they drive, and what to do without them.

Outside CI a missing tool skips the test with a visible reason; under CI=true it fails, because
CI (`make test`) installs every tool and a skipped deployment test there would hide a broken setup.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT

BUILD_SECONDS = 900  # a cold build downloads onnxruntime and numpy from PyPI
START_SECONDS = 180
#: how long the tests wait for the Docker engine `make test` starts beside them (a fresh machine
#: installs docker.io and builds the base image first: about two minutes)
ENGINE_START_SECONDS = 900
#: set by `make test` while it starts a Docker engine beside the tests: a folder where
#: `docker-engine up`'s exit code (rc), environment (env: NAME=value lines) and log appear
ENGINE_PENDING = "DOCKER_ENGINE_PENDING"


def running_in_ci() -> bool:
    """True when CI=true (or 1/yes), as CI runners set it."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip with ``reason`` on a developer machine; fail under CI, where the tool must exist."""
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: the deployment tests must run here)")
    pytest.skip(reason)


def run_tool(
    args: list[str], timeout: float, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in the repository root, capturing text output, bounded by ``timeout``."""
    return subprocess.run(
        args,
        cwd=REPO_ROOT,
        env={**os.environ, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def wait_for_pending_engine() -> None:
    """When `make test` is starting a Docker engine beside the tests (``DOCKER_ENGINE_PENDING``),
    wait until ``docker-engine up`` has ended, then take the environment it printed (DOCKER_HOST,
    DOCKER_CONFIG, PATH with the compose plugin and hadolint); skip/fail with its log's end if it
    failed or did not end within ENGINE_START_SECONDS."""
    pending = os.environ.get(ENGINE_PENDING)
    if not pending:
        return
    folder = Path(pending)
    deadline = time.monotonic() + ENGINE_START_SECONDS
    while not (folder / "rc").exists():
        if time.monotonic() > deadline:
            unavailable(
                f"the Docker engine `make test` started is not up after {ENGINE_START_SECONDS} s"
            )
        time.sleep(0.5)
    code = (folder / "rc").read_text().strip()
    if code != "0":
        log = (folder / "log").read_text(errors="replace") if (folder / "log").exists() else ""
        unavailable(f"docker-engine up failed (exit {code}): {log.strip()[-600:]}")
    for line in (folder / "env").read_text().splitlines():
        name, _, value = line.partition("=")
        if name:
            os.environ[name] = value
    del os.environ[ENGINE_PENDING]  # taken once; the engine stays up until make test ends


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], str]:
    """Return a function that resolves a program on PATH or skips/fails with the reason (after
    the Docker engine `make test` starts beside the tests is up, when it starts one)."""
    wait_for_pending_engine()

    def resolve(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            unavailable(
                f"{name} is not on PATH; `make test` provides it through "
                f'eval "$(../shared/tools/docker-engine up)"'
            )
            raise AssertionError("unreachable")  # pragma: no cover - skip/fail raised above
        return path

    return resolve


@pytest.fixture(scope="session")
def docker_compose(require_tool: Callable[[str], str]) -> list[str]:
    """`docker compose`; skips/fails when the client or the compose plugin is missing."""
    docker = require_tool("docker")
    probe = run_tool([docker, "compose", "version"], timeout=30)
    if probe.returncode != 0:
        unavailable(f"the docker compose plugin is missing: {probe.stderr.strip()[:200]}")
    return [docker, "compose"]


@pytest.fixture(scope="session")
def docker_engine(docker_compose: list[str]) -> list[str]:
    """`docker compose`, once a Docker engine answers; skips/fails with the reason otherwise."""
    probe = run_tool([docker_compose[0], "info", "--format", "{{.ServerVersion}}"], timeout=30)
    if probe.returncode != 0:
        unavailable(
            "no Docker engine answers (start one with "
            f'eval "$(../shared/tools/docker-engine up)"): {probe.stderr.strip()[:200]}'
        )
    return docker_compose


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mnist_test_digits(data_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` MNIST test images (uint8 [count, 784]) and labels, read from IDX."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        header = np.frombuffer(handle.read(16), dtype=">u4")
        assert header[0] == 2051, "not an IDX image file"
        pixels = np.frombuffer(handle.read(count * 784), dtype=np.uint8).reshape(count, 784)
    with gzip.open(data_dir / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        handle.read(8)
        labels = np.frombuffer(handle.read(count), dtype=np.uint8).astype(np.int64)
    return pixels, labels
