"""Static checks of the deployment files: hadolint on every Dockerfile, compose's own validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT
from tests.deploy.conftest import run_tool

DOCKERFILES = [
    REPO_ROOT / "Dockerfile",
    REPO_ROOT / "deploy" / "haproxy" / "Dockerfile",
    REPO_ROOT / "deploy" / "prometheus" / "Dockerfile",
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_dockerfile_is_hadolint_clean(dockerfile: Path, require_tool: Callable[[str], str]) -> None:
    hadolint = require_tool("hadolint")
    result = run_tool([hadolint, "--no-color", str(dockerfile)], timeout=60)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def _resolved(docker_compose: list[str], *args: str) -> dict[str, Any]:
    result = run_tool(
        [*docker_compose, *args, "config", "--format", "json"],
        timeout=60,
        extra_env={"MNIST_PORT": "18123", "MNIST_MODELS_DIR": ""},
    )
    assert result.returncode == 0, result.stderr
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def _assert_hardened(name: str, service: dict[str, Any]) -> None:
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
    assert service["security_opt"] == ["no-new-privileges:true"], name
    assert service["read_only"] is True, name
    limits = service["deploy"]["resources"]["limits"]
    assert int(limits["memory"]) > 0 and int(limits["pids"]) > 0, name
    assert all(p["host_ip"] == "127.0.0.1" for p in service.get("ports", [])), name


def test_default_stack_is_one_hardened_replica(docker_compose: list[str]) -> None:
    mnist = _resolved(docker_compose)["mnist"]
    _assert_hardened("mnist", mnist)
    assert "replicas" not in mnist["deploy"]
    assert [t.split(":")[0] for t in mnist["tmpfs"]] == ["/tmp"]


def test_scale_stack_resolves(docker_compose: list[str]) -> None:
    services = _resolved(docker_compose, "--file", "compose.scale.yml")
    assert set(services) == {"mnist", "edge", "prometheus"}
    for name, service in services.items():
        _assert_hardened(name, service)
    mnist = services["mnist"]
    assert mnist["deploy"]["replicas"] == 3 and "ports" not in mnist
    assert mnist["image"] == _resolved(docker_compose)["mnist"]["image"]  # one image, one build
    assert [(p["host_ip"], str(p["published"])) for p in services["edge"]["ports"]] == [
        ("127.0.0.1", "18123")
    ]
    assert services["edge"]["depends_on"]["mnist"]["condition"] == "service_healthy"


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
    # the prediction store lives on a writable named volume, not beside the read-only models
    (store,) = [v for v in mnist["volumes"] if v["target"] == "/store"]
    assert store["type"] == "volume" and not store.get("read_only", False)
    assert mnist["environment"]["STORE_PATH"].startswith("/store/")

    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"] and trainer["build"]["target"] == "trainer"
    trainer_models = [v for v in trainer["volumes"] if v["source"] == str(REPO_ROOT / "models")]
    assert len(trainer_models) == 1 and not trainer_models[0].get("read_only", False)
