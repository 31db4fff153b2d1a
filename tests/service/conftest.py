"""What the service tests share: the committed model, ways to publish it, and stand-ins.

Fixtures: ``model_repo`` (a fresh repository holding the committed model as version 1),
``make_predictor`` (Predictors on tmp_path with RecordingMetrics, stopped after the test).
Plain values and functions the tests also need while collecting (parametrize tables) are
here too; test modules import them from this module, never from each other.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from jsonschema import Draft202012Validator
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from service.config import ServiceConfig
from service.model.predictor import Predictor
from service.model.repository import ModelRepository, ModelVersion, ServingState, sha256_bytes
from tests.conftest import COMMITTED_MODELS

SOURCE = COMMITTED_MODELS / "mnist" / "1"
#: card fields that ModelRepository.publish fills in
FILLED_BY_PUBLISH = ("name", "version", "sha256", "size")


def committed_parts() -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """The committed model's ONNX bytes, card (without publish's fields) and self-test."""
    card = json.loads((SOURCE / "card.json").read_text())
    for key in FILLED_BY_PUBLISH:
        card.pop(key, None)
    selftest = json.loads((SOURCE / "selftest.json").read_text())
    return (SOURCE / "model.onnx").read_bytes(), card, selftest


#: one MNIST test digit per class, raw uint8 [10, 784], and the committed model's answers
DIGITS = np.asarray(committed_parts()[2]["images"], dtype=np.uint8)
EXPECTED: list[int] = committed_parts()[2]["expected_labels"]


def publish_copy(
    root: Path,
    *,
    onnx_bytes: bytes | None = None,
    card_changes: dict[str, Any] | None = None,
    selftest: dict[str, Any] | None = None,
) -> ModelVersion:
    """Publish the committed model (or a variant of it) into the repository at ``root``."""
    model, card, default_selftest = committed_parts()
    selftest_bytes = json.dumps(selftest or default_selftest).encode()
    card["selftest"] = {
        "file": "selftest.json",
        "sha256": sha256_bytes(selftest_bytes),
        "count": len((selftest or default_selftest)["images"]),
    }
    card.update(card_changes or {})
    files = {"selftest.json": selftest_bytes}
    if card.get("reject"):  # the reject option's subspaces travel with the card that names them
        name = card["reject"]["novelty"]["file"]
        files[name] = (SOURCE / name).read_bytes()
    return ModelRepository(root).publish(model if onnx_bytes is None else onnx_bytes, card, files)


def renamed_input_model(new_name: str = "pixels") -> bytes:
    """The committed model with its input renamed: a valid ONNX file that breaks the contract."""
    model = onnx.load_from_string((SOURCE / "model.onnx").read_bytes())
    old = model.graph.input[0].name
    model.graph.input[0].name = new_name
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new_name
    return bytes(model.SerializeToString())


def set_state(root: Path, **state: Any) -> None:
    """Write the repository's labels (stable, trial, history) as mnist-models would."""
    with ModelRepository(root).changing_state() as change:
        change.state = ServingState(**state)


def follow_latest(root: Path) -> None:
    """Remove labels.json and write a ``latest`` policy: the highest valid version serves."""
    repository = ModelRepository(root)
    repository.labels_path.unlink(missing_ok=True)
    text = repository.config_path.read_text()
    head, _, _ = text.partition("version_policy")
    repository.config_path.write_text(head + "version_policy: { latest: { num_versions: 1 } }\n")


def selftest_digits() -> tuple[np.ndarray, list[int]]:
    """The self-test digits as float32 [10, 784] in [0, 1], and the committed model's labels."""
    _, _, selftest = committed_parts()
    images = np.asarray(selftest["images"], dtype=np.float32) / np.float32(255.0)
    return images, selftest["expected_labels"]


def external_data_model(outside: Path) -> bytes:
    """The committed model with intercepts1 moved to ``outside``/weights.bin (the case's model)."""
    model = onnx.load_from_string((SOURCE / "model.onnx").read_bytes())
    init = next(i for i in model.graph.initializer if i.name == "intercepts1")
    values = onnx.numpy_helper.to_array(init).astype("<f4")
    (outside / "weights.bin").write_bytes(values.tobytes())
    init.ClearField("raw_data")
    init.ClearField("float_data")
    entries = (("location", "weights.bin"), ("offset", "0"), ("length", str(values.nbytes)))
    for key, value in entries:
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    init.data_location = onnx.TensorProto.EXTERNAL
    return bytes(model.SerializeToString())


def png_bytes(pixels: np.ndarray) -> bytes:
    """A 56x56 PNG of an MNIST digit drawn dark on light, as a scan would show it."""
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels.reshape(28, 28)).resize((56, 56)).save(buffer, format="PNG")
    return buffer.getvalue()


def schema_validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for components/schemas/<name>, resolving refs inside the document."""
    resource: Resource[Any] = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openapi", resource)
    return Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry
    )


def json_of(response: TestResponse) -> Any:
    """A test response's JSON body (werkzeug types it as Any | None)."""
    return response.get_json()


class RecordingMetrics:
    """A metrics collaborator for the Predictor that remembers every call."""

    def __init__(self) -> None:
        self.inferences: list[tuple[float, int, list[int], int]] = []
        self.reloads: list[str] = []
        self.model_info: list[tuple[str, int, str]] = []
        self.trial_runs: list[tuple[int, int]] = []
        self.comparisons: list[tuple[str, int, int, list[int], list[int]]] = []
        self.dropped = 0

    def observe_inference(
        self, seconds: float, batch_size: int, labels: np.ndarray, model_version: int
    ) -> None:
        self.inferences.append((seconds, batch_size, list(labels), model_version))

    def count_reload(self, outcome: str) -> None:
        self.reloads.append(outcome)

    def set_model_info(self, name: str, version: int, sha256: str) -> None:
        self.model_info.append((name, version, sha256))

    def observe_trial_inference(self, seconds: float, batch_size: int, model_version: int) -> None:
        self.trial_runs.append((batch_size, model_version))

    def observe_comparison(
        self,
        mode: str,
        stable_version: int,
        trial_version: int,
        stable_labels: np.ndarray,
        trial_labels: np.ndarray,
    ) -> None:
        self.comparisons.append(
            (mode, stable_version, trial_version, list(stable_labels), list(trial_labels))
        )

    def count_trial_dropped(self, mode: str, count: int) -> None:
        self.dropped += count


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """A model repository in tmp_path holding the committed model as version 1."""
    publish_copy(tmp_path)
    return tmp_path


MakePredictor = Callable[..., Predictor]


@pytest.fixture
def make_predictor(tmp_path: Path) -> Iterator[MakePredictor]:
    """Build Predictors on tmp_path with recording metrics; stops their watcher threads after."""
    made: list[Predictor] = []

    def make(**config: Any) -> Predictor:
        settings = ServiceConfig(model_dir=tmp_path, **config)
        predictor = Predictor(settings, metrics=RecordingMetrics())
        made.append(predictor)
        return predictor

    yield make
    for predictor in made:
        predictor.stop_watching()
