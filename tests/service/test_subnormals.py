"""Subnormal weights: set to zero in the graph the service serves and in the graphs training
exports, with the same answers (service/model/subnormals.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from service.config import ServiceConfig
from service.model.repository import sha256_bytes
from service.model.subnormals import flush_graph, subnormal_count, without_subnormals
from service.model.validation import create_session, validate_version, without_subnormal_weights
from tests.service.conftest import SOURCE, publish_copy

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
# the graph as the committed model was first exported: one helper for this test and the benchmark
from subnormals_bench import with_subnormal_weights

F32_TINY = float(np.finfo(np.float32).tiny)  # 2 ** -126, the smallest normal float32


def graph_subnormals(onnx_bytes: bytes) -> int:
    """How many values of the graph's initializers are subnormal, counted with numpy alone."""
    total = 0
    for tensor in onnx.load_from_string(onnx_bytes).graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f":
            tiny = np.finfo(values.dtype).tiny
            total += int(((values != 0) & (np.abs(values) < tiny)).sum())
    return total


def test_only_subnormal_values_become_zero() -> None:
    values = np.array(
        [1e-40, -1e-45, F32_TINY, -F32_TINY, 0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -3e-38],
        dtype=np.float32,
    )
    flushed = without_subnormals(values)
    assert subnormal_count(values) == 2
    assert flushed.dtype == np.float32 and flushed.shape == values.shape
    assert flushed[:2].tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(flushed[2:], values[2:])  # NaN, infinities, normals kept
    assert values[0] == np.float32(1e-40)  # a copy: the input is not changed
    doubles = np.array([5e-324, 2.3e-308, 1e-300], dtype=np.float64)
    assert without_subnormals(doubles).tolist() == [0.0, 2.3e-308, 1e-300]
    halves = np.array([1e-5, 7e-5], dtype=np.float16)  # float16's smallest normal is 6.1e-5
    assert without_subnormals(halves).tolist() == [0.0, float(np.float16(7e-5))]
    integers = np.array([0, 1], dtype=np.int64)
    normal = np.array([1.0, 0.5], dtype=np.float32)
    assert without_subnormals(integers) is integers and without_subnormals(normal) is normal


def test_a_model_with_subnormal_weights_is_served_without_them_and_answers_the_same(
    tmp_path: Path, mnist_data: Any
) -> None:
    on_disk = with_subnormal_weights((SOURCE / "model.onnx").read_bytes())
    expected = graph_subnormals(on_disk)
    assert expected > 10_000
    served: list[bytes] = []

    def recording_sessions(onnx_bytes: bytes, settings: Any) -> ort.InferenceSession:
        served.append(onnx_bytes)
        return create_session(onnx_bytes, settings)

    version = publish_copy(tmp_path, onnx_bytes=on_disk)
    validated = validate_version(
        version, "mnist", ServiceConfig(model_dir=tmp_path), recording_sessions
    )
    assert validated.flushed_subnormals == expected
    assert graph_subnormals(served[0]) == 0
    assert sha256_bytes(version.model_path.read_bytes()) == sha256_bytes(on_disk)  # unchanged
    # the reject option's copy of the first layer has no subnormal values either, and the
    # session's hidden layer still stands in for it
    assert validated.hidden_output is not None
    assert validated.reject._hidden is not None
    assert subnormal_count(validated.reject._hidden[0]) == 0

    images = mnist_data.test.images[:3000].astype(np.float32) / np.float32(255)
    plain = ort.InferenceSession(on_disk, providers=["CPUExecutionProvider"])
    names = ["label", "probabilities"]
    for before, after in zip(
        plain.run(names, {"input": images}),
        validated.session.run(names, {"input": images}),
        strict=True,
    ):
        np.testing.assert_array_equal(after, before)  # to the last bit


def test_a_graph_without_subnormal_weights_is_served_as_its_own_bytes() -> None:
    committed = (SOURCE / "model.onnx").read_bytes()
    assert graph_subnormals(committed) == 0  # exported (or rewritten) without them
    assert without_subnormal_weights(committed) == (committed, 0)
    model = onnx.load_from_string(with_subnormal_weights(committed))
    assert flush_graph(model) > 0 and flush_graph(model) == 0
    assert without_subnormal_weights(b"not a protobuf")[1] == 0
