"""The Predictor on real onnxruntime: validation, self-test, pinning, labels, trials, and a hot
reload that converges on the repository's state (no retry loops, no stale versions)."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.config import ServiceConfig
from service.errors import InvalidInput, ModelUnavailable, NotFound
from service.model.contract import ModelCard
from service.model.predictor import ModelRejected, Predictor, check_card
from service.model.repository import (
    ModelRepository,
    ServingState,
)
from service.model.validation import validate_version
from tests.service.conftest import (
    MakePredictor,
    RecordingMetrics,
    committed_parts,
    follow_latest,
    publish_copy,
    renamed_input_model,
    selftest_digits,
    set_state,
)


def metrics_of(predictor: Predictor) -> RecordingMetrics:
    assert isinstance(predictor.metrics, RecordingMetrics)
    return predictor.metrics


def test_a_published_version_is_a_candidate_that_nothing_serves(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    assert ModelRepository(tmp_path).read_state() == ServingState(stable=1)
    predictor = make_predictor()
    assert predictor.load().version == 1
    assert predictor.predict(selftest_digits()[0]).model_version == 1
    with pytest.raises(NotFound, match="no version '2' loaded; version 1 is serving"):
        predictor.predict(selftest_digits()[0], version=2)


def test_serves_the_stable_version_and_predicts_the_selftest_digits(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    set_state(tmp_path, stable=2, history=(1,))
    predictor = make_predictor()
    loaded = predictor.load()
    assert (loaded.name, loaded.version) == ("mnist", 2)
    assert loaded.path == tmp_path / "mnist" / "2"
    assert predictor.loaded == loaded
    images, labels = selftest_digits()
    prediction = predictor.predict(images)
    assert prediction.labels.tolist() == labels
    assert prediction.probabilities.shape == (10, 10)
    assert prediction.probabilities.dtype == np.float32
    assert (prediction.model_name, prediction.model_version) == ("mnist", 2)
    recorded = metrics_of(predictor)
    assert recorded.model_info == [("mnist", 2, loaded.card.sha256)]
    (seconds, batch, predicted, version) = recorded.inferences[0]
    assert seconds > 0 and batch == 10 and predicted == labels and version == 2


def test_pinned_version_is_served_and_never_replaced(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    predictor = make_predictor(model_version=1)
    assert predictor.load().version == 1
    publish_copy(tmp_path)
    assert predictor.check_for_update() is None
    assert predictor.loaded.version == 1


def test_pinning_a_missing_version_refuses_to_start(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor(model_version=7)
    with pytest.raises(ModelUnavailable, match="no valid model") as refused:
        predictor.load()
    # never there, so not "gone": the reason says which versions the repository has
    reason = "version 7 is not in the model repository (versions: 1)"
    assert str(refused.value).endswith(reason), refused.value
    assert predictor.serving.reason.endswith(reason)
    assert "gone" not in predictor.serving.reason


def test_a_pinned_version_removed_after_it_served_is_gone(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    predictor = make_predictor(model_version=2)
    assert predictor.load().version == 2
    shutil.rmtree(tmp_path / "mnist" / "2")
    predictor.check_for_update()
    assert predictor.serving.stable is None
    assert predictor.serving.reason.endswith(
        "version 2: gone (removed from the model repository; versions: 1)"
    )


def test_an_empty_repository_is_not_ready_and_says_why(make_predictor: MakePredictor) -> None:
    predictor = make_predictor()
    with pytest.raises(ModelUnavailable, match="cannot read the model folder"):
        predictor.load()
    with pytest.raises(ModelUnavailable):
        _ = predictor.loaded
    with pytest.raises(ModelUnavailable):
        predictor.predict(np.zeros((1, 784), np.float32))


def test_a_corrupt_stable_version_falls_back_to_the_previous_stable(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    broken = publish_copy(tmp_path)
    broken.model_path.write_bytes(b"\x00" * 100)
    set_state(tmp_path, stable=2, history=(1,))
    predictor = make_predictor()
    assert predictor.load().version == 1
    assert metrics_of(predictor).reloads == ["failure"]


def test_only_invalid_versions_refuse_to_start_and_say_why(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    broken = publish_copy(tmp_path)
    broken.model_path.write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable, match=r"version 1: .*sha256"):
        make_predictor().load()


REJECTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "input renamed in the graph": ({"onnx_bytes": "renamed"}, "input is 'pixels'"),
    "not an onnx file": ({"onnx_bytes": b"garbage bytes"}, "not a valid ONNX protobuf"),
    "card input shape": ({"card_changes": "image-shaped input"}, "input shape"),
    "card class labels": ({"card_changes": {"class_labels": list("abcdefghij")}}, "class_labels"),
    "card without selftest": (
        {"card_changes": {"selftest": None}},
        "card.json: selftest: expected an object, got null",
    ),
    "selftest labels differ": ({"selftest": "shifted"}, "self-test labels"),
    "selftest probabilities differ": ({"selftest": "blurred"}, "self-test probabilities"),
}


def _variant(kind: str) -> dict[str, Any]:
    options, _ = REJECTIONS[kind]
    options = dict(options)
    _, card, selftest = committed_parts()
    if options.get("onnx_bytes") == "renamed":
        options["onnx_bytes"] = renamed_input_model()
    if options.get("selftest") == "shifted":
        shifted = copy.deepcopy(selftest)
        shifted["expected_labels"] = [(label + 1) % 10 for label in selftest["expected_labels"]]
        options["selftest"] = shifted
    if options.get("selftest") == "blurred":
        blurred = copy.deepcopy(selftest)
        blurred["expected_probabilities"] = [[0.1] * 10 for _ in selftest["images"]]
        options["selftest"] = blurred
    if options.get("card_changes") == "image-shaped input":
        options["card_changes"] = {"input": {**card["input"], "shape": [-1, 28, 28]}}
    return options


@pytest.mark.parametrize("kind", sorted(REJECTIONS))
def test_a_version_that_breaks_the_contract_is_rejected(kind: str, tmp_path: Path) -> None:
    version = publish_copy(tmp_path, **_variant(kind))
    with pytest.raises(ModelRejected, match=REJECTIONS[kind][1]):
        validate_version(version, "mnist", ServiceConfig(model_dir=tmp_path))


def _typed(card: dict[str, Any]) -> ModelCard:
    """The typed card of ``card`` (committed_parts leaves out what publishing fills in)."""
    return ModelCard.from_json({**card, "name": "mnist", "version": 1, "sha256": "", "size": 0})


def test_check_card_names_the_field() -> None:
    _, card, _ = committed_parts()
    card["input"] = {
        **card["input"],
        "pixel_scale": {"raw_min": 0, "raw_max": 1, "model_min": 0.0, "model_max": 1.0},
    }
    with pytest.raises(ModelRejected, match="pixel_scale"):
        check_card(_typed(card))
    _, card, _ = committed_parts()
    card["outputs"] = [o for o in card["outputs"] if o["name"] != "probabilities"]
    with pytest.raises(ModelRejected, match="'probabilities'"):
        check_card(_typed(card))


def test_a_promoted_version_is_swapped_in(tmp_path: Path, make_predictor: MakePredictor) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    assert predictor.check_for_update() is None
    publish_copy(tmp_path)
    assert predictor.check_for_update() is None  # a candidate
    set_state(tmp_path, stable=2, history=(1,))
    swapped = predictor.check_for_update()
    assert swapped is not None and swapped.version == 2
    assert predictor.predict(selftest_digits()[0]).model_version == 2
    assert metrics_of(predictor).reloads == ["success"]


def test_a_broken_version_is_not_served_nor_retried_until_its_files_change(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    broken = publish_copy(tmp_path)
    good_bytes = broken.model_path.read_bytes()
    broken.model_path.write_bytes(good_bytes[:-10])  # truncated: size and sha256 disagree
    set_state(tmp_path, stable=2, history=(1,))
    assert predictor.check_for_update() is None
    assert predictor.check_for_update() is None
    assert predictor.loaded.version == 1
    assert metrics_of(predictor).reloads == ["failure"]  # counted once, not once per poll
    broken.model_path.write_bytes(good_bytes)  # repaired: new size, new mtime
    swapped = predictor.check_for_update()
    assert swapped is not None and swapped.version == 2
    assert metrics_of(predictor).reloads == ["failure", "success"]


def test_without_labels_a_broken_newest_does_not_hide_a_valid_version_between(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    follow_latest(tmp_path)
    predictor = make_predictor()
    predictor.load()
    publish_copy(tmp_path)
    publish_copy(tmp_path, onnx_bytes=renamed_input_model())
    follow_latest(tmp_path)  # publishing wrote labels.json (stable 1); without it, latest wins
    swapped = predictor.check_for_update()
    assert swapped is not None and swapped.version == 2


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 784), np.float64), "float32"),
        (np.zeros((1, 28, 28), np.float32), r"\[N, 784\]"),
        (np.zeros((0, 784), np.float32), "batch size"),
        (np.zeros((5, 784), np.float32), "batch size"),
    ],
)
def test_predict_refuses_inputs_outside_the_contract(
    tmp_path: Path, make_predictor: MakePredictor, images: np.ndarray, message: str
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor(max_batch=4)
    predictor.load()
    with pytest.raises(InvalidInput, match=message):
        predictor.predict(images)


def _wait_for_version(predictor: Predictor, version: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predictor.loaded.version == version:
            return True
        time.sleep(0.02)
    return False


def test_the_watcher_thread_polls_and_picks_up_a_new_version(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor(poll_seconds=0.05)
    predictor.load()
    predictor.start_watching(handle_sighup=False)
    predictor.start_watching(handle_sighup=False)  # idempotent within one process
    publish_copy(tmp_path)
    set_state(tmp_path, stable=2, history=(1,))
    assert _wait_for_version(predictor, 2)


def test_sighup_wakes_the_watcher_before_the_next_poll(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor(poll_seconds=3600)
    predictor.load()
    previous = signal.getsignal(signal.SIGHUP)
    try:
        predictor.start_watching(handle_sighup=True)
        publish_copy(tmp_path)
        set_state(tmp_path, stable=2, history=(1,))
        time.sleep(0.1)
        assert predictor.loaded.version == 1  # the hour-long poll has not come round
        os.kill(os.getpid(), signal.SIGHUP)
        assert _wait_for_version(predictor, 2, seconds=30.0)  # well before the hour's poll
    finally:
        signal.signal(signal.SIGHUP, previous)
