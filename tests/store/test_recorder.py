"""The queue writer: batches off the request path, drops and counts when the database fails,
resumes by itself; on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from service.model.contract import N_PIXELS
from service.model.drift import image_statistics
from service.store import recorder as recorder_module
from service.store.config import MAX_NICE, StoreConfig, sqlalchemy_url
from service.store.database import STATISTIC_COLUMNS, FeedbackItem, PredictionStore
from service.store.recorder import DROP_QUEUE_FULL, DROP_STORE_UNAVAILABLE, PredictionRecorder
from service.store.schema import KEPT_REQUESTED
from tests.conftest import REPO_ROOT


def answered(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = (rng.integers(0, 256, (count, N_PIXELS)) / 255).astype(np.float32)
    labels = rng.integers(0, 10, count)
    probabilities = rng.dirichlet(np.ones(10), count).astype(np.float32)
    return images, labels, probabilities


@pytest.fixture
def store(database_url: str) -> Iterator[PredictionStore]:
    opened = PredictionStore.open(sqlalchemy_url(database_url))
    yield opened
    opened.close()


def test_records_reach_the_database_with_statistics_and_inputs(store: PredictionStore) -> None:
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(3)
    recorder.record("batch", "/predict", 2, images, labels, probabilities)
    recorder.record("asked", "/v2", 2, images[:1], labels[:1], probabilities[:1], store_input=True)
    recorder.flush()
    rows = store.predictions_of("batch")
    assert [r["item"] for r in rows] == [0, 1, 2]
    assert [r["digit"] for r in rows] == labels.tolist()
    assert rows[1]["confidence"] == pytest.approx(float(probabilities[1, labels[1]]))
    expected = image_statistics(images[2:3])[0]
    assert [rows[2][c] for c in STATISTIC_COLUMNS] == pytest.approx(expected.tolist())
    pixels = np.frombuffer(rows[0]["input"], dtype=np.uint8)
    assert np.array_equal(pixels, np.rint(images[0] * 255).astype(np.uint8))
    assert rows[0]["input_kept"] is None  # kept only for the retention window
    assert store.predictions_of("asked")[0]["input_kept"] == KEPT_REQUESTED
    assert recorder.written == 4


@pytest.mark.parametrize(
    ("shape", "sizes"),
    [("single images", [1, 1, 1, 1]), ("mixed batches", [3, 1, 0, 2, 4]), ("empty", [1, 0, 2])],
)
def test_every_column_of_every_row_is_what_its_request_gave(
    store: PredictionStore, shape: str, sizes: list[int]
) -> None:
    """Row by row and column by column, from the requests as queued: one image each (the
    single-image traffic) or batches of several sizes, decisions given or not, inputs asked."""
    moments = iter(1_764_500_000.0 + 0.25 * n for n in range(100))
    recorder = PredictionRecorder(
        StoreConfig(), store, clock=lambda: next(moments), autostart=False
    )
    requests = []
    for number, size in enumerate(sizes):
        images, labels, probabilities = answered(size, seed=number)
        flags = np.arange(size) % 3 != 1
        decided = number % 2 == 0
        accepted = flags if decided else None
        reasons = [None if a else "low_confidence" for a in flags] if decided else None
        request = (f"{shape}-{number}", f"/route{number % 2}", 1 + number % 3, size)
        recorder.record(
            *request[:3],
            images,
            labels,
            probabilities,
            store_input=number == 1,
            accepted=accepted,
            reject_reasons=reasons,
        )
        requests.append((request, images, labels, probabilities, accepted, reasons))
    recorder.flush()
    assert recorder.written == sum(sizes)
    for number, (request, images, labels, probabilities, accepted, reasons) in enumerate(requests):
        request_id, route, version, size = request
        rows = store.predictions_of(request_id)
        assert len(rows) == size
        statistics = image_statistics(images)
        for item, row in enumerate(rows):
            assert row["item"] == item and row["route"] == route
            assert row["model_version"] == version
            created = row["created_at"]
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            assert created == datetime.fromtimestamp(1_764_500_000.0 + 0.25 * number, UTC)
            assert row["digit"] == labels[item]
            assert row["confidence"] == float(probabilities[item, labels[item]])
            assert row["accepted"] == (None if accepted is None else bool(accepted[item]))
            assert row["reject_reason"] == (None if reasons is None else reasons[item])
            assert [row[c] for c in STATISTIC_COLUMNS] == statistics[item].tolist()
            pixels = np.rint(images[item] * 255).astype(np.uint8).tobytes()
            assert bytes(row["input"]) == pixels
            assert row["input_kept"] == (KEPT_REQUESTED if number == 1 else None)


def test_without_a_retention_window_only_asked_inputs_are_stored(store: PredictionStore) -> None:
    recorder = PredictionRecorder(StoreConfig(input_retention_seconds=0), store, autostart=False)
    images, labels, probabilities = answered(2)
    recorder.record("plain", "/predict", 1, images[:1], labels[:1], probabilities[:1])
    recorder.record(
        "asked", "/predict", 1, images[1:], labels[1:], probabilities[1:], store_input=True
    )
    recorder.flush()
    assert store.predictions_of("plain")[0]["input"] is None
    assert store.predictions_of("asked")[0]["input"] is not None


def test_the_store_turned_off_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "off.sqlite3"
    store = PredictionStore.open(f"sqlite:///{path}")
    recorder = PredictionRecorder(StoreConfig(enabled=False), store, autostart=False)
    recorder.record("x", "/predict", 1, *answered(1))
    recorder.flush()
    assert recorder.store is None and recorder.written == 0 and not path.exists()


def test_a_full_queue_drops_and_counts_without_waiting(store: PredictionStore) -> None:
    recorder = PredictionRecorder(StoreConfig(queue_images=5), store, autostart=False)
    images, labels, probabilities = answered(4)
    started = time.perf_counter()
    for number in range(3):
        recorder.record(f"r{number}", "/predict", 1, images[:2], labels[:2], probabilities[:2])
    # no writer thread runs (autostart off), so nothing would ever make room: waiting is the
    # fault; the limit leaves a loaded CI machine room for a scheduling pause or two
    assert time.perf_counter() - started < 0.5
    assert recorder.dropped[DROP_QUEUE_FULL] == 2  # the third request (2 images) did not fit
    recorder.flush()
    assert recorder.written == 4 and store.predictions_of("r2") == []


def make_read_only(path: Path) -> None:
    # root ignores file modes: the immutable attribute stops root too
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o644)


def test_a_read_only_sqlite_file_drops_counts_and_resumes(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setattr(recorder_module, "RETRY_SECONDS", 0.0)
    path = tmp_path / "store.sqlite3"
    store = PredictionStore.open(f"sqlite:///{path}")
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(1)
    recorder.record("before", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    make_read_only(path)
    try:
        for number in range(3):
            recorder.record(f"gap{number}", "/predict", 1, images, labels, probabilities)
            recorder.flush()
        assert recorder.dropped[DROP_STORE_UNAVAILABLE] == 3
    finally:
        make_writable(path)
    recorder.record("after", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    assert [len(store.predictions_of(r)) for r in ("before", "gap0", "after")] == [1, 0, 1]
    outage_lines = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(outage_lines) == 1  # logged once per outage
    assert any("3 records were dropped" in r.getMessage() for r in caplog.records)


def test_a_stopped_postgresql_drops_counts_and_resumes(
    postgres_server: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(recorder_module, "RETRY_SECONDS", 0.0)
    store = PredictionStore.open(sqlalchemy_url(postgres_server.create_database()))
    recorder = PredictionRecorder(StoreConfig(flush_seconds=0.05), store)
    images, labels, probabilities = answered(1)
    recorder.record("before", "/predict", 1, images, labels, probabilities)
    deadline = time.monotonic() + 30
    while recorder.written < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    postgres_server.stop()
    try:
        slowest = 0.0
        for number in range(50):
            started = time.perf_counter()
            recorder.record(f"gap{number}", "/predict", 1, images, labels, probabilities)
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.01)
        assert slowest < 1.0  # never the database's 2 s connect timeout (a shared machine)
        deadline = time.monotonic() + 30
        while recorder.dropped[DROP_STORE_UNAVAILABLE] < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert recorder.dropped[DROP_STORE_UNAVAILABLE] == 50
    finally:
        postgres_server.start()
    recorder.record("after", "/predict", 1, images, labels, probabilities)
    deadline = time.monotonic() + 30
    while not store.predictions_of("after") and time.monotonic() < deadline:
        time.sleep(0.1)
    recorder.stop()
    assert len(store.predictions_of("after")) == 1 and store.predictions_of("gap7") == []
    store.close()


def test_the_reject_decision_is_recorded_as_answered_or_made_by_the_writer(
    store: PredictionStore,
) -> None:
    from service.model.reject import RejectOption

    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(3)
    probabilities = probabilities.copy()
    # /predict hands over the decision its answer gave
    recorder.record(
        "given",
        "/predict",
        1,
        images,
        labels,
        probabilities,
        accepted=[True, False, False],
        reject_reasons=[None, "low_confidence", "not_a_digit"],
    )
    probabilities[0] = np.eye(10, dtype=np.float32)[labels[0]]  # one sure answer
    # V2 without the decision outputs: the version's option decides in the writer thread
    option = RejectOption(min_confidence=0.5)
    recorder.record("later", "/v2", 1, images, labels, probabilities, reject=option)
    recorder.flush()
    given = store.predictions_of("given")
    assert [(r["accepted"], r["reject_reason"]) for r in given] == [
        (True, None),
        (False, "low_confidence"),
        (False, "not_a_digit"),
    ]
    expected = option.decide(images, probabilities)
    later = store.predictions_of("later")
    assert [r["accepted"] for r in later] == expected.accepted
    assert [r["reject_reason"] for r in later] == expected.reasons
    assert set(expected.accepted) == {True, False}  # the case tests both outcomes


class CountingDecider:
    """The committed version's real reject option, counting its ``decide`` calls' batch sizes."""

    def __init__(self, option: Any) -> None:
        self.option = option
        self.calls: list[int] = []

    def decide(self, images: np.ndarray, probabilities: np.ndarray, hidden: Any = None) -> Any:
        self.calls.append(len(images))
        return self.option.decide(images, probabilities, hidden)


def test_undecided_answers_of_a_flush_are_decided_together_as_one_by_one(tmp_path: Path) -> None:
    from service.app import PREDICTOR_KEY, create_app
    from service.config import ServiceConfig
    from tests.conftest import COMMITTED_MODELS
    from tests.service.conftest import DIGITS

    app = create_app(ServiceConfig(model_dir=COMMITTED_MODELS, store=StoreConfig(enabled=False)))
    predictor = app.extensions[PREDICTOR_KEY]
    store = PredictionStore.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    noise = np.random.default_rng(3).random((8, N_PIXELS), dtype=np.float32)
    digits = (DIGITS[:9] / 255.0).astype(np.float32)
    requests = [digits[i : i + 1] for i in range(6)] + [noise[i : i + 1] for i in range(6)]
    requests.append(np.concatenate([digits[6:9], noise[6:8]]))  # a batch among single images
    counting = None
    expected: dict[str, tuple[list[bool], list[str | None]]] = {}
    for number, images in enumerate(requests):
        prediction = predictor.predict(images)
        counting = counting or CountingDecider(prediction.reject)
        # the last two without the session's hidden layer: a group of their own
        hidden = prediction.hidden if number < len(requests) - 2 else None
        one = prediction.reject.decide(images, prediction.probabilities, hidden)
        expected[f"r{number}"] = (one.accepted, one.reasons)
        recorder.record(
            f"r{number}",
            "/v2",
            prediction.model_version,
            images,
            prediction.labels,
            prediction.probabilities,
            reject=counting,
            hidden=hidden,
        )
    recorder.flush()
    assert counting is not None and counting.calls == [11, 6]  # one call per group, not 13
    for request_id, (accepted, reasons) in expected.items():
        rows = store.predictions_of(request_id)
        assert [r["accepted"] for r in rows] == accepted, request_id
        assert [r["reject_reason"] for r in rows] == reasons, request_id
    outcomes = {reason for _, reasons in expected.values() for reason in reasons}
    assert None in outcomes and "not_a_digit" in outcomes  # the case tests both
    store.close()


def test_arrays_of_other_kinds_are_decided_apart_as_one_by_one(
    store: PredictionStore,
) -> None:
    from service.model.reject import RejectOption

    option = CountingDecider(RejectOption(min_confidence=0.5))
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(4)
    probabilities = probabilities.copy()
    probabilities[0] = np.eye(10, dtype=np.float32)[labels[0]]  # one sure answer
    requests = {  # request id: (images, probabilities, hidden layer width)
        "a": (slice(0, 2), np.float32, 5),
        "b": (slice(2, 4), np.float32, 7),  # another width: not stacked with "a"
        "c": (slice(0, 1), np.float64, 5),  # float64 would change the others' arithmetic
        "d": (slice(2, 3), np.float32, 5),  # goes with "a"
    }
    for request_id, (part, dtype, width) in requests.items():
        count = part.stop - part.start
        recorder.record(
            request_id, "/v2", 1, images[part], labels[part], probabilities[part].astype(dtype),
            reject=option, hidden=np.zeros((count, width), dtype=np.float32),
        )  # fmt: skip
    recorder.flush()
    assert option.calls == [3, 2, 1]  # "a" with "d", then "b", then "c"
    for request_id, (part, dtype, _) in requests.items():
        decision = option.option.decide(images[part], probabilities[part].astype(dtype))
        assert [r["accepted"] for r in store.predictions_of(request_id)] == decision.accepted
    assert [r["accepted"] for r in store.predictions_of("a")] == [True, False]


# -- SQLite: the writer thread keeps its connection open between flushes --------------------------


def sqlite_store(tmp_path: Path) -> tuple[PredictionStore, Path]:
    path = tmp_path / "store.sqlite3"
    return PredictionStore.open(f"sqlite:///{path}"), path


def test_the_sqlite_writer_opens_one_connection_for_many_flushes(tmp_path: Path) -> None:
    store, _ = sqlite_store(tmp_path)
    assert store._writer_engine is not None
    opened: list[int] = []
    sa.event.listen(store._writer_engine, "connect", lambda *_: opened.append(1))
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(2)
    for number in range(5):
        recorder.record(f"r{number}", "/predict", 1, images, labels, probabilities)
        recorder.flush()
    assert recorder.written == 10 and len(store.predictions_of("r4")) == 2
    assert len(opened) == 1  # a connection per flush closed and checkpointed the WAL each time
    store.close()


def test_a_deleted_sqlite_file_is_seen_at_the_next_write(tmp_path: Path) -> None:
    store, path = sqlite_store(tmp_path)
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(1)
    recorder.record("before", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)
    recorder.record("gone", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    # not written into the deleted file through a connection kept open: a fresh file has no table
    assert recorder.written == 1 and recorder.dropped[DROP_STORE_UNAVAILABLE] == 1
    store.close()


#: ``mnist-store delete ID`` in another process, timed from after its imports (seconds on stderr)
TIMED_DELETE = """
import sys, time
from service.store.cli import main
started = time.monotonic()
code = main(["delete", sys.argv[1]])
print(f"{time.monotonic() - started:.3f}", file=sys.stderr)
sys.exit(code)
"""


def test_an_idle_writer_connection_blocks_no_other_process(tmp_path: Path) -> None:
    store, path = sqlite_store(tmp_path)
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(2)
    recorder.record("first", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    # another process deletes (a write transaction), then checkpoints the WAL to its end:
    # a checkpoint that is not busy means no connection holds a read snapshot
    settings = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "STORE_PATH": str(path)}
    settings.pop("DATABASE_URL", None)
    deleted = subprocess.run(
        [sys.executable, "-c", TIMED_DELETE, "first"],
        capture_output=True,
        text=True,
        env=settings,
        timeout=60,
    )
    assert deleted.returncode == 0, deleted.stderr
    # the delete itself, not the interpreter's start and imports (seconds on a loaded machine)
    assert float(deleted.stderr.split()[-1]) < 4.5  # never the 5 s busy timeout
    with sqlite3.connect(path, timeout=0.5) as other:
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    # and the writer goes on after them, as does feedback on this process's other engine
    recorder.record("second", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    assert recorder.written == 4 and store.predictions_of("first") == []
    assert [o.correct for o in store.add_feedback([FeedbackItem("second", int(labels[0]))])] == [
        True
    ]
    store.close()


def test_the_sqlite_writer_waits_out_a_short_lock_then_writes(tmp_path: Path) -> None:
    store, path = sqlite_store(tmp_path)
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(1)
    recorder.record("before", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")  # the write lock, as another worker's transaction holds it
    release = threading.Timer(0.3, lambda: locker.execute("COMMIT"))
    release.start()
    recorder.record("during", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    release.join()
    locker.close()
    assert recorder.written == 2 and recorder.dropped[DROP_STORE_UNAVAILABLE] == 0
    assert len(store.predictions_of("during")) == 1
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_writes_through_its_own_sqlite_connection(tmp_path: Path) -> None:
    store, _ = sqlite_store(tmp_path)
    recorder = PredictionRecorder(StoreConfig(), store, autostart=False)
    images, labels, probabilities = answered(1)
    recorder.record("parent", "/predict", 1, images, labels, probabilities)
    recorder.flush()  # the parent's connection is now open, in the pool
    assert store._writer_engine is not None
    opened_by: list[int] = []
    sa.event.listen(store._writer_engine, "connect", lambda *_: opened_by.append(os.getpid()))
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports by its exit status
        code = 1
        try:
            recorder.record("child", "/predict", 1, images, labels, probabilities)
            recorder.flush()
            written = recorder.written == 2 and store.predictions_of("child")
            # SQLite connections must not cross a fork: the child opened its own
            code = 0 if written and opened_by == [os.getpid()] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    recorder.record("parent-again", "/predict", 1, images, labels, probabilities)
    recorder.flush()
    assert recorder.written == 2 and len(store.predictions_of("parent-again")) == 1
    assert store.predictions_of("child") != []
    store.close()


def test_lower_priority_changes_the_calling_thread_alone_and_never_raises(
    caplog: Any, monkeypatch: Any
) -> None:
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if own > MAX_NICE - 3:
        pytest.skip(f"pytest runs at nice {own}: no room below it to check")
    seen: dict[str, int] = {}

    def in_a_thread() -> None:
        seen["before"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        recorder_module.lower_priority(seen["before"] + 3)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        recorder_module.lower_priority(seen["before"])  # never back up: it could not
        seen["again"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert seen["before"] == own  # a new thread starts at its creator's value
    assert seen["after"] == own + 3 == seen["again"]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own

    def refuse(*_: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    recorder_module.lower_priority(MAX_NICE)
    assert "keeps its CPU priority" in caplog.text and "not permitted" in caplog.text
    caplog.clear()
    monkeypatch.undo()
    recorder_module.lower_priority(2.5)  # type: ignore[arg-type]  # a wrong type: logged too
    assert "keeps its CPU priority" in caplog.text
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own


def test_the_writer_migrates_at_full_priority_then_lowers_itself(tmp_path: Path) -> None:
    """The first write (the schema's migration, which a scrape or POST /feedback may wait for)
    runs at the creator's nice value; the thread lowers itself after it."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if own > MAX_NICE - 5:
        pytest.skip(f"pytest runs at nice {own}: no room below it to check")
    store = PredictionStore.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    seen: list[int] = []
    write = store.write_prediction_columns

    def noting_priority(columns: Any) -> int:
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return write(columns)

    store.write_prediction_columns = noting_priority  # type: ignore[method-assign]
    recorder = PredictionRecorder(StoreConfig(writer_nice=own + 5, flush_seconds=0.02), store)
    images, labels, probabilities = answered(1)
    try:
        for number in range(2):
            recorder.record(f"r{number}", "/predict", 1, images, labels, probabilities)
            deadline = time.monotonic() + 30
            while recorder.written <= number and time.monotonic() < deadline:
                time.sleep(0.01)
        assert recorder._thread is not None
        writer = recorder._thread.native_id
        assert writer is not None
        assert seen == [own, own + 5]
        assert os.getpriority(os.PRIO_PROCESS, writer) == own + 5
    finally:
        recorder.stop()
        store.close()
