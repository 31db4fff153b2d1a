"""Shadow and canary comparisons, run off the request path on a bounded queue.

A shadow version runs a sample of the requests the stable version answered; in a canary trial the
stable version runs the requests the canary answered. Either way the second run happens on this
module's thread, after the answer is computed, and only its agreement with the answer is recorded
(agreement, a stable digit x trial digit disagreement matrix, and its latency). When the queue is
full a comparison is dropped and counted: the answer is never slowed down or failed by a trial.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.model import contract
from service.model.repository import TrialMode
from service.model.validation import ValidatedModel

log = logging.getLogger(__name__)

#: images waiting at most (float32 [N, 784]: 25 MB); beyond it comparisons are dropped (and
#: counted), never waited for
DEFAULT_QUEUE_IMAGES = 8192
#: images run together in one onnxruntime call at most when comparisons queue up
DEFAULT_RUN_IMAGES = 1024
#: seconds between two runs of the queued comparisons (how late a comparison's figures may be)
DEFAULT_DRAIN_SECONDS = 0.05


class TrialMetrics(Protocol):
    """What the comparisons report; service.observability.metrics implements it."""

    def observe_trial_inference(self, seconds: float, batch_size: int, model_version: int) -> None:
        """One onnxruntime run done for a comparison, not for an answer."""

    def observe_comparison(
        self,
        mode: str,
        stable_version: int,
        trial_version: int,
        stable_labels: np.ndarray,
        trial_labels: np.ndarray,
    ) -> None:
        """Digits of both versions for the same images (int64 [N] each)."""

    def count_trial_dropped(self, mode: str, count: int) -> None:
        """Comparisons dropped because the queue was full."""


@dataclass(frozen=True)
class Comparison:
    """One answered request to run again on the other version of a trial."""

    mode: TrialMode
    stable_version: int
    trial_version: int
    images: np.ndarray = field(repr=False)  # float32 [N, 784], not modified after the answer
    answered_labels: np.ndarray = field(repr=False)  # int64 [N], from the version that answered
    #: True when the trial version answered (canary), so the stable version runs now
    answered_by_trial: bool
    other: ValidatedModel = field(repr=False)


class TrialRunner:
    """A per-process thread that runs queued comparisons in batches.

    The request path only counts images under a lock no one holds for long and appends to a
    deque (it wakes no thread); the thread wakes every ``drain_seconds`` and runs whatever queued
    since, so at any request rate a trial costs one onnxruntime run and one metrics update per
    batch rather than per request, and the request threads never hand the GIL to a thread woken
    for each comparison."""

    def __init__(
        self,
        metrics: TrialMetrics,
        queue_images: int = DEFAULT_QUEUE_IMAGES,
        run_images: int = DEFAULT_RUN_IMAGES,
        drain_seconds: float = DEFAULT_DRAIN_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.queue_images = queue_images
        self.run_images = run_images
        self.drain_seconds = drain_seconds
        self._queue: deque[Comparison] = deque()
        self._queued_images = 0
        self._busy = False  # the thread holds comparisons it took from the queue
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, comparison: Comparison) -> None:
        """Queue a comparison without ever blocking; a full queue drops it (counted)."""
        if self._pid != os.getpid():
            self._start()
        count = len(comparison.images)
        with self._lock:
            full = self._queued_images + count > self.queue_images
            if not full:
                self._queued_images += count
        if full:
            self.metrics.count_trial_dropped(comparison.mode, 1)
            return
        self._queue.append(comparison)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every queued comparison ran (tests and tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._queue and not self._busy:
                return True
            time.sleep(0.01)
        return False

    def _start(self) -> None:
        with self._lock:
            pid = os.getpid()
            if self._pid == pid:
                return
            # after a fork the parent's thread does not exist here: a fresh queue and thread
            self._queue = deque()
            self._queued_images = 0
            self._busy = False
            thread = threading.Thread(target=self._loop, name="model-trials", daemon=True)
            self._pid = pid
            thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.drain_seconds)
            while self._queue:
                self._busy = True  # before taking, so wait_idle never sees an empty gap
                jobs = [self._queue.popleft()]
                taken = len(jobs[0].images)
                while self._queue and taken + len(self._queue[0].images) <= self.run_images:
                    jobs.append(self._queue.popleft())
                    taken += len(jobs[-1].images)
                with self._lock:
                    self._queued_images -= taken
                try:
                    self._run(jobs)
                except Exception:  # a trial must never take anything down; the answers were sent
                    log.exception("a trial comparison failed")
                finally:
                    self._busy = False

    def _run(self, jobs: list[Comparison]) -> None:
        groups: dict[int, list[Comparison]] = {}
        for job in jobs:
            groups.setdefault(id(job.other.session), []).append(job)
        for group in groups.values():
            other = group[0].other
            images = np.concatenate([job.images for job in group])
            started = time.perf_counter()
            (labels,) = other.session.run([contract.OUTPUT_LABEL], {contract.INPUT_NAME: images})
            seconds = time.perf_counter() - started
            self.metrics.observe_trial_inference(seconds, len(images), other.model.version)
            labels = np.asarray(labels, dtype=np.int64)
            by_key: dict[tuple[str, int, int], tuple[list[np.ndarray], list[np.ndarray]]] = {}
            start = 0
            for job in group:
                count = len(job.images)
                rerun = labels[start : start + count]
                start += count
                stable, trial = (
                    (rerun, job.answered_labels)
                    if job.answered_by_trial
                    else (job.answered_labels, rerun)
                )
                key = (job.mode, job.stable_version, job.trial_version)
                stables, trials = by_key.setdefault(key, ([], []))
                stables.append(stable)
                trials.append(trial)
            for (mode, stable_version, trial_version), (stables, trials) in by_key.items():
                self.metrics.observe_comparison(
                    mode,
                    stable_version,
                    trial_version,
                    np.concatenate(stables),
                    np.concatenate(trials),
                )
