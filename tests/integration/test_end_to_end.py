"""End to end: mnist-train publishes, gunicorn serves it, HTTP predicts; a retrain is a candidate
until `--promote` passes the gate, then every worker picks it up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import requests

from tests.conftest import REPO_ROOT

SAMPLE = 500  # test digits sent over HTTP


def train(models_dir: Path, data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run the real mnist-train command line on a small slice (a few seconds)."""
    command = [
        str(Path(sys.executable).parent / "mnist-train"),
        "--hidden-layers",
        "64",
        "--epochs",
        "3",
        "--train-limit",
        "3000",
        "--min-accuracy",
        "0.5",
        "--progress",
        "none",
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(models_dir),
        *flags,
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_train_publish_serve_predict_then_a_promoted_retrain_is_served(
    tmp_path: Path, mnist_data_dir: Path, mnist_data: Any, gunicorn_server: Any
) -> None:
    first = train(tmp_path, mnist_data_dir, "--activation", "relu", "--solver", "adam")
    assert first.returncode == 0, first.stderr
    version_dir = tmp_path / "mnist" / "1"
    card = json.loads((version_dir / "card.json").read_text())

    server = gunicorn_server({"MODEL_DIR": str(tmp_path), "MODEL_POLL_SECONDS": "0.5"})
    images = mnist_data.test.images[:SAMPLE]
    labels = mnist_data.test.labels[:SAMPLE]
    response = requests.post(server.url + "/predict", json={"images": images.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "mnist", "version": 1}
    served = np.array([p["digit"] for p in body["predictions"]])

    # the service answers exactly what the published ONNX file answers in-process
    session = ort.InferenceSession(
        (version_dir / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )
    offline = session.run(["label"], {"input": images.astype(np.float32) / np.float32(255)})[0]
    np.testing.assert_array_equal(served, offline)
    accuracy = float(np.mean(served == labels))
    assert accuracy >= 0.5
    assert abs(accuracy - card["metrics"]["test_accuracy"]) < 0.1  # a 500-digit sample of 10,000

    second = train(tmp_path, mnist_data_dir, "--activation", "tanh", "--solver", "adam")
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "mnist" / "2" / "card.json").is_file()
    assert "not served until promoted" in second.stdout
    time.sleep(2)  # four polls: a candidate changes nothing
    for _ in range(4):
        answer = requests.post(server.url + "/predict", json={"images": [images[0].tolist()]})
        assert answer.json()["model"]["version"] == 1
    # more epochs on the same data: at least as accurate, so the promote gate lets it through
    third = train(tmp_path, mnist_data_dir, "--activation", "relu", "--epochs", "8", "--promote")
    assert third.returncode == 0, third.stderr
    assert "promoted version 3 to stable" in third.stdout
    deadline = time.monotonic() + 30  # a condition wait: done as soon as both workers switched
    versions: set[int] = set()
    while time.monotonic() < deadline:
        versions = set()
        for _ in range(6):  # fresh connections reach both workers
            answer = requests.post(
                server.url + "/predict",
                json={"images": [images[0].tolist()]},
                headers={"Connection": "close"},
                timeout=10,
            )
            assert answer.status_code == 200
            versions.add(answer.json()["model"]["version"])
        if versions == {3}:
            break
        time.sleep(0.2)
    assert versions == {3}
