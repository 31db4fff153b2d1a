"""The prediction recorder: answered requests go into a bounded queue; a thread writes them.

The request path only appends a tuple to a deque (``record``, well under a microsecond). A thread
per worker wakes every ``flush_seconds``, takes everything queued, computes the input statistics
of the whole batch at once (numpy), feeds the live drift windows and answer metrics, and writes
the records in one transaction. Whatever happens to the database, a prediction is never slowed
or failed by it:

- the queue is bounded in images per worker; when it is full, records are dropped and counted;
- a write that fails (server down, read-only file) drops its records and counts them; the thread
  tries again after ``RETRY_SECONDS`` and keeps dropping (and counting) until a write succeeds;
- the first failure of an outage is logged once, and its end once with the count of the gap;
- from its first write on (the schema's migration done), the thread runs at a lower CPU
  priority (``writer_nice``, 10 by default, Linux only): when answering keeps
  every core busy, answers go first and the writer takes what CPU is left, so under sustained
  overload more records are dropped (and counted) instead of fewer requests being answered.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

import numpy as np

from service.errors import StoreUnavailable
from service.model.contract import N_PIXELS, PIXEL_MAX
from service.model.drift import image_statistics
from service.model.reject import Decision
from service.store.config import StoreConfig
from service.store.database import PredictionStore
from service.store.schema import KEPT_REQUESTED

log = logging.getLogger(__name__)

#: after a failed write, records are dropped without trying for this long
RETRY_SECONDS = 1.0
#: how often the retention rules run (each worker; they are idempotent)
PURGE_SECONDS = 60.0

DROP_QUEUE_FULL = "queue_full"
DROP_STORE_UNAVAILABLE = "store_unavailable"


class RecorderMetrics(Protocol):
    """What the recorder reports; service.observability.live implements it."""

    def count_written(self, records: int) -> None: ...

    def count_dropped(self, reason: str, records: int) -> None: ...

    def set_store_available(self, available: bool) -> None: ...

    def observe_answers(
        self, versions: np.ndarray, confidences: np.ndarray, accepted: np.ndarray | None
    ) -> None: ...

    def observe_drift(
        self,
        versions: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
        statistics: np.ndarray | None = None,
    ) -> None: ...


class Decider(Protocol):
    """The reject option of the version that answered (service.model.reject.RejectOption)."""

    def decide(
        self, images: np.ndarray, probabilities: np.ndarray, hidden: np.ndarray | None = None
    ) -> Decision: ...


class SilentRecorderMetrics:
    """Recorder metrics that record nothing (tools and tests that do not scrape)."""

    def count_written(self, records: int) -> None:
        return None

    def count_dropped(self, reason: str, records: int) -> None:
        return None

    def set_store_available(self, available: bool) -> None:
        return None

    def observe_answers(
        self, versions: np.ndarray, confidences: np.ndarray, accepted: np.ndarray | None
    ) -> None:
        return None

    def observe_drift(
        self,
        versions: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
        statistics: np.ndarray | None = None,
    ) -> None:
        return None


class _Answered(NamedTuple):  # a tuple: the cheapest record to build on the request path
    request_id: str
    route: str
    model_version: int
    answered_at: float  # time.time()
    images: np.ndarray  # float32 [n, 784] in [0, 1], as the model saw them
    labels: np.ndarray  # int64 [n]
    probabilities: np.ndarray  # float32 [n, 10]
    store_input: bool
    accepted: Sequence[bool] | np.ndarray | None  # bool [n]: the answer's decision, if made
    reject_reasons: Sequence[str | None] | None  # None, "low_confidence", "not_a_digit" each
    reject: Decider | None  # decides in the writer thread when the answer did not
    hidden: np.ndarray | None  # float32 [n, H]: the model's hidden layer, for ``reject``


class PredictionRecorder:
    """One worker's queue and writer thread (start it after the fork)."""

    def __init__(
        self,
        config: StoreConfig,
        store: PredictionStore | None,
        metrics: RecorderMetrics | None = None,
        clock: Callable[[], float] = time.time,
        *,
        autostart: bool = True,
    ) -> None:
        """``autostart``: the first record starts the writer thread (False: call ``flush``)."""
        self.config = config
        self.autostart = autostart
        self.store = store if config.enabled else None
        self.metrics = metrics or SilentRecorderMetrics()
        self.clock = clock
        self._queue: deque[_Answered] = deque()
        self._queued_images = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._migrated = False
        self._retry_at = 0.0
        self._outage_dropped = 0  # records dropped since the current outage began
        self._full_dropped = 0
        self._next_purge = 0.0
        self.written = 0
        self.dropped: dict[str, int] = {DROP_QUEUE_FULL: 0, DROP_STORE_UNAVAILABLE: 0}
        # a forked child has no writer thread: the next record starts its own
        forget = weakref.WeakMethod(self._forget_thread)
        os.register_at_fork(after_in_child=lambda: _call(forget))

    def _forget_thread(self) -> None:
        self._thread = None
        self._queue.clear()
        self._queued_images = 0
        self._lock = threading.Lock()

    # -- the request path ------------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        route: str,
        model_version: int,
        images: np.ndarray,
        labels: np.ndarray,
        probabilities: np.ndarray,
        *,
        store_input: bool = False,
        accepted: Sequence[bool] | np.ndarray | None = None,
        reject_reasons: Sequence[str | None] | None = None,
        reject: Decider | None = None,
        hidden: np.ndarray | None = None,
    ) -> None:
        """Queue one answered request (the arrays are kept, not copied: do not change them).

        ``accepted`` and ``reject_reasons`` are the reject option's decision as the answer gave
        it (service.model.reject.Decision); without them, ``reject`` (the answering version's
        option) decides in the writer thread, off the request path, with ``hidden`` (the
        model's hidden layer from the same run, Prediction.hidden) when the session gave it."""
        count = len(images)
        with self._lock:
            if self._queued_images + count > self.config.queue_images:
                self._full_dropped += count
                full = True
            else:
                self._queued_images += count
                full = False
        if full:
            self.metrics.count_dropped(DROP_QUEUE_FULL, count)
            self.dropped[DROP_QUEUE_FULL] += count
            return
        self._queue.append(
            _Answered(
                request_id,
                route,
                model_version,
                self.clock(),
                images,
                labels,
                probabilities,
                store_input or self.config.store_inputs,
                accepted,
                reject_reasons,
                reject,
                hidden,
            )
        )
        if self._thread is None and self.autostart:
            self.start()

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread of this process (again after a fork; idempotent)."""
        with self._lock:
            if self._thread is not None and self._pid == _getpid() and self._thread.is_alive():
                return
            self._pid = _getpid()
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="prediction-recorder", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
        self._thread = None

    def flush(self) -> None:
        """Process everything queued now, in the calling thread (tests, shutdown)."""
        self._process(self._take())

    def _run(self) -> None:
        lowered = False
        while not self._stopping.is_set():
            self._wake.wait(self.config.flush_seconds)
            self._wake.clear()
            try:
                self._process(self._take())
                self._maybe_purge()
            except Exception:  # a bug must not end the thread: log it and keep going
                log.exception("the prediction recorder failed; its batch is lost")
            # the schema's migration (the first write) runs at the answers' priority: a
            # /metrics scrape or POST /feedback in this worker may be waiting for it
            if not lowered and (self._migrated or self.store is None):
                lower_priority(self.config.writer_nice)
                lowered = True
        self._process(self._take())

    def _take(self) -> list[_Answered]:
        taken = []
        while self._queue:
            taken.append(self._queue.popleft())
        if taken:
            images = sum(len(item.images) for item in taken)  # not under the request path's lock
            with self._lock:
                self._queued_images -= images
                full, self._full_dropped = self._full_dropped, 0
            if full:
                log.warning("prediction store queue full: %d records dropped", full)
        return taken

    def _process(self, taken: list[_Answered]) -> None:
        if not taken:
            return
        taken = _decided_together(taken)
        sizes = [len(item.images) for item in taken]
        images = np.concatenate([item.images for item in taken]).astype(np.float32, copy=False)
        labels = np.concatenate([item.labels for item in taken]).astype(np.int64, copy=False)
        probabilities = np.concatenate([item.probabilities for item in taken])
        confidences = probabilities[np.arange(len(labels)), labels].astype(np.float64)
        versions = np.repeat(np.array([item.model_version for item in taken], np.int64), sizes)
        # an answer without a decision (none could be made) is not counted as rejected
        flags: list[bool] = []
        for item, size in zip(taken, sizes, strict=True):
            flags.extend([True] * size if item.accepted is None else item.accepted)
        accepted = np.array(flags, dtype=bool)
        statistics = image_statistics(images)  # once: for the drift windows and the rows
        self.metrics.observe_answers(versions, confidences, accepted)
        self.metrics.observe_drift(versions, images, labels, confidences, statistics)
        if self.store is None:
            return
        self._write(self._columns(taken, images, labels, confidences, statistics))

    def _columns(
        self,
        taken: list[_Answered],
        images: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
        statistics: np.ndarray,
    ) -> list[list[Any]]:
        """The batch's columns in ``PREDICTION_COLUMNS`` order, each built for the whole batch at
        once (numbers by numpy, a request's own values repeated per image); each input a slice
        of one uint8 buffer."""
        keep_for_feedback = self.config.input_retention_seconds > 0
        sizes = [len(item.images) for item in taken]
        # one image per request (single-image traffic): a request's value is its image's
        single = all(size == 1 for size in sizes)

        def per_image(values: list[Any]) -> list[Any]:
            if single:
                return values
            repeated: list[Any] = []
            for value, size in zip(values, sizes, strict=True):
                repeated += [value] * size
            return repeated

        request_ids = per_image([item.request_id for item in taken])
        items: list[int] = [0] * len(taken) if single else [i for n in sizes for i in range(n)]
        created = per_image([datetime.fromtimestamp(item.answered_at, UTC) for item in taken])
        versions = per_image([item.model_version for item in taken])
        routes = per_image([item.route for item in taken])
        accepted: list[bool | None] = []
        reasons: list[str | None] = []
        if single:
            accepted = [None if i.accepted is None else bool(i.accepted[0]) for i in taken]
            reasons = [None if i.reject_reasons is None else i.reject_reasons[0] for i in taken]
        else:
            for item, size in zip(taken, sizes, strict=True):
                if item.accepted is None:
                    accepted += [None] * size
                else:
                    accepted += map(bool, item.accepted)
                reasons += [None] * size if item.reject_reasons is None else item.reject_reasons
        kept = per_image([KEPT_REQUESTED if item.store_input else None for item in taken])
        keep = per_image([item.store_input or keep_for_feedback for item in taken])
        inputs: list[bytes | None] = [None] * len(keep)
        if any(keep):
            scaled = images * np.float32(PIXEL_MAX)
            pixels = np.rint(scaled, out=scaled).astype(np.uint8).tobytes()
            starts = range(0, len(pixels), N_PIXELS)
            if all(keep):
                inputs = [pixels[start : start + N_PIXELS] for start in starts]
            else:
                inputs = [
                    pixels[start : start + N_PIXELS] if kept_input else None
                    for start, kept_input in zip(starts, keep, strict=True)
                ]
        return [
            request_ids,
            items,
            created,
            versions,
            routes,
            labels.tolist(),
            confidences.tolist(),
            accepted,
            reasons,
            *statistics.T.tolist(),
            inputs,
            kept,
        ]

    def _write(self, columns: list[list[Any]]) -> None:
        assert self.store is not None
        count = len(columns[0])
        now = time.monotonic()
        if now < self._retry_at:
            self._drop(count)
            return
        try:
            self.store.write_prediction_columns(columns)  # the first write migrates the schema
            self._migrated = True
        except StoreUnavailable as exc:
            self._retry_at = now + RETRY_SECONDS
            if self._outage_dropped == 0:
                log.warning(
                    "prediction store unavailable (%s); dropping records until it answers", exc
                )
                self.metrics.set_store_available(False)
            self._drop(count)
            return
        if self._outage_dropped:
            log.warning(
                "prediction store answers again; %d records were dropped meanwhile",
                self._outage_dropped,
            )
            self._outage_dropped = 0
        self.metrics.set_store_available(True)
        self.metrics.count_written(count)
        self.written += count

    def _drop(self, count: int) -> None:
        self._outage_dropped += count
        self.dropped[DROP_STORE_UNAVAILABLE] += count
        self.metrics.count_dropped(DROP_STORE_UNAVAILABLE, count)

    def _maybe_purge(self) -> None:
        now = time.monotonic()
        if self.store is None or not self._migrated or now < self._next_purge:
            return
        if self._outage_dropped:
            return
        self._next_purge = now + PURGE_SECONDS
        self.purge()

    def purge(self) -> None:
        """Apply the retention rules now (StoreUnavailable is logged, not raised)."""
        if self.store is None:
            return
        config = self.config
        try:
            counts = self.store.purge(
                datetime.now(UTC),
                timedelta(seconds=config.input_retention_seconds),
                timedelta(days=config.retention_days),
                config.retention_rows,
            )
        except StoreUnavailable as exc:
            log.warning("prediction store retention not applied: %s", exc)
            return
        if counts.inputs_erased or counts.expired or counts.over_limit:
            log.info(
                "prediction store retention: %d inputs erased, %d expired and %d surplus "
                "records deleted",
                counts.inputs_erased,
                counts.expired,
                counts.over_limit,
            )


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def lower_priority(nice: int) -> None:
    """Give the calling thread (alone, not its process) the nice value ``nice`` (0-19) when it
    runs at a higher priority (setpriority(2) on the thread's id: Linux schedules each thread on
    its own). An absolute value: a thread already at ``nice`` or above keeps its own. Linux only
    (elsewhere a thread id is no process id: nothing is done); an OS that refuses is logged, not
    raised, and the writer then runs as it is."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except Exception as exc:  # the writer must not end over its priority
        log.warning("the prediction writer keeps its CPU priority: %s", exc)


def _getpid() -> int:
    return os.getpid()


def _decided_together(taken: list[_Answered]) -> list[_Answered]:
    """``taken`` with every reject decision made: the answers' own; the rest by one ``decide``
    call per answering version's option (and kind of arrays: dtypes, with or without the
    session's hidden layer) over all of its images in the flush, not one call per request
    (single-image requests: one call for the flush instead of one per image, whose numpy calls
    cost most of it). The option's decision of an image does not depend on the other images
    of its batch (tests/service/test_reject_decisions_exact.py), so the records are those of
    ``_decided``.
    A group that fails is decided request by request."""
    # stacked arrays keep their dtypes (float32 from the session): a float64 one among them
    # would change the others' arithmetic, so it goes in a group of its own
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, item in enumerate(taken):
        if item.accepted is None and item.reject is not None:
            layer = None if item.hidden is None else (item.hidden.dtype.str, item.hidden.shape[1:])
            kinds = (item.images.dtype.str, item.probabilities.dtype.str, layer)
            groups.setdefault((id(item.reject), *kinds), []).append(index)
    if not groups:
        return taken
    decided = list(taken)
    for indices in groups.values():
        items = [taken[index] for index in indices]
        try:
            images = np.concatenate([item.images for item in items]).astype(np.float32, copy=False)
            probabilities = np.concatenate([item.probabilities for item in items])
            hidden = (
                None
                if items[0].hidden is None
                else np.concatenate([item.hidden for item in items if item.hidden is not None])
            )
            reject = items[0].reject
            assert reject is not None
            decision = reject.decide(images, probabilities, hidden)
        except Exception:  # each request then on its own (and _decided logs its failure)
            for index in indices:
                decided[index] = _decided(taken[index])
            continue
        start = 0
        for index, item in zip(indices, items, strict=True):
            stop = start + len(item.images)
            decided[index] = item._replace(
                accepted=decision.accepted[start:stop], reject_reasons=decision.reasons[start:stop]
            )
            start = stop
    return decided


def _decided(item: _Answered) -> _Answered:
    """``item`` with its reject decision: as answered, or made now by its version's option."""
    if item.accepted is not None or item.reject is None:
        return item
    try:
        decision = item.reject.decide(
            item.images.astype(np.float32, copy=False), item.probabilities, item.hidden
        )
    except Exception:  # the record is still worth keeping without its decision
        log.exception("the reject decision of a recorded answer failed")
        return item
    return item._replace(accepted=decision.accepted, reject_reasons=decision.reasons)
