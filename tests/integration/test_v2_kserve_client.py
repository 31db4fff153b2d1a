"""KServe's own Python client (``kserve.InferenceRESTClient``, protocol v2) against the service.

The ``kserve`` package pulls in a large server stack (FastAPI, gRPC, Kubernetes client, ...)
whose pins clash with the project's environment, so it lives in its own venv under the user's
cache folder (``$XDG_CACHE_HOME/mnist-service/kserve-<version>``), made by pip on first use and
reused after; the client runs there as a subprocess against a real gunicorn. Outside CI a
machine that cannot make the venv skips with the reason; under CI=true that is a failure.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.conftest import unavailable
from tests.integration.conftest import RunningServer

KSERVE_VERSION = "0.21.0"
INSTALL_SECONDS = 900

CLIENT = """
import asyncio, json, sys
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(url, pixels):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    answer = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "mnist"),
    }
    tensor = InferInput(name="input", shape=[1, 784], datatype="FP32", data=pixels)
    request = InferRequest(model_name="mnist", infer_inputs=[tensor])
    response = await client.infer(url, request, model_name="mnist")
    answer["outputs"] = {output.name: output.data for output in response.outputs}
    answer["model_name"] = response.model_name
    print(json.dumps(answer))

asyncio.run(main(sys.argv[1], json.loads(sys.stdin.read())))
"""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-service"


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The python of a venv holding kserve==KSERVE_VERSION (made once, then reused)."""
    venv = _cache_root() / f"kserve-{KSERVE_VERSION}"
    python = venv / "bin" / "python"
    check = (
        f"import kserve, importlib.metadata as m\nassert m.version('kserve') == '{KSERVE_VERSION}'"
    )
    probe = [str(python), "-c", check]
    if python.exists() and subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", f"kserve=={KSERVE_VERSION}"],
    ]
    for step in steps:
        made = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_SECONDS)
        if made.returncode != 0:
            unavailable(f"cannot make the kserve venv ({' '.join(step[:4])}): {made.stderr[-800:]}")
    return python


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_SECONDS + 120)
def test_kserve_rest_client_live_ready_model_ready_and_infer(
    kserve_python: Path, committed_server: RunningServer, mnist_data_dir: Path
) -> None:
    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        pixels = np.frombuffer(handle.read(784), dtype=np.uint8) / np.float32(255)
    result = subprocess.run(
        [str(kserve_python), "-c", CLIENT, committed_server.url],
        input=json.dumps(pixels.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["live"] is True
    assert answer["ready"] is True
    assert answer["model_ready"] is True
    assert answer["model_name"] == "mnist"
    assert answer["outputs"]["label"] == [7]  # the first MNIST test digit
    probabilities = answer["outputs"]["probabilities"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-3
