"""service.model.explain: the MLP read back from ONNX, and its saliency against finite differences
of the ONNX model's probability run by onnxruntime, for every activation scikit-learn offers."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from service.errors import ModelUnavailable
from service.model import contract
from service.model.explain import Explainer, NotExplainable, explain, read_mlp
from tests.service.conftest import committed_parts, renamed_input_model

ACTIVATIONS = ("identity", "logistic", "tanh", "relu")
#: the acceptance bound on saliency against finite differences
SALIENCY_ATOL = 1e-4
FD_STEP = 1e-5  # central differences in float64: truncation ~h^2, rounding ~1e-16/h


def float64_copy(onnx_bytes: bytes) -> ort.InferenceSession:
    """The same graph and weights computing in float64, up to the probabilities (onnxruntime)."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == 1:
                attribute.i = TensorProto.DOUBLE
    graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    # keep only what the probabilities need
    keep = [o for o in graph.output if o.name == contract.OUTPUT_PROBABILITIES]
    keep[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    needed = {contract.OUTPUT_PROBABILITIES}
    nodes = []
    for node in reversed(list(graph.node)):
        if needed & set(node.output):
            nodes.append(node)
            needed |= set(node.input)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    used = [tensor for tensor in graph.initializer if tensor.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)
    del graph.output[:]
    graph.output.extend(keep)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def finite_difference_saliency(
    session: ort.InferenceSession, image: np.ndarray, digit: int, runner_up: int
) -> np.ndarray:
    """x * d(p[digit] - p[runner_up])/dx by central differences, all 784 pixels in one batch."""
    x = image.astype(np.float64)
    steps = np.eye(contract.N_PIXELS) * FD_STEP
    batch = np.concatenate([x + steps, x - steps])
    (p,) = session.run(None, {contract.INPUT_NAME: batch})
    margin = p[:, digit] - p[:, runner_up]
    gradient = (margin[: contract.N_PIXELS] - margin[contract.N_PIXELS :]) / (2 * FD_STEP)
    return np.asarray(gradient * x)


@dataclass(frozen=True)
class TrainedMlp:
    activation: str
    onnx_bytes: bytes


@pytest.fixture(scope="module", params=ACTIVATIONS)
def trained(request: pytest.FixtureRequest, mnist_data: Any) -> TrainedMlp:
    """A small two-hidden-layer MLP with the activation, trained on 1,000 digits, as ONNX."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    from training.data import scale_pixels
    from training.export import export_onnx

    split = mnist_data.train.head(1000)
    model = MLPClassifier(
        hidden_layer_sizes=(24, 12), activation=request.param, max_iter=30, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scale_pixels(split.images), split.labels)
    return TrainedMlp(request.param, export_onnx(model))


def test_saliency_matches_finite_differences_of_the_onnx_model(
    trained: Any, mnist_data: Any
) -> None:
    mlp = read_mlp(trained.onnx_bytes)
    assert mlp.activation == trained.activation
    assert mlp.hidden_sizes == (24, 12)
    images = mnist_data.test.images[:4].astype(np.float32) / np.float32(255)
    found = explain(mlp, images)
    session = float64_copy(trained.onnx_bytes)
    served = ort.InferenceSession(trained.onnx_bytes, providers=["CPUExecutionProvider"])
    labels, probabilities = served.run(None, {contract.INPUT_NAME: images})
    # the forward pass is the served model's (float32 there, float64 here)
    np.testing.assert_allclose(found.probabilities, probabilities, atol=1e-5)
    assert (found.digits == labels).all()
    worst = 0.0
    for index, image in enumerate(images):
        digit, runner_up = int(found.digits[index]), int(found.runners_up[index])
        assert digit != runner_up
        expected = finite_difference_saliency(session, image, digit, runner_up)
        error = float(np.abs(found.saliency[index] - expected).max())
        worst = max(worst, error)
        assert error <= SALIENCY_ATOL, f"{trained.activation}: image {index} off by {error:.2e}"
        # the map is not trivially zero: some ink pushed the answer one way or the other
        assert np.abs(expected).max() > 1e-3
    print(f"\n{trained.activation}: saliency vs finite differences, max error {worst:.2e}")


def test_hidden_activations_and_runner_up(trained: Any, mnist_data: Any) -> None:
    mlp = read_mlp(trained.onnx_bytes)
    images = mnist_data.test.images[:8].astype(np.float32) / np.float32(255)
    found = explain(mlp, images)
    assert [h.shape for h in found.hidden] == [(8, 24), (8, 12)]
    if trained.activation == "relu":
        assert found.hidden[0].min() >= 0
    if trained.activation == "logistic":
        assert found.hidden[0].min() > 0 and found.hidden[0].max() < 1
    ranked = np.sort(found.probabilities, axis=1)
    rows = np.arange(8)
    np.testing.assert_array_equal(found.probabilities[rows, found.runners_up], ranked[:, -2])
    np.testing.assert_allclose(found.saliency, found.gradient * images, rtol=0, atol=0)


def test_the_committed_model_is_read_and_agrees_with_onnxruntime() -> None:
    onnx_bytes, card, selftest = committed_parts()
    mlp = read_mlp(onnx_bytes)
    assert mlp.activation == card["config"]["activation"] == "relu"
    assert mlp.hidden_sizes == tuple(card["config"]["hidden_layers"])
    images = np.asarray(selftest["images"], dtype=np.float32) / np.float32(255)
    found = explain(mlp, images)
    assert found.digits.tolist() == selftest["expected_labels"]
    np.testing.assert_allclose(
        found.probabilities, np.asarray(selftest["expected_probabilities"]), atol=1e-4
    )


def test_explaining_sixteen_digits_takes_a_few_milliseconds() -> None:
    onnx_bytes, _, selftest = committed_parts()
    mlp = read_mlp(onnx_bytes)
    images = np.resize(np.asarray(selftest["images"], dtype=np.float32) / 255, (16, 784))
    explain(mlp, images)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        explain(mlp, images)
        timings.append(time.perf_counter() - started)
    # the target is 5 ms (bench/explain_bench.py measures it); a shared CI machine gets slack,
    # and the best of 20 runs measures the code, not how loaded the machine was meanwhile
    assert min(timings) < 0.05, timings


def test_a_graph_that_is_not_an_mlp_is_refused() -> None:
    with pytest.raises(NotExplainable, match="inputs"):
        read_mlp(renamed_input_model())
    with pytest.raises(NotExplainable, match="readable"):
        read_mlp(b"not onnx at all")
    model = onnx.load_from_string(committed_parts()[0])
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Elu"
    with pytest.raises(NotExplainable, match="Elu"):
        read_mlp(model.SerializeToString())


@dataclass(frozen=True)
class Served:
    version: int
    sha256: str
    path: Path


def test_the_explainer_reads_each_served_version_once(tmp_path: Path) -> None:
    from service.model.repository import sha256_bytes

    onnx_bytes = committed_parts()[0]
    (tmp_path / contract.MODEL_FILE).write_bytes(onnx_bytes)
    serving = [Served(1, sha256_bytes(onnx_bytes), tmp_path)]
    explainer = Explainer(lambda: serving[0])
    first = explainer.current()
    assert first.version == 1 and explainer.current() is first
    serving[0] = Served(2, sha256_bytes(onnx_bytes), tmp_path)
    second = explainer.current()
    assert second.version == 2 and second is not first
    # a file that no longer matches the served sha256 is never used
    serving[0] = Served(3, "0" * 64, tmp_path)
    with pytest.raises(ModelUnavailable):
        explainer.current()
