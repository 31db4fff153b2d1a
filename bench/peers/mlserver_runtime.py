"""The MNIST ONNX model as an MLServer runtime (bench/peers_bench.py serves it with MLServer).

Model settings give the ONNX file as ``parameters.uri``. One onnxruntime thread per session, as
in mnist-service's workers. Inputs: the V2 tensor ``input`` (FP32 [N, 784] in [0, 1]); outputs:
``label`` (INT64 [N]) and ``probabilities`` (FP32 [N, 10]), as mnist-service answers them.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxMnist(MLModel):
    """onnxruntime on the ONNX file named by the model settings' parameters.uri."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self._session = ort.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        images = np.asarray(images, dtype=np.float32).reshape(-1, 784)
        label, probabilities = self._session.run(None, {self._input: images})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("label", label),
                NumpyCodec.encode_output("probabilities", probabilities),
            ],
        )
