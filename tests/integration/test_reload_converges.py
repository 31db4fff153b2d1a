"""Every worker converges on what the repository says, on a real gunicorn (the rel-* cases).

Each test copies the committed model into a scratch repository, serves it, damages or changes the
repository the way the case does, and checks that every worker ends up serving what the
repository says, and that the server never shuts down on the way.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from service.model.repository import ModelRepository
from tests.conftest import COMMITTED_MODELS
from tests.integration.conftest import RunningServer
from tests.service.conftest import (
    DIGITS,
    external_data_model,
    follow_latest,
    publish_copy,
    set_state,
)

DIGIT = {"images": [DIGITS[0].tolist()]}  # a real test digit: a blank image is refused


def scratch_models(tmp_path: Path) -> Path:
    target = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, target)
    return target


def answered_versions(server: RunningServer, count: int = 10) -> list[int]:
    """The versions that answer ``count`` /predict requests, each on a fresh connection."""
    seen = []
    for _ in range(count):
        response = requests.post(
            server.url + "/predict", json=DIGIT, headers={"Connection": "close"}, timeout=5
        )
        assert response.status_code == 200, response.text
        seen.append(response.json()["model"]["version"])
    return seen


def worker_pids(server: RunningServer) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


def wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (requests.RequestException, AssertionError):
            pass
        time.sleep(0.2)
    return False


def publish_without_selftest(models: Path) -> Path:
    """Version 2, a copy of 1, renamed into place complete except for selftest.json (the case)."""
    source = models / "mnist" / "1"
    stage = models / "mnist" / ".stage-2"
    stage.mkdir()
    for path in source.iterdir():  # everything but selftest.json (novelty.npz included)
        if path.is_file() and path.name not in ("selftest.json", "card.json"):
            shutil.copy(path, stage / path.name)
    card = json.loads((source / "card.json").read_text())
    card["version"] = 2
    (stage / "card.json").write_text(json.dumps(card))
    os.rename(stage, models / "mnist" / "2")
    return models / "mnist" / "2"


def test_rel_rejected_never_retried(tmp_path: Path, gunicorn_server: Any) -> None:
    """A version rejected because selftest.json was missing is served once the file is there.

    Adapted to promotion: the case's version 2 is promoted (labels.json says stable 2), as the
    only way a published version gets served; the same holds without labels (latest policy).
    """
    models = scratch_models(tmp_path)
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    second = publish_without_selftest(models)
    set_state(models, stable=2, history=(1,))
    rejected = "rejected mnist version 2"
    assert wait_until(lambda: server.log().count(rejected) >= server.workers, 30), server.log()
    time.sleep(2)  # four more polls: a rejection is not logged again
    assert set(answered_versions(server, 6)) == {1}
    assert server.log().count("rejected mnist version 2: the card names no selftest file") == 0
    assert server.log().count("rejected mnist version 2") == server.workers  # once per worker
    shutil.copy(models / "mnist" / "1" / "selftest.json", second / "selftest.json")
    card = json.loads((second / "card.json").read_text())
    assert card["selftest"]["file"] == "selftest.json"
    time.sleep(3)
    for pid in worker_pids(server):
        os.kill(pid, signal.SIGHUP)
    assert wait_until(lambda: set(answered_versions(server)) == {2}, 20)


def test_rel_rejected_never_retried_without_labels(tmp_path: Path, gunicorn_server: Any) -> None:
    """The case as written, in a repository that follows Triton's latest policy."""
    models = scratch_models(tmp_path)
    follow_latest(models)
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    second = publish_without_selftest(models)
    time.sleep(3)
    assert set(answered_versions(server, 6)) == {1}
    shutil.copy(models / "mnist" / "1" / "selftest.json", second / "selftest.json")
    assert wait_until(lambda: set(answered_versions(server)) == {2}, 20)


def test_rel_worker_boot_halts_master(tmp_path: Path, gunicorn_server: Any) -> None:
    """A worker restarted while the repository is unreadable comes up live, not ready, and
    serves once the folder is back; the master and the other worker never stop."""
    models = scratch_models(tmp_path)
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    first, second = worker_pids(server)
    models.rename(tmp_path / "models.gone")
    time.sleep(1)
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: len(set(worker_pids(server)) - {first}) == 2, 15)
    # the new worker booted and found no repository (a while on a loaded machine); a master
    # halted by that boot would be gone moments later
    assert wait_until(lambda: "cannot read the model repository" in server.log(), 30)
    time.sleep(2)
    assert server.alive()
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    (tmp_path / "models.gone").rename(models)
    # both workers serve again: the restarted one converged (its third "serving" line: the two
    # first workers' and its own), the other never stopped
    assert wait_until(lambda: server.log().count(" serving mnist version 1 ") == 3, 30)
    assert set(answered_versions(server, 12)) == {1}
    assert second in worker_pids(server)


def test_a_worker_restarted_on_a_labels_json_that_is_not_utf8_keeps_the_master_up(
    tmp_path: Path, gunicorn_server: Any
) -> None:
    """The same kind of fault: a file that cannot even be decoded (a hand edit saved as
    Latin-1) makes a restarted worker live and not ready, not a boot failure that stops the
    master; repaired, every worker serves."""
    models = scratch_models(tmp_path)
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    first, second = worker_pids(server)
    labels = models / "mnist" / "labels.json"
    good = labels.read_bytes()
    broken = tmp_path / "labels.tmp"
    broken.write_bytes(b'{"stable": 1, "note": "caf\xe9"}')
    broken.replace(labels)
    assert wait_until(lambda: "unreadable labels.json" in server.log(), 15)
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: len(set(worker_pids(server)) - {first}) == 2, 15)
    time.sleep(3)
    assert server.alive()
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    labels.write_bytes(good)
    assert wait_until(lambda: server.log().count(" serving mnist version 1 ") == 3, 30)
    assert set(answered_versions(server, 12)) == {1}
    assert second in worker_pids(server)
    assert "Traceback" not in server.log()


def test_rel_onnx_external_data(tmp_path: Path, gunicorn_server: Any) -> None:
    """A model whose weights live outside the repository is refused even when promoted."""
    models = scratch_models(tmp_path)
    cwd = tmp_path / "cwd"  # where the model's weights.bin lies, the server's working directory
    cwd.mkdir()
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    data = external_data_model(cwd)
    publish_copy(models, onnx_bytes=data)
    set_state(models, stable=2, history=(1,))
    refused = "keeps tensor data in an external file"
    # every worker has looked at version 2 and refused it: only then does {1} say "refused"
    assert wait_until(lambda: server.log().count(refused) >= server.workers, 30), server.log()
    assert set(answered_versions(server)) == {1}


def test_a_deleted_stable_and_a_restarted_worker_converge_on_one_version(
    tmp_path: Path, gunicorn_server: Any
) -> None:
    """Folder of the served version deleted, one worker restarted: all workers answer from the
    same version within 5 s (the previous stable), not from two versions indefinitely."""
    models = scratch_models(tmp_path)
    publish_copy(models)
    set_state(models, stable=2, history=(1,))
    server = gunicorn_server({"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "0.5"})
    assert set(answered_versions(server)) == {2}
    shutil.rmtree(models / "mnist" / "2")
    os.kill(worker_pids(server)[0], signal.SIGKILL)
    assert wait_until(lambda: set(answered_versions(server, 12)) == {1}, 8)
    time.sleep(1)
    assert set(answered_versions(server, 12)) == {1}
    assert server.alive()


TRITON_RULE = re.compile(r'name:\s*"(\w+)"[^}]*?dims:\s*\[([^\]]*)\]')


def _count(values: list[int]) -> int:
    """Element count as Triton's GetElementCount: -1 if any dim is variable, 0 for no dims."""
    return 0 if not values else -1 if -1 in values else math.prod(values)


def triton_io_problems(tensors: list[dict[str, Any]], max_batch: int) -> list[str]:
    """Triton's ValidateIOShape rules, as the triton-config-dims case applies them."""
    problems = []
    for tensor in tensors:
        dims = [int(d) for d in tensor.get("dims", [])]
        if not dims:
            problems.append(f"{tensor['name']}: no dims")
            continue
        reshape = tensor.get("reshape")
        if reshape is None:
            continue
        shape = [int(d) for d in reshape.get("shape", [])]
        if not shape and max_batch == 0:
            problems.append(f"{tensor['name']}: empty reshape on a non-batching model")

        if _count(dims) != _count(shape) and (_count(shape) != 0 or _count(dims) != 1):
            problems.append(f"{tensor['name']}: dims {dims} and reshape {shape} differ in size")
    return problems


def test_triton_config_dims(committed_server: RunningServer) -> None:
    """The served config and every config.pbtxt pass Triton's I/O rules; the label is [1]."""
    config = requests.get(committed_server.url + "/v2/models/mnist/config", timeout=10).json()
    assert not triton_io_problems(config["input"], config["max_batch_size"])
    assert not triton_io_problems(config["output"], config["max_batch_size"])
    label = next(o for o in config["output"] if o["name"] == "label")
    assert label["dims"] == [1] and label["reshape"] == {"shape": []}
    for path in (COMMITTED_MODELS / "mnist" / "config.pbtxt",):
        text = path.read_text()
        for name, dims in TRITON_RULE.findall(text):
            assert dims.strip(), f"{path}: {name} has dims [ ]"
        policy = re.search(r"version_policy: \{ specific: \{ versions: \[ ([\d, ]+) \] \} \}", text)
        assert policy is not None, text  # Triton's ModelVersionPolicy.Specific
        listed = [int(v) for v in policy[1].split(",")]
        assert listed and all(v > 0 for v in listed)
        assert all((path.parent / str(v)).is_dir() for v in listed)
    assert ModelRepository(COMMITTED_MODELS).read_state().stable == 1
