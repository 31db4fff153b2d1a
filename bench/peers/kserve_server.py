"""The MNIST ONNX model on KServe's Python model server (bench/peers_bench.py starts it).

Usage: python kserve_server.py --model_path model.onnx --http_port P --workers 2
(KServe's own flags: --http_port, --workers, --enable_grpc ...). One onnxruntime thread per
session, as in mnist-service's workers. V2 inputs and outputs as mnist-service's.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server
from kserve.protocol.rest.multiprocess.server import RESTServerProcess

_uvicorn_config = uvicorn.Config.__init__


def _on_loopback(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    # KServe's REST server binds 0.0.0.0 with no flag to change it; a benchmark stays on loopback
    kwargs["host"] = "127.0.0.1"
    _uvicorn_config(self, *args, **kwargs)


class OnnxMnist(Model):
    """onnxruntime on one ONNX file, answering the Open Inference Protocol."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.path, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.ready = True
        return self.ready

    # KServe's --workers > 1 spawns the HTTP processes and pickles the models into them: each
    # process makes its own onnxruntime session, on its first request (a spawned process that
    # does not answer KServe's ping within 5 s is killed and spawned again)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_session", None)
        return state

    def predict(self, payload: InferRequest, headers: Any = None, **kwargs: Any) -> InferResponse:
        if "_session" not in self.__dict__:
            self.load()
        images = payload.inputs[0].as_numpy().astype(np.float32).reshape(-1, 784)
        label, probabilities = self._session.run(None, {self._input: images})
        outputs = []
        for name, array, datatype in (
            ("label", label, "INT64"),
            ("probabilities", probabilities, "FP32"),
        ):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(
            model_name=self.name, infer_outputs=outputs, response_id=payload.id or "0"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_path", required=True)
    args, _ = parser.parse_known_args()
    uvicorn.Config.__init__ = _on_loopback  # type: ignore[method-assign]
    # KServe kills a spawned HTTP process that does not answer a ping within 5 s and spawns
    # another; on a busy 2-core machine importing alone takes longer, so they never come up
    RESTServerProcess.is_alive.__defaults__ = (60.0,)
    ModelServer().start([OnnxMnist(args.model_name or "mnist", args.model_path)])
