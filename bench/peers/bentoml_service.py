"""The MNIST ONNX model as a BentoML service (bench/peers_bench.py serves it).

POST /predict with mnist-service's own body, {"images": [[784 numbers 0..255], ...]}, answers
the digits and probabilities. The ONNX file comes from MNIST_ONNX; 2 worker processes, one
onnxruntime thread each, as in mnist-service.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "2")))
class Mnist:
    """onnxruntime on the ONNX file named by MNIST_ONNX."""

    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["MNIST_ONNX"], sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    @bentoml.api
    def predict(self, images: list[list[float]]) -> dict[str, Any]:
        batch = np.asarray(images, dtype=np.float32).reshape(-1, 784) / np.float32(255)
        label, probabilities = self.session.run(None, {self.input: batch})
        return {"digits": label.tolist(), "probabilities": probabilities.tolist()}
