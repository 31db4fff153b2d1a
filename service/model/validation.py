"""Validation of a model version before any request reaches it: files, card, graph, self-test.

Checks, in order, each raising ModelRejected with the reason: the card's ``size`` against
MAX_MODEL_BYTES (before model.onnx is read), model.onnx's size and sha256 against the card, the
card's input/output contract, the self-test file against its sha256, the ONNX graph for tensors
kept in external-data files (before any onnxruntime session exists: onnxruntime would open such a
file, wherever it lies, relative to the working directory), then a fresh onnxruntime session's
signature and the self-test digits. The session serves a copy of the graph whose subnormal
weights are zero (service.model.subnormals); model.onnx on disk is never changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from service.model import contract
from service.model.reject import RejectOption, RejectSectionError
from service.model.repository import ModelVersion, RepositoryError, sha256_bytes
from service.model.subnormals import flush_graph

log = logging.getLogger(__name__)

#: probabilities recorded at training time are rounded; float32 kernels differ across CPUs
SELFTEST_ATOL = 1e-4


class ModelRejected(Exception):
    """A version failed validation (files, signature, session or self-test) and is not served."""


class SessionSettings(Protocol):
    """What validation reads of the service configuration (service.config.ServiceConfig)."""

    @property
    def intra_op_threads(self) -> int: ...
    @property
    def max_model_bytes(self) -> int: ...


@dataclass(frozen=True)
class LoadedModel:
    """A snapshot of one validated version."""

    name: str
    version: int
    card: contract.ModelCard = field(repr=False)
    path: Path

    @property
    def sha256(self) -> str:
        return self.card.sha256


@dataclass(frozen=True)
class ValidatedModel:
    """A version that passed every check, with its ready onnxruntime session."""

    model: LoadedModel
    session: ort.InferenceSession = field(repr=False)
    #: how this version accepts or rejects its answers (the card's reject section)
    reject: RejectOption = field(default_factory=RejectOption, repr=False)
    #: the session's extra output with the hidden layer the reject option's discriminator reads
    #: (``HiddenLayerOutput``), or None: the option computes that layer itself
    hidden_output: str | None = None
    #: how many subnormal weights the served copy of the graph has as zero
    #: (service.model.subnormals; model.onnx itself is unchanged)
    flushed_subnormals: int = 0


SessionFactory = Callable[[bytes, SessionSettings], ort.InferenceSession]


def create_session(onnx_bytes: bytes, config: SessionSettings) -> ort.InferenceSession:
    """An onnxruntime CPU session with the thread counts set explicitly."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1  # one model, one graph: parallel branches do not exist
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # workers and gthread threads already use both cores; spinning threads would steal them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class HiddenLayerOutput:
    """A ReLU MLP's graph with its first hidden layer relu(x W + b) as one more output, so that
    the reject option's discriminator reads that layer from the session's run instead of
    computing it again (float32 [N, H]). Only the in-memory session gets these bytes: model.onnx,
    its size and sha256 stay as the card says."""

    onnx_bytes: bytes = field(repr=False)
    #: the output's name in the graph (the first Relu's output)
    name: str
    #: float32 [784, H] and [H]: the layer's W and b, to compare with the subspaces file's copy
    weights: np.ndarray = field(repr=False)
    biases: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, onnx_bytes: bytes) -> HiddenLayerOutput | None:
        """The graph with the output added, or None when its first operators (Casts aside) are
        not MatMul, Add, Relu on the input with constant W and b (the graph skl2onnx writes for
        MLPClassifier, as training/calibrate.py reads it) or the graph cannot be read."""
        import onnx
        from onnx import helper, numpy_helper

        try:
            model = onnx.load_from_string(onnx_bytes)
        except Exception:  # protobuf raises DecodeError and friends
            return None
        graph = model.graph
        constants = {item.name: item for item in graph.initializer}
        ops = [node for node in graph.node if node.op_type != "Cast"]
        if [node.op_type for node in ops[:3]] != ["MatMul", "Add", "Relu"]:
            return None
        matmul, add, relu = ops[:3]
        weights = [n for n in matmul.input if n in constants]
        biases = [n for n in add.input if n in constants]
        if (
            len(weights) != 1
            or len(biases) != 1
            or matmul.output[0] not in add.input
            or list(relu.input) != [add.output[0]]
        ):
            return None
        found = numpy_helper.to_array(constants[weights[0]]).astype(np.float32)
        offsets = numpy_helper.to_array(constants[biases[0]]).reshape(-1).astype(np.float32)
        if found.shape != (contract.N_PIXELS, len(offsets)):
            return None
        name = relu.output[0]
        if name not in {output.name for output in graph.output}:
            graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None, len(offsets)])
            )
        return cls(model.SerializeToString(), name, found, offsets)


def without_subnormal_weights(onnx_bytes: bytes) -> tuple[bytes, int]:
    """The graph to serve: ``onnx_bytes`` with its subnormal weights set to zero
    (service.model.subnormals), and how many there were; the bytes themselves when there are
    none or the graph cannot be read (onnxruntime then says why it cannot load them)."""
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)
        flushed = flush_graph(model)
    except Exception:  # protobuf's DecodeError and friends; a tensor numpy cannot hold
        return onnx_bytes, 0
    return (model.SerializeToString(), flushed) if flushed else (onnx_bytes, 0)


def check_card(card: contract.ModelCard) -> None:
    """ModelRejected unless the card declares the contract's input, outputs and classes."""
    declared, expected_input = card.input.to_json(), contract.INPUT.to_json()
    for key in ("name", "dtype", "shape", "pixel_scale"):
        if declared[key] != expected_input[key]:
            raise ModelRejected(
                f"the card's input {key} is {declared[key]!r}, the service expects "
                f"{expected_input[key]!r}"
            )
    by_name = {o.name: o.to_json() for o in card.outputs}
    for expected in contract.output_contract():
        found = by_name.get(expected["name"])
        if found is None:
            raise ModelRejected(f"the card lists no output {expected['name']!r}")
        for key in ("dtype", "shape"):
            if found[key] != expected[key]:
                raise ModelRejected(
                    f"the card's output {expected['name']!r} has {key} {found[key]!r}, "
                    f"the service expects {expected[key]!r}"
                )
    if card.class_labels != contract.CLASS_LABELS:
        raise ModelRejected(f"the card's class_labels {list(card.class_labels)!r} are not 0..9")


def _dynamic(dim: object) -> bool:
    # onnxruntime shows a symbolic batch dimension as None or as its name
    return dim is None or isinstance(dim, str) or dim == -1


def check_signature(session: ort.InferenceSession) -> None:
    """ModelRejected unless the ONNX graph has the contract's input and outputs."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRejected(f"the model has {len(inputs)} inputs, the service expects 1")
    (tensor,) = inputs
    if tensor.name != contract.INPUT_NAME or tensor.type != "tensor(float)":
        raise ModelRejected(
            f"the model's input is {tensor.name!r} {tensor.type}, the service expects "
            f"{contract.INPUT_NAME!r} tensor(float)"
        )
    if len(tensor.shape) != 2 or not _dynamic(tensor.shape[0]) or tensor.shape[1] != 784:
        raise ModelRejected(f"the model's input shape is {tensor.shape}, expected [N, 784]")
    outputs = {o.name: o for o in session.get_outputs()}
    expected = {
        contract.OUTPUT_LABEL: ("tensor(int64)", 1, None),
        contract.OUTPUT_PROBABILITIES: ("tensor(float)", 2, contract.N_CLASSES),
    }
    for name, (kind, rank, last) in expected.items():
        found = outputs.get(name)
        if found is None:
            raise ModelRejected(f"the model has no output {name!r} (it has {sorted(outputs)})")
        if found.type != kind or len(found.shape) != rank:
            raise ModelRejected(
                f"the model's output {name!r} is {found.type} of shape {found.shape}, "
                f"expected {kind} of rank {rank}"
            )
        if last is not None and found.shape[-1] != last:
            raise ModelRejected(f"the model's output {name!r} has shape {found.shape}")


def read_selftest(version: ModelVersion, card: contract.ModelCard) -> dict[str, Any]:
    """The self-test digits beside the model, checked against the sha256 in the card."""
    entry = card.selftest
    name = entry.file
    if "/" in name or "\\" in name or name.startswith("."):
        raise ModelRejected(f"the selftest file {name!r} is not a plain file name")
    try:
        data = (version.path / name).read_bytes()
    except OSError as exc:
        raise ModelRejected(f"cannot read the selftest file {name}: {exc}") from exc
    if sha256_bytes(data) != entry.sha256:
        raise ModelRejected(f"the selftest file {name} does not match its sha256 in the card")
    try:
        selftest = json.loads(data)
    except ValueError as exc:
        raise ModelRejected(f"the selftest file {name} is not JSON: {exc}") from exc
    except RecursionError:  # a hostile file: arrays or objects nested thousands deep
        raise ModelRejected(f"the selftest file {name} is JSON nested too deeply to read") from None
    if not isinstance(selftest, dict):
        raise ModelRejected(f"the selftest file {name} is not a JSON object")
    return selftest


def run_selftest(session: ort.InferenceSession, selftest: Mapping[str, Any]) -> None:
    """ModelRejected unless the model reproduces the labels and probabilities of training time."""
    try:
        images = np.asarray(selftest["images"], dtype=np.uint8)
        expected_labels = np.asarray(selftest["expected_labels"], dtype=np.int64)
        expected_probs = np.asarray(selftest["expected_probabilities"], dtype=np.float32)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ModelRejected(f"the selftest file is malformed: {exc!r}") from exc
    count = len(images)
    if (
        count == 0
        or images.shape != (count, contract.N_PIXELS)
        or expected_labels.shape != (count,)
        or expected_probs.shape != (count, contract.N_CLASSES)
    ):
        raise ModelRejected("the selftest file has inconsistent shapes")
    pixels = images.astype(np.float32) * np.float32(contract.PIXEL_SCALE)
    try:
        labels, probs = session.run(
            [contract.OUTPUT_LABEL, contract.OUTPUT_PROBABILITIES], {contract.INPUT_NAME: pixels}
        )
    except Exception as exc:  # onnxruntime raises a dozen unrelated types, all direct Exceptions
        raise ModelRejected(f"the model failed to run the self-test: {exc}") from exc
    if not np.array_equal(np.asarray(labels), expected_labels):
        raise ModelRejected(
            f"self-test labels {np.asarray(labels).tolist()} differ from the expected "
            f"{expected_labels.tolist()}"
        )
    worst = float(np.max(np.abs(np.asarray(probs) - expected_probs)))
    if not worst <= SELFTEST_ATOL:
        raise ModelRejected(f"self-test probabilities differ by up to {worst:.2e}")


# -- external data: a minimal walk of the ONNX protobuf ------------------------------------------
#
# The serving image has onnxruntime but not the onnx package, and onnxruntime offers no way to list
# a graph's tensors before it builds a session (which is when it opens external files). So the
# few ONNX messages that can hold a TensorProto are walked here by field number (onnx.proto3);
# everything else, raw tensor bytes included, is skipped by its length without being copied.

_TENSOR, _SPARSE, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _MODEL = range(8)
#: message kind -> {field number: kind of the embedded message}
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TENSOR: {},
}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelRejected("model.onnx is not a valid ONNX protobuf (truncated varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one protobuf message; nested messages as views."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = 0, pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = 0, pos + 4
        else:
            raise ModelRejected(f"model.onnx is not a valid ONNX protobuf (wire type {wire})")
        if pos > len(data):
            raise ModelRejected("model.onnx is not a valid ONNX protobuf (truncated field)")
        yield number, wire, value


def _walk(data: memoryview, kind: int, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ModelRejected("model.onnx nests subgraphs too deeply")
    children = _CHILDREN[kind]
    for number, wire, value in _fields(data):
        if kind == _TENSOR:
            if number == _TENSOR_EXTERNAL_DATA or (
                number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL
            ):
                raise ModelRejected(
                    "model.onnx keeps tensor data in an external file; the service serves only "
                    "self-contained models (all weights inside model.onnx)"
                )
        elif wire == 2 and number in children:
            assert isinstance(value, memoryview)
            _walk(value, children[number], depth + 1)


def check_self_contained(onnx_bytes: bytes) -> None:
    """ModelRejected when any tensor of the graph (initializers, constants, subgraphs,
    functions, training info) refers to external data, or the bytes are not a protobuf."""
    _walk(memoryview(onnx_bytes), _MODEL, 0)


def validate_version(
    version: ModelVersion,
    name: str,
    settings: SessionSettings,
    session_factory: SessionFactory = create_session,
) -> ValidatedModel:
    """A ready session for ``version`` after every check; ModelRejected says which one failed."""
    try:
        onnx_bytes, document = version.read_verified(settings.max_model_bytes)
    except RepositoryError as exc:
        # the repository's reasons name the version; a rejection's reason is said of it (the
        # watcher, the lifecycle and the index put "version N" before it)
        raise ModelRejected(str(exc).removeprefix(f"version {version.version}: ")) from exc
    try:
        card = contract.ModelCard.from_json(document)
    except contract.CardError as exc:
        raise ModelRejected(f"{contract.CARD_FILE}: {exc}") from exc
    if card.name != name:
        raise ModelRejected(f"the card names model {card.name!r}")
    check_card(card)
    selftest = read_selftest(version, card)
    check_self_contained(onnx_bytes)
    served, flushed = without_subnormal_weights(onnx_bytes)
    if flushed:
        log.info(
            "%s version %d: %d subnormal weights are served as zero (the same answers without "
            "x86's slow path; model.onnx is unchanged)",
            name,
            version.version,
            flushed,
        )
    hidden = None  # only a discriminator reads the hidden layer
    if card.reject is not None and card.reject.novelty.discriminator_threshold is not None:
        hidden = HiddenLayerOutput.of(served)
    try:
        session = session_factory(served if hidden is None else hidden.onnx_bytes, settings)
    except Exception as exc:  # onnxruntime raises a dozen unrelated types (InvalidProtobuf...)
        raise ModelRejected(f"onnxruntime cannot load model.onnx: {exc}") from exc
    check_signature(session)
    run_selftest(session, selftest)
    try:
        reject = RejectOption.from_card(card, version.path)
    except RejectSectionError as exc:
        raise ModelRejected(str(exc)) from exc
    model = LoadedModel(name=name, version=version.version, card=card, path=version.path)
    # the session's layer serves the discriminator only when it is the layer it was fitted on
    reads_hidden = hidden is not None and reject.has_hidden_layer(hidden.weights, hidden.biases)
    return ValidatedModel(
        model=model,
        session=session,
        reject=reject,
        hidden_output=hidden.name if hidden is not None and reads_hidden else None,
        flushed_subnormals=flushed,
    )
