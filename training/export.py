"""Export a fitted MLPClassifier to ONNX with skl2onnx, in the shape service/contract.py fixes."""

from __future__ import annotations

from typing import Any

from service.model.contract import INPUT_NAME, N_PIXELS, OUTPUT_LABEL, OUTPUT_PROBABILITIES
from service.model.subnormals import flush_graph

#: pinned so the same model gives the same bytes with any onnx release, and older runtimes
#: (Triton, KServe) still load it
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 1}


class ExportError(Exception):
    """The exported graph does not have the contract's inputs and outputs."""


def export_onnx(model: Any) -> bytes:
    """The ONNX bytes of ``model``: input "input" float32 [None, 784]; outputs "label" int64 [N]
    and "probabilities" float32 [N, 10] (no ZipMap). Weights that are subnormal in float32 are
    written as zero: the same answers without x86's slow path (service.model.subnormals)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_PIXELS]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    inputs = [item.name for item in onnx_model.graph.input]
    outputs = [item.name for item in onnx_model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_LABEL, OUTPUT_PROBABILITIES]:
        raise ExportError(
            f"exported graph has inputs {inputs} and outputs {outputs}; the contract wants "
            f"[{INPUT_NAME!r}] and [{OUTPUT_LABEL!r}, {OUTPUT_PROBABILITIES!r}]"
        )
    flush_graph(onnx_model)
    return bytes(onnx_model.SerializeToString())
