"""The contract between training and serving: names, shapes and the pixel scale of the model.

Training imports this module to build the ONNX graph and the card; serving imports it to check
both. It imports nothing beyond the standard library, so the serving image needs no scikit-learn.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MODEL_NAME = "mnist"
IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
CLASS_LABELS: tuple[int, ...] = tuple(range(N_CLASSES))

INPUT_NAME = "input"
INPUT_DTYPE = "float32"
#: raw MNIST pixels are 0 (background) .. 255 (ink); the model sees raw / 255
PIXEL_MAX = 255.0
PIXEL_SCALE = 1.0 / PIXEL_MAX

OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
SELFTEST_FILE = "selftest.json"
TRITON_CONFIG_FILE = "config.pbtxt"
#: our labels beside config.pbtxt: which loaded version is ``stable``, and a canary or shadow
LABELS_FILE = "labels.json"
#: the optional card section of the reject option, and the not-a-digit subspaces beside the model
REJECT_SECTION = "reject"
NOVELTY_FILE = "novelty.npz"

#: largest batch the service accepts in one request, also written as Triton's max_batch_size
MAX_BATCH_SIZE = 1024


def input_contract() -> dict[str, Any]:
    """The input description written into every card (JSON)."""
    return INPUT.to_json()


def output_contract() -> list[dict[str, Any]]:
    """The output descriptions written into every card (JSON)."""
    return [output.to_json() for output in OUTPUTS]


def triton_version_policy(versions: Sequence[int] | None) -> str:
    """Triton's ``version_policy`` text: ``specific`` for the listed versions, else ``latest 1``.

    Triton loads exactly the listed versions (model_config.proto, ModelVersionPolicy); an empty
    or absent list means "the highest version", as Triton's default does.
    """
    if not versions:
        return "version_policy: { latest: { num_versions: 1 } }"
    listed = ", ".join(str(v) for v in sorted(set(versions)))
    return f"version_policy: {{ specific: {{ versions: [ {listed} ] }} }}"


def triton_config(
    name: str = MODEL_NAME,
    max_batch_size: int = MAX_BATCH_SIZE,
    versions: Sequence[int] | None = None,
) -> str:
    """Triton's config.pbtxt for the model, so the same folder can be served by Triton.

    ``label`` is one int64 per image: Triton refuses an output without dims (ValidateIOShape in
    triton-inference-server/core), so it is written ``dims: [ 1 ]`` reshaped to ``[ ]``, which
    Triton accepts for a batching model. ``versions`` become the ``version_policy``.
    """
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {N_PIXELS} ]
  }}
]
output [
  {{
    name: "{OUTPUT_LABEL}"
    data_type: TYPE_INT64
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }},
  {{
    name: "{OUTPUT_PROBABILITIES}"
    data_type: TYPE_FP32
    dims: [ {N_CLASSES} ]
  }}
]
{triton_version_policy(versions)}
"""


# -- the model card -------------------------------------------------------------------------------
#
# card.json as frozen dataclasses. Training builds a ModelCard and writes ``to_json()``; serving
# reads it back with ``parse_card``, which checks every field's type and names the first wrong
# one. Keys the reader does not know are ignored, so a card written by a newer trainer still
# loads. To add a section: write a frozen dataclass here and give ModelCard a field
# ``name: Section | None = None``; a card without the section reads as None and is written
# without it. The converter below walks the dataclass fields (the standard library has no such
# reader, and the serving image should not carry a validation library for one file).


class CardError(ValueError):
    """card.json does not match the typed card; the message names the field (``metrics.x``)."""


@dataclass(frozen=True)
class PixelScale:
    """Raw pixel range and the range the model sees (raw / 255)."""

    raw_min: int
    raw_max: int
    model_min: float
    model_max: float


@dataclass(frozen=True)
class InputSpec:
    """The model's one input tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    pixel_scale: PixelScale
    layout: str

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], _dump(self))


@dataclass(frozen=True)
class OutputSpec:
    """One output tensor."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], _dump(self))


#: the input every model takes: float32 [N, 784], raw / 255, as MNIST was drawn
INPUT = InputSpec(
    name=INPUT_NAME,
    dtype=INPUT_DTYPE,
    shape=(-1, N_PIXELS),
    pixel_scale=PixelScale(raw_min=0, raw_max=255, model_min=0.0, model_max=1.0),
    layout="row-major 28x28, ink high (as in MNIST)",
)
#: the two outputs: the label [N] and the ten probabilities [N, 10]
OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec(name=OUTPUT_LABEL, dtype="int64", shape=(-1,)),
    OutputSpec(name=OUTPUT_PROBABILITIES, dtype="float32", shape=(-1, N_CLASSES)),
)


@dataclass(frozen=True)
class SelftestRef:
    """The self-test file beside the model: its name, sha256 and number of digits."""

    file: str
    sha256: str
    count: int


@dataclass(frozen=True)
class DataInfo:
    """Where the images came from and how many were used for what."""

    source: str
    md5: Mapping[str, str]
    train_available: int
    train_used: int
    train_size: int  # images the weights were fitted on (without distorted copies)
    validation_size: int
    test_size: int
    pixel_scale: str


@dataclass(frozen=True)
class Metrics:
    """Test-set figures (read once, after training) and the run's validation figures."""

    test_accuracy: float
    test_error: float
    test_count: int
    per_class_precision: tuple[float, ...]
    per_class_recall: tuple[float, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]  # [10][10], rows true, columns predicted
    log_loss: float
    train_seconds: float
    epochs: int
    epoch_unit: str  # "epoch" (sgd, adam) or "iteration" (lbfgs)
    best_epoch: int | None
    final_loss: float | None
    validation_accuracy: float | None
    validation_loss: float | None
    converged: bool


@dataclass(frozen=True)
class ThreadPool:
    """One native thread pool during training, as threadpoolctl reports it."""

    user_api: str  # "blas" or "openmp"
    internal_api: str  # "openblas", "mkl", "openmp"...
    num_threads: int
    version: str | None


@dataclass(frozen=True)
class ThreadInfo:
    """The BLAS/OpenMP thread limit the run was pinned to and the pools it found."""

    limit: int
    pools: tuple[ThreadPool, ...]


@dataclass(frozen=True)
class TrainingInfo:
    """How the fit ended."""

    converged: bool
    stop_reason: str
    restored_best_weights: bool
    epochs: int
    epoch_unit: str
    seconds: float
    threads: ThreadInfo | None = None
    #: numpy's floating-point errors during the run by kind (``{"overflow": 120}``); None: none
    floating_point_errors: dict[str, int] | None = None


@dataclass(frozen=True)
class EpochFigures:
    """One epoch of the training curve."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class ValidationCurve:
    """Validation accuracy and loss per epoch (None without a validation split)."""

    val_accuracy: tuple[float | None, ...]
    val_loss: tuple[float | None, ...]


@dataclass(frozen=True)
class Baseline:
    """A reference model's test accuracy on the same split."""

    model: str
    test_accuracy: float
    train_seconds: float | None = None


@dataclass(frozen=True)
class Baselines:
    """The most-frequent-class and linear reference points."""

    most_frequent: Baseline
    linear: Baseline
    train_size: int


@dataclass(frozen=True)
class ParityInfo:
    """How closely the ONNX graph reproduces scikit-learn on the test images."""

    images: int
    label_agreement: float
    label_mismatches: int
    max_abs_probability_diff: float
    passed: bool
    runtime: str
    tolerance: float


@dataclass(frozen=True)
class NoveltySection:
    """The not-a-digit detector beside the model (training/calibrate.py fits it)."""

    file: str  # the per-class subspaces, .npz of float32 means [10, 784], components [10, k, 784]
    sha256: str
    threshold: float  # squared distance (pixels 0..1) to the nearest class subspace
    components_per_class: int
    score: str = ""
    fitted_on: str = ""
    max_aspect: float | None = None  # width / height of the ink's box; wider is no digit
    aspect: str | None = None
    #: whose subspace the distance is to: "nearest" (the nearest of the ten) or "predicted" (the
    #: digit the model predicts: an input far from what it is read as is no digit)
    subspace: str = "nearest"
    #: a logistic regression on the hidden layer, log distance and log margin (its arrays are in
    #: the same file); over this score is no digit. None: the subspace rule alone
    discriminator_threshold: float | None = None
    discriminator: str | None = None


@dataclass(frozen=True)
class RejectSection:
    """The reject option, fitted on the validation split: Chow's rule and not-a-digit."""

    rule: str
    target: Mapping[str, Any]  # the split and the reject rates aimed at
    temperature: float  # probabilities are scaled as softmax(logits / T) before the rule
    min_confidence: float  # the calibrated top probability under which a digit is rejected
    validation: Mapping[str, Any]  # what the rule did on the validation split
    novelty: NoveltySection


@dataclass(frozen=True)
class ReferenceHistogram:
    """Bin edges of one drift statistic and the reference share of each bin (one more share
    than edges; a value v is in bin i when edges[i-1] <= v < edges[i])."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]


@dataclass(frozen=True)
class DriftReferenceInfo:
    """What the training inputs looked like (service.model.drift): the service compares its
    live inputs with it. ``statistics`` maps each statistic's name to its histogram."""

    sample_size: int  # training images the input statistics were computed on
    prediction_sample_size: int  # test images of the predicted-digit and confidence histograms
    ink_threshold: float
    statistics: Mapping[str, ReferenceHistogram]


@dataclass(frozen=True)
class FeedbackInfo:
    """The feedback examples a run trained on (mnist-train --feedback) and its second test set."""

    source: str  # the database URL, without a password
    examples_available: int
    train_examples: int  # after the cap, before the weight
    train_corrected: int  # of them, answers people corrected
    weight: int
    cap: int
    holdout_share: float
    test_examples: int
    test_accuracy: float | None  # this model on the held-out feedback examples
    first: str | None  # ISO 8601 time of the oldest feedback used
    last: str | None


@dataclass(frozen=True)
class ModelCard:
    """card.json. ``name``, ``version``, ``sha256`` and ``size`` are set by the repository when
    it publishes (a card built by training says version 0 until then)."""

    name: str
    version: int
    sha256: str
    size: int  # bytes of model.onnx
    description: str
    framework: str
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    class_labels: tuple[int, ...]
    num_classes: int
    params: Mapping[str, Any]  # MLPClassifier keyword arguments, scikit-learn's names
    config: Mapping[str, Any]  # every training setting under its flag's name
    data: DataInfo
    metrics: Metrics
    training: TrainingInfo
    converged: bool
    loss_curve: tuple[float, ...]
    validation_curve: ValidationCurve
    history: tuple[EpochFigures, ...]
    baselines: Baselines
    parity: ParityInfo
    libraries: Mapping[str, str]
    command: str  # a mnist-train command that sets every knob
    invocation: str | None  # the command as typed
    created: str  # ISO 8601, UTC
    selftest: SelftestRef
    host: Mapping[str, str]
    report: Mapping[str, str] = field(default_factory=dict)  # report file stem -> relative path
    reject: RejectSection | None = None  # optional: versions calibrated for the reject option
    drift_reference: DriftReferenceInfo | None = None
    feedback: FeedbackInfo | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written as card.json (optional sections left out when None)."""
        document = _dump(self)
        assert isinstance(document, dict)
        return document

    @classmethod
    def from_json(cls, document: object) -> ModelCard:
        """The typed card of a parsed card.json; CardError names the first wrong field."""
        return load_section(cls, document)


_Section = typing.TypeVar("_Section")


def load_section(kind: type[_Section], document: object, path: str = "") -> _Section:
    """A JSON value as the card dataclass ``kind`` (a part of a card); CardError when wrong."""
    loaded = _load(kind, document, path)
    assert isinstance(loaded, kind)
    return loaded


def parse_card(text: str | bytes) -> ModelCard:
    """card.json text -> ModelCard; CardError when it is not JSON or a field is wrong."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CardError(f"not JSON: {exc}") from exc
    except RecursionError:  # a hostile file: arrays or objects nested thousands deep
        raise CardError("unreadable: JSON nested too deeply to read") from None
    return ModelCard.from_json(document)


def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if kind in names:
        return names[kind]
    if dataclasses.is_dataclass(kind):
        return "an object"
    origin = typing.get_origin(kind)
    if origin is tuple:
        return "a list"
    if origin in (dict, Mapping, collections.abc.Mapping):
        return "an object"
    return str(kind)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, tuple) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _load(kind: Any, value: object, path: str) -> Any:
    """``value`` (from json.loads) as ``kind``; CardError with the field path when it is not."""
    where = path or "card"
    if kind is Any:
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        (single,) = [option for option in options if option is not type(None)]
        return _load(single, value, path)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise CardError(f"{where}: expected an object, got {_short(value)}")
        values = {}
        hints = _hints(kind)  # type: ignore[arg-type]
        for item in dataclasses.fields(kind):
            child = f"{path}.{item.name}" if path else item.name
            if item.name in value:
                values[item.name] = _load(hints[item.name], value[item.name], child)
            elif (
                item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
            ):
                raise CardError(f"{child}: missing")
        try:
            return typing.cast(Any, kind)(**values)
        except (TypeError, ValueError) as exc:
            raise CardError(f"{where}: {exc}") from exc
    if origin is tuple:
        if not isinstance(value, list):
            raise CardError(f"{where}: expected a list, got {_short(value)}")
        (item_kind, _) = typing.get_args(kind)
        return tuple(_load(item_kind, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise CardError(f"{where}: expected an object, got {_short(value)}")
        (_, item_kind) = typing.get_args(kind)
        return {key: _load(item_kind, item, f"{where}.{key}") for key, item in value.items()}
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            return float(value)  # type: ignore[arg-type]
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CardError(f"{where}: expected {_type_name(kind)}, got {_short(value)}")
    return value


def _dump(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: _dump(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.default is None and getattr(value, item.name) is None)
        }
    if isinstance(value, tuple | list):
        return [_dump(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _dump(item) for key, item in value.items()}
    return value
