"""Hot reload converges on the repository's state, whatever happened before (real onnxruntime)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from service.config import ServiceConfig
from service.errors import ModelUnavailable
from service.model.repository import ModelRepository, ServingState, Trial, sha256_bytes
from service.model.validation import (
    ModelRejected,
    check_self_contained,
    create_session,
    validate_version,
)
from tests.service.conftest import (
    SOURCE,
    RecordingMetrics,
    committed_parts,
    external_data_model,
    follow_latest,
    publish_copy,
    selftest_digits,
    set_state,
)


def metrics_of(predictor: Any) -> RecordingMetrics:
    assert isinstance(predictor.metrics, RecordingMetrics)
    return predictor.metrics


def test_a_version_rejected_for_a_missing_file_is_served_once_the_file_is_added(
    tmp_path: Path, make_predictor: Any
) -> None:
    """rel-rejected-never-retried, in process: selftest.json arrives after the folder."""
    publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    second = publish_copy(tmp_path)
    selftest = (second.path / "selftest.json").read_bytes()
    (second.path / "selftest.json").unlink()
    set_state(tmp_path, stable=2, history=(1,))
    assert predictor.check_for_update() is None
    assert predictor.loaded.version == 1
    assert metrics_of(predictor).reloads == ["failure"]
    predictor.check_for_update()  # unchanged: neither retried nor counted again
    assert metrics_of(predictor).reloads == ["failure"]
    (second.path / "selftest.json").write_bytes(selftest)
    swapped = predictor.check_for_update()
    assert swapped is not None and swapped.version == 2


def test_sighup_re_examines_a_version_whose_files_look_unchanged(
    tmp_path: Path, make_predictor: Any
) -> None:
    """A byte fixed in place with the old size and mtime: only a forced look (SIGHUP) sees it."""
    publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    second = publish_copy(tmp_path)
    good = second.model_path.read_bytes()
    second.model_path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    stat = second.model_path.stat()
    set_state(tmp_path, stable=2, history=(1,))
    assert predictor.check_for_update() is None
    with second.model_path.open("r+b") as handle:  # repaired in place: same inode and size
        handle.write(good)
    os.utime(second.model_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert predictor.check_for_update() is None  # looks unchanged
    predictor.watcher.converge(force=True)  # what SIGHUP does
    assert predictor.loaded.version == 2


def test_a_deleted_version_stops_being_served(tmp_path: Path, make_predictor: Any) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    follow_latest(tmp_path)
    predictor = make_predictor()
    assert predictor.load().version == 2
    shutil.rmtree(tmp_path / "mnist" / "2")
    predictor.check_for_update()
    assert predictor.loaded.version == 1
    assert sorted(predictor.serving.by_version) == [1]


def test_a_deleted_trial_version_ends_the_trial(tmp_path: Path, make_predictor: Any) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    set_state(tmp_path, stable=1, trial=Trial("shadow", 2, 1.0))
    predictor = make_predictor()
    predictor.load()
    assert predictor.serving.trial == Trial("shadow", 2, 1.0)
    shutil.rmtree(tmp_path / "mnist" / "2")
    predictor.check_for_update()
    assert predictor.serving.trial is None
    assert sorted(predictor.serving.by_version) == [1]


def test_a_repository_unreadable_at_boot_is_retried_and_served_later(
    tmp_path: Path, make_predictor: Any
) -> None:
    root = tmp_path / "later"
    predictor = make_predictor()
    predictor.repository = ModelRepository(root)  # not there yet
    predictor.watcher.repository = predictor.repository
    with pytest.raises(ModelUnavailable, match="cannot read the model"):
        predictor.load()
    publish_copy(root)
    predictor.check_for_update()
    assert predictor.loaded.version == 1


def test_a_repository_that_disappears_keeps_the_loaded_model_serving(
    tmp_path: Path, make_predictor: Any
) -> None:
    publish_copy(tmp_path / "models")
    predictor = make_predictor()
    predictor.repository = predictor.watcher.repository = ModelRepository(tmp_path / "models")
    predictor.load()
    (tmp_path / "models").rename(tmp_path / "gone")
    assert predictor.watcher.converge() is None
    assert predictor.predict(selftest_digits()[0]).model_version == 1
    (tmp_path / "gone").rename(tmp_path / "models")
    assert predictor.watcher.converge() is not None


def test_unload_stops_answering_and_load_brings_it_back(
    tmp_path: Path, make_predictor: Any
) -> None:
    publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    set_state(tmp_path, stable=1, loaded=False)
    predictor.check_for_update()
    with pytest.raises(ModelUnavailable, match="unloaded"):
        predictor.predict(selftest_digits()[0])
    set_state(tmp_path, stable=1)
    predictor.check_for_update()
    assert predictor.predict(selftest_digits()[0]).model_version == 1


# -- refused before any session: external data, size ------------------------------------------


class CountingSessions:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, onnx_bytes: bytes, settings: Any) -> Any:
        self.calls += 1
        return create_session(onnx_bytes, settings)


def test_external_data_is_refused_before_a_session_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # onnxruntime would find weights.bin here
    version = publish_copy(tmp_path / "models", onnx_bytes=external_data_model(tmp_path))
    sessions = CountingSessions()
    config = ServiceConfig(model_dir=tmp_path / "models")
    with pytest.raises(ModelRejected, match="external file"):
        validate_version(version, "mnist", config, sessions)
    assert sessions.calls == 0


def test_a_constant_node_with_external_data_is_refused_too() -> None:
    model = onnx.load_from_string((SOURCE / "model.onnx").read_bytes())
    tensor = numpy_helper.from_array(np.zeros(3, np.float32), "c")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    model.graph.node.append(onnx.helper.make_node("Constant", [], ["c_out"], value=tensor))
    with pytest.raises(ModelRejected, match="external file"):
        check_self_contained(model.SerializeToString())
    check_self_contained((SOURCE / "model.onnx").read_bytes())  # the committed model passes


def test_a_card_declaring_a_model_over_the_limit_is_refused_before_reading_it(
    tmp_path: Path,
) -> None:
    version = publish_copy(tmp_path)
    sessions = CountingSessions()
    size = version.model_path.stat().st_size
    config = ServiceConfig(model_dir=tmp_path, max_model_bytes=size - 1)
    with pytest.raises(ModelRejected, match=r"the card says model.onnx has \d+ bytes, over"):
        validate_version(version, "mnist", config, sessions)
    assert sessions.calls == 0


def test_a_file_larger_than_its_card_and_the_limit_is_refused_before_reading_it(
    tmp_path: Path,
) -> None:
    version = publish_copy(tmp_path)
    with version.model_path.open("ab") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper, nothing read
    config = ServiceConfig(model_dir=tmp_path, max_model_bytes=10 * 1024 * 1024)
    with pytest.raises(ModelRejected, match="52428800 bytes, over MAX_MODEL_BYTES"):
        validate_version(version, "mnist", config, CountingSessions())


# -- trials -------------------------------------------------------------------------------------


def _trial_predictor(tmp_path: Path, trial: Trial, draw: float) -> Any:
    from service.model.predictor import Predictor

    publish_copy(tmp_path)
    publish_copy(tmp_path)
    set_state(tmp_path, stable=1, trial=trial)
    predictor = Predictor(
        ServiceConfig(model_dir=tmp_path), metrics=RecordingMetrics(), choose=lambda: draw
    )
    predictor.load()
    return predictor


@pytest.mark.parametrize(("draw", "answered_by"), [(0.1, 2), (0.3, 1)])
def test_a_canary_answers_its_share_and_stable_re_runs_it_after(
    tmp_path: Path, draw: float, answered_by: int
) -> None:
    predictor = _trial_predictor(tmp_path, Trial("canary", 2, 0.2), draw)
    images, labels = selftest_digits()
    assert predictor.predict(images).model_version == answered_by
    assert predictor.trials.wait_idle()
    recorded = metrics_of(predictor)
    if answered_by == 2:
        assert recorded.comparisons == [("canary", 1, 2, labels, labels)]
        assert recorded.trial_runs == [(10, 1)]
    else:
        assert recorded.comparisons == []


def test_a_shadow_runs_after_stable_answered(tmp_path: Path) -> None:
    predictor = _trial_predictor(tmp_path, Trial("shadow", 2, 0.5), 0.0)
    images, labels = selftest_digits()
    assert predictor.predict(images).model_version == 1
    assert predictor.predict(images, version=2).model_version == 2  # a /versions/2 request
    assert predictor.trials.wait_idle()
    recorded = metrics_of(predictor)
    assert recorded.comparisons == [("shadow", 1, 2, labels, labels)]  # the versioned one: none
    assert recorded.trial_runs == [(10, 2)]


def test_comparisons_queued_together_run_in_one_onnxruntime_call(tmp_path: Path) -> None:
    """The request path wakes no thread: what queued between two drains runs as one batch, and
    a run never exceeds run_images."""
    from service.model.trials import TrialRunner

    predictor = _trial_predictor(tmp_path, Trial("shadow", 2, 1.0), 0.0)
    predictor.trials = TrialRunner(predictor.metrics, run_images=40, drain_seconds=0.5)
    images, labels = selftest_digits()
    for _ in range(12):
        assert predictor.predict(images).model_version == 1
    assert predictor.trials.wait_idle()
    recorded = metrics_of(predictor)
    assert sum(size for size, _ in recorded.trial_runs) == 12 * len(images)
    assert all(size <= 40 for size, _ in recorded.trial_runs)
    assert len(recorded.trial_runs) < 12  # batched, not one run per request
    stables = [int(d) for _, _, _, stable, _ in recorded.comparisons for d in stable]
    assert stables == [int(d) for d in labels] * 12  # in order, none lost or repeated


def test_a_full_trial_queue_drops_comparisons_and_never_blocks(tmp_path: Path) -> None:
    from service.model.trials import TrialRunner

    predictor = _trial_predictor(tmp_path, Trial("shadow", 2, 1.0), 0.0)
    runner = TrialRunner(predictor.metrics, queue_images=10)  # one selftest batch
    runner._pid = os.getpid()  # no thread: nothing drains the queue
    predictor.trials = runner
    images, _ = selftest_digits()
    for _ in range(3):
        assert predictor.predict(images).model_version == 1
    assert metrics_of(predictor).dropped == 2


def test_labels_json_round_trips_and_refuses_nonsense(tmp_path: Path) -> None:
    state = ServingState(stable=3, trial=Trial("canary", 4, 0.2), history=(1, 2))
    assert ServingState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.to_json()["trial"] == {"mode": "canary", "version": 4, "percent": 20.0}
    from service.model.repository import RepositoryError

    bad_labels: list[object] = [
        {"stable": 0},
        {"stable": 1, "trial": {"mode": "x", "version": 2}},
        [],
    ]
    for bad in bad_labels:
        with pytest.raises(RepositoryError):
            ServingState.from_json(bad)
    _, card, _ = committed_parts()
    assert sha256_bytes(b"") != card.get("sha256")


def test_a_loaded_version_damaged_on_disk_keeps_serving_its_validated_copy(
    tmp_path: Path, make_predictor: Any
) -> None:
    """A failed publish leaves the service answering: the session in memory is still good."""
    version = publish_copy(tmp_path)
    predictor = make_predictor()
    predictor.load()
    good = version.model_path.read_bytes()
    version.model_path.write_bytes(good + b"xx")  # what `printf xx >> model.onnx` does
    predictor.check_for_update()
    assert predictor.predict(selftest_digits()[0]).model_version == 1
    assert 1 in predictor.watcher.rejections()
    assert metrics_of(predictor).reloads == ["failure"]
    predictor.check_for_update()  # unchanged since: neither retried nor counted again
    assert metrics_of(predictor).reloads == ["failure"]
    assert predictor.loaded.version == 1
    version.model_path.write_bytes(good)  # repaired: the rejection is gone
    predictor.check_for_update()
    assert predictor.watcher.rejections() == {}
    assert predictor.loaded.version == 1
    set_state(tmp_path, stable=1, loaded=False)  # a deliberate unload still stops it
    predictor.check_for_update()
    with pytest.raises(ModelUnavailable, match="unloaded"):
        predictor.predict(selftest_digits()[0])


def test_a_damaged_loaded_version_that_is_then_deleted_stops_being_served(
    tmp_path: Path, make_predictor: Any
) -> None:
    publish_copy(tmp_path)
    second = publish_copy(tmp_path)
    follow_latest(tmp_path)
    predictor = make_predictor()
    assert predictor.load().version == 2
    second.model_path.write_bytes(second.model_path.read_bytes() + b"xx")
    predictor.check_for_update()
    assert predictor.loaded.version == 2
    shutil.rmtree(second.path)
    predictor.check_for_update()
    assert predictor.loaded.version == 1
