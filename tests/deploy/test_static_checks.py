"""Static checks of the deployment files: hadolint on the Dockerfile, compose's own validation."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import run_tool


def test_dockerfile_is_hadolint_clean(require_tool: Callable[[str], str]) -> None:
    hadolint = require_tool("hadolint")
    result = run_tool([hadolint, "--no-color", str(REPO_ROOT / "Dockerfile")], timeout=60)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_compose_file_is_valid(docker_compose: list[str]) -> None:
    result = run_tool([*docker_compose, "--profile", "train", "config", "--quiet"], timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_publishes_on_loopback_and_mounts_models_read_only(
    docker_compose: list[str],
) -> None:
    result = run_tool(
        [*docker_compose, "--profile", "train", "config", "--format", "json"],
        timeout=60,
        extra_env={"MNIST_PORT": "18123", "MNIST_MODELS_DIR": ""},
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]

    mnist = services["mnist"]
    assert mnist["build"]["target"] == "serve"
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in mnist["ports"]] == [
        ("127.0.0.1", "18123", 8000)
    ]
    models = [v for v in mnist["volumes"] if v["target"] == "/models"]
    assert len(models) == 1 and models[0]["read_only"] is True
    assert models[0]["source"] == str(REPO_ROOT / "models")
    assert "healthcheck" in mnist and mnist["restart"] == "unless-stopped"

    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"] and trainer["build"]["target"] == "trainer"
    trainer_models = [v for v in trainer["volumes"] if v["source"] == str(REPO_ROOT / "models")]
    assert len(trainer_models) == 1 and not trainer_models[0].get("read_only", False)
