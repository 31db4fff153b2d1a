"""The real thing: build the serving image with compose, start it, predict over HTTP, tear down."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.deploy.conftest import (
    BUILD_SECONDS,
    START_SECONDS,
    free_port,
    mnist_test_digits,
    run_tool,
)

HTTP_SECONDS = 30


@dataclass(frozen=True)
class Stack:
    """A running compose project on a free loopback port."""

    compose: list[str]
    url: str

    def run(self, *args: str, timeout: float = 60) -> str:
        """Run `docker compose -p <project> <args>`; return stdout, fail the test on error."""
        result = run_tool([*self.compose, *args], timeout=timeout)
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
        return result.stdout


def _post_json(url: str, body: dict[str, object]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=HTTP_SECONDS) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.load(response)
        return answer


@pytest.fixture(scope="module")
def stack(docker_engine: list[str]) -> Iterator[Stack]:
    """Build and start the `mnist` service under a unique project name; always `down -v` after."""
    project = f"mnist-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    compose = [*docker_engine, "--project-name", project]
    env = {"MNIST_PORT": str(port)}
    try:
        build = run_tool([*compose, "build", "mnist"], timeout=BUILD_SECONDS, extra_env=env)
        assert build.returncode == 0, f"compose build failed:\n{build.stdout[-4000:]}{build.stderr}"
        up = run_tool(
            [*compose, "up", "--detach", "--wait", "--wait-timeout", str(START_SECONDS), "mnist"],
            timeout=START_SECONDS + 60,
            extra_env=env,
        )
        if up.returncode != 0:
            logs = run_tool([*compose, "logs", "--no-color", "--tail", "80"], timeout=60)
            pytest.fail(f"compose up failed:\n{up.stderr}\ncontainer logs:\n{logs.stdout}")
        yield Stack(compose=compose, url=f"http://127.0.0.1:{port}")
    finally:
        down = run_tool(
            [*compose, "down", "--volumes", "--rmi", "local", "--timeout", "10"],
            timeout=180,
            extra_env=env,
        )
        assert down.returncode == 0, f"compose down failed: {down.stderr}"


@pytest.mark.docker
@pytest.mark.timeout(BUILD_SECONDS + START_SECONDS + 300)
def test_container_is_healthy_and_ready(stack: Stack) -> None:
    container = stack.run("ps", "--quiet", "mnist").strip()
    assert container, "no container for service mnist"
    inspect = run_tool(
        [stack.compose[0], "inspect", "--format", "{{json .State.Health.Status}}", container],
        timeout=30,
    )
    assert json.loads(inspect.stdout) == "healthy", inspect.stdout + inspect.stderr
    with urllib.request.urlopen(f"{stack.url}/v2/health/ready", timeout=HTTP_SECONDS) as response:
        assert response.status == 200


@pytest.mark.docker
def test_predicts_test_digits_over_http(stack: Stack, mnist_data_dir: Path) -> None:
    pixels, labels = mnist_test_digits(mnist_data_dir, 50)

    single = _post_json(f"{stack.url}/predict", {"images": [pixels[0].tolist()]})
    [prediction] = single["predictions"]
    assert prediction["digit"] == labels[0]
    assert 0.5 < prediction["confidence"] <= 1.0

    batch = _post_json(f"{stack.url}/predict", {"images": pixels.tolist()})
    digits = np.array([p["digit"] for p in batch["predictions"]])
    assert digits.shape == labels.shape
    assert (digits == labels).mean() >= 0.94, f"{digits} vs {labels}"


@pytest.mark.docker
def test_bad_request_gets_json_error_and_service_keeps_serving(
    stack: Stack, mnist_data_dir: Path
) -> None:
    request = urllib.request.Request(
        f"{stack.url}/predict", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=HTTP_SECONDS)
    assert 400 <= caught.value.code < 500
    assert "error" in json.load(caught.value)

    pixels, labels = mnist_test_digits(mnist_data_dir, 1)
    answer = _post_json(f"{stack.url}/predict", {"images": [pixels[0].tolist()]})
    assert answer["predictions"][0]["digit"] == labels[0]


PROCESS_UIDS = """
import json, pathlib
uids = set()
for status in pathlib.Path("/proc").glob("[0-9]*/status"):
    try:
        lines = status.read_text().splitlines()
    except OSError:  # the process ended while we looked
        continue
    uids.update(int(line.split()[1]) for line in lines if line.startswith("Uid:"))
print(json.dumps(sorted(uids)))
"""

MODULES_PRESENT = """
import importlib.util, json
names = ("sklearn", "skl2onnx", "onnxruntime", "flask", "gunicorn")
print(json.dumps({name: importlib.util.find_spec(name) is not None for name in names}))
"""


@pytest.mark.docker
def test_runs_as_non_root_without_scikit_learn(stack: Stack) -> None:
    # every process in the container, gunicorn's master and workers included, is unprivileged
    uids = json.loads(stack.run("exec", "-T", "mnist", "python", "-c", PROCESS_UIDS))
    assert uids and 0 not in uids, f"process uids in the container: {uids}"
    modules = json.loads(stack.run("exec", "-T", "mnist", "python", "-c", MODULES_PRESENT))
    assert modules == {
        "sklearn": False,
        "skl2onnx": False,
        "onnxruntime": True,
        "flask": True,
        "gunicorn": True,
    }


@pytest.mark.docker
def test_image_declares_user_healthcheck_and_exec_form_command(stack: Stack) -> None:
    container = stack.run("ps", "--quiet", "mnist").strip()
    docker = stack.compose[0]
    image = run_tool([docker, "inspect", "--format", "{{.Image}}", container], timeout=30)
    inspect = run_tool(
        [docker, "image", "inspect", "--format", "{{json .Config}}", image.stdout.strip()],
        timeout=30,
    )
    assert inspect.returncode == 0, inspect.stderr
    config = json.loads(inspect.stdout)
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    assert config["Cmd"][0] == "gunicorn" and "--config" in config["Cmd"]
    assert "MODEL_DIR=/models" in config["Env"]


@pytest.mark.docker
def test_serves_the_committed_model_from_the_read_only_mount(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/v2/models/mnist", timeout=HTTP_SECONDS) as response:
        metadata = json.load(response)
    assert metadata["name"] == "mnist"
    write = run_tool(
        [*stack.compose, "exec", "-T", "mnist", "touch", "/models/mnist/written-by-test"],
        timeout=60,
    )
    assert write.returncode != 0, "the models mount must be read-only"
    assert "Read-only file system" in write.stderr
