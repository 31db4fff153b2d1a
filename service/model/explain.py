"""What the served MLP does with an image, computed exactly from its ONNX weights with numpy.

scikit-learn's MLPClassifier exported by skl2onnx is a chain ``Cast -> (MatMul -> Add ->
activation) x hidden layers -> MatMul -> Add -> Softmax``. :func:`read_mlp` reads that chain's
weights from the graph (any depth; activation Relu, Tanh, Sigmoid or none) and :func:`explain`
runs it forward in float64 and back-propagates by hand, giving for each image:

- the probabilities, the predicted digit and the runner-up;
- the activations of every hidden layer;
- the saliency map ``x * d(p[digit] - p[runner_up]) / dx`` (gradient x input; Simonyan et al.
  2014, "Deep Inside Convolutional Networks", and Shrikumar et al. 2017 for gradient x input):
  positive where ink pushed the answer towards the predicted digit and away from the runner-up.

No Flask here, and no onnxruntime: the ``onnx`` package only parses the protobuf.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from service.errors import ModelUnavailable, ServiceError
from service.model import contract
from service.model.repository import sha256_bytes

Activation = Literal["identity", "logistic", "tanh", "relu"]
#: ONNX operator -> scikit-learn's name of the hidden activation it computes
ONNX_ACTIVATIONS: dict[str, Activation] = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "logistic"}


class NotExplainable(ServiceError):
    """The served model is not an MLP this module can read (the service keeps predicting)."""

    status = HTTPStatus.NOT_IMPLEMENTED
    code = "not_explainable"


@dataclass(frozen=True)
class Layer:
    """One dense layer: ``z = a @ weights + biases``; weights float64 [n_in, n_out]."""

    weights: np.ndarray
    biases: np.ndarray


@dataclass(frozen=True)
class Mlp:
    """An MLP classifier's layers (the last one feeds the softmax) and its hidden activation."""

    layers: tuple[Layer, ...]
    activation: Activation

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(layer.weights.shape[1] for layer in self.layers[:-1])


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` finds for a batch of N images (all float64 unless said otherwise)."""

    probabilities: np.ndarray  # [N, 10]
    digits: np.ndarray  # int64 [N], the most probable class
    runners_up: np.ndarray  # int64 [N], the second most probable class
    hidden: tuple[np.ndarray, ...]  # per hidden layer, [N, units]
    gradient: np.ndarray  # [N, 784], d(p[digit] - p[runner_up]) / d pixel (pixels in 0..1)
    saliency: np.ndarray  # [N, 784], gradient * input


def _initializers(graph: object) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {
        tensor.name: numpy_helper.to_array(tensor)
        for tensor in graph.initializer  # type: ignore[attr-defined]
    }


def read_mlp(onnx_bytes: bytes) -> Mlp:
    """The dense layers of an MLPClassifier's ONNX graph; NotExplainable if it is anything else."""
    import onnx
    from onnx import helper

    try:
        graph = onnx.load_from_string(onnx_bytes).graph
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise NotExplainable(f"the model is not a readable ONNX graph: {exc}") from None
    constants = _initializers(graph)
    inputs = [item.name for item in graph.input if item.name not in constants]
    if inputs != [contract.INPUT_NAME]:
        raise NotExplainable(f"the model's inputs are {inputs}, expected [{contract.INPUT_NAME!r}]")
    current = contract.INPUT_NAME  # the tensor the chain has reached
    pending: np.ndarray | None = None  # a MatMul's weights waiting for their Add
    layers: list[Layer] = []
    activations: list[str] = []  # per closed layer: the operator applied after it, or "identity"
    probabilities: str | None = None
    for node in graph.node:
        if current not in node.input:
            continue
        if probabilities is not None:
            if node.op_type == "Identity":
                current = node.output[0]
                continue
            break  # after the softmax: ArgMax, label lookup; not part of the function
        others = [name for name in node.input if name != current]
        op = node.op_type
        if op in ("Cast", "Identity") and not others:
            pass
        elif op == "MatMul" and pending is None and list(node.input[:1]) == [current]:
            pending = _constant(constants, others, op)
            if pending.ndim != 2:
                raise NotExplainable(f"a MatMul has weights of shape {pending.shape}")
        elif op == "Add" and pending is not None:
            biases = _constant(constants, others, op).reshape(-1)
            if biases.shape != (pending.shape[1],):
                raise NotExplainable(f"an Add has biases of shape {biases.shape}")
            layers.append(Layer(pending.astype(np.float64), biases.astype(np.float64)))
            activations.append("identity")
            pending = None
        elif op in ONNX_ACTIVATIONS and pending is None and layers and not others:
            if activations[-1] != "identity":
                raise NotExplainable("two activations follow one layer")
            activations[-1] = op
        elif op == "Softmax" and pending is None and layers and not others:
            axis = next((helper.get_attribute_value(a) for a in node.attribute), -1)
            if axis not in (-1, 1):
                raise NotExplainable(f"the softmax is over axis {axis}")
            probabilities = node.output[0]
        else:
            raise NotExplainable(f"the graph has a {op} node this MLP reader does not know")
        current = node.output[0]
    if probabilities is None:
        raise NotExplainable("the graph has no softmax over dense layers")
    if current != contract.OUTPUT_PROBABILITIES:
        raise NotExplainable(f"the softmax does not give {contract.OUTPUT_PROBABILITIES!r}")
    hidden_ops = set(activations[:-1]) or {"identity"}
    if len(hidden_ops) != 1 or activations[-1] != "identity":
        raise NotExplainable(f"unexpected activations {activations}")
    (hidden_op,) = hidden_ops
    widths = [contract.N_PIXELS] + [layer.weights.shape[1] for layer in layers]
    for layer, width in zip(layers, widths, strict=False):
        if layer.weights.shape[0] != width:
            shapes = [item.weights.shape for item in layers]
            raise NotExplainable(f"layer shapes do not chain: {shapes}")
    if widths[-1] != contract.N_CLASSES:
        raise NotExplainable(f"the last layer has {widths[-1]} outputs, not {contract.N_CLASSES}")
    activation: Activation = ONNX_ACTIVATIONS.get(hidden_op, "identity")
    return Mlp(layers=tuple(layers), activation=activation)


def _constant(constants: dict[str, np.ndarray], names: list[str], op: str) -> np.ndarray:
    if len(names) != 1 or names[0] not in constants:
        raise NotExplainable(f"a {op} node's second operand is not a constant")
    return constants[names[0]]


def _activate(activation: Activation, z: np.ndarray) -> np.ndarray:
    if activation == "relu":
        return np.asarray(np.maximum(z, 0.0))
    if activation == "tanh":
        return np.asarray(np.tanh(z))
    if activation == "logistic":
        # 1 / (1 + exp(-z)) without overflow warnings for large negative z
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))
    return z


def _derivative(activation: Activation, z: np.ndarray, a: np.ndarray) -> np.ndarray | float:
    """f'(z) from the pre-activation z and the activation a = f(z)."""
    if activation == "relu":
        return (z > 0).astype(np.float64)
    if activation == "tanh":
        return np.asarray(1.0 - a * a)
    if activation == "logistic":
        return np.asarray(a * (1.0 - a))
    return 1.0


def explain(mlp: Mlp, images: np.ndarray) -> Explanation:
    """The forward pass, the two leading classes and the saliency of ``images`` [N, 784] in 0..1.

    Exact up to float64 rounding: the gradient is back-propagated through the softmax
    (dp_i/dz_j = p_i (delta_ij - p_j)) and each layer, not estimated.
    """
    if images.ndim != 2 or images.shape[1] != contract.N_PIXELS:
        raise ValueError(f"images must have shape [N, {contract.N_PIXELS}], not {images.shape}")
    x = images.astype(np.float64)
    inputs = [x]  # the input of each layer
    pre: list[np.ndarray] = []  # each hidden layer's z
    a = x
    for layer in mlp.layers[:-1]:
        z = a @ layer.weights + layer.biases
        a = _activate(mlp.activation, z)
        pre.append(z)
        inputs.append(a)
    last = mlp.layers[-1]
    logits = a @ last.weights + last.biases
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    count = len(x)
    rows = np.arange(count)
    # stable order: ties go to the lower digit, as onnxruntime's ArgMax does
    order = np.argsort(-probabilities, axis=1, kind="stable")
    digits, runners_up = order[:, 0], order[:, 1]
    p_digit = probabilities[rows, digits][:, None]
    p_runner = probabilities[rows, runners_up][:, None]
    # d(p_d - p_r)/dz = p_d (e_d - p) - p_r (e_r - p)
    grad = (p_runner - p_digit) * probabilities
    grad[rows, digits] += p_digit[:, 0]
    grad[rows, runners_up] -= p_runner[:, 0]
    grad = grad @ last.weights.T
    for index in range(len(mlp.layers) - 2, -1, -1):
        grad = grad * _derivative(mlp.activation, pre[index], inputs[index + 1])
        grad = grad @ mlp.layers[index].weights.T
    return Explanation(
        probabilities=probabilities,
        digits=digits.astype(np.int64),
        runners_up=runners_up.astype(np.int64),
        hidden=tuple(inputs[1:]),
        gradient=grad,
        saliency=grad * x,
    )


class ServedModel(Protocol):
    """What the explainer needs to know of the version being served (a LoadedModel)."""

    @property
    def version(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class ServedMlp:
    """The weights of one served version."""

    name: str
    version: int
    mlp: Mlp


class Explainer:
    """Reads the served version's weights once per version (hot reload included) and explains.

    ``served`` returns the version being served (``lambda: predictor.loaded``); its model.onnx is
    read from disk and checked against the card's sha256, so the weights are the served ones.
    """

    def __init__(self, served: Callable[[], ServedModel], name: str = contract.MODEL_NAME) -> None:
        self._served = served
        self._name = name
        self._cached: tuple[int, str, ServedMlp | str] | None = None
        self._lock = threading.Lock()

    def current(self) -> ServedMlp:
        """The served version's MLP; ModelUnavailable or NotExplainable when there is none."""
        model = self._served()
        cached = self._cached
        if cached is None or cached[:2] != (model.version, model.sha256):
            with self._lock:
                cached = self._cached
                if cached is None or cached[:2] != (model.version, model.sha256):
                    cached = (model.version, model.sha256, self._read(model))
                    self._cached = cached  # one reference: readers see old or new, whole
        found = cached[2]
        if isinstance(found, str):
            raise NotExplainable(found)
        return found

    def _read(self, model: ServedModel) -> ServedMlp | str:
        try:
            data = (model.path / contract.MODEL_FILE).read_bytes()
        except OSError as exc:
            raise ModelUnavailable(f"cannot read the served model's weights: {exc}") from None
        if sha256_bytes(data) != model.sha256:
            raise ModelUnavailable("the served model's file changed on disk since it was loaded")
        try:
            mlp = read_mlp(data)
        except NotExplainable as exc:
            return exc.message  # remembered: the version will not become readable
        return ServedMlp(name=self._name, version=model.version, mlp=mlp)

    def explain(self, images: np.ndarray) -> tuple[ServedMlp, Explanation]:
        """The served MLP and its explanation of float32 ``images`` [N, 784] in 0..1."""
        served = self.current()
        return served, explain(served.mlp, images)
