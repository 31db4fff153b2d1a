"""Live figures: what the recorder measures, and what a scrape computes from the store and windows.

Two kinds of series:

- written by each worker's recorder thread into the multiprocess files (so summed over workers):
  records written and dropped, the confidence of answers, rejections, and the drift windows' bin
  counts;
- computed when /metrics is scraped, from data every worker shares: feedback count, live
  accuracy and recall per version from the database (``FEEDBACK_WINDOW`` last records per
  version), and the PSI of every drift statistic from the windows of all workers together.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from service.errors import StoreUnavailable
from service.model.drift import CONFIDENCE_EDGES, STATISTICS, DriftReference
from service.observability.drift import (
    MIN_WINDOW,
    DriftFigures,
    DriftMonitor,
    ReferenceSource,
    drift_figures,
)
from service.observability.metrics import multiprocess_dir, observe_many, service_metrics
from service.store.database import PredictionStore, VersionFigures

log = logging.getLogger(__name__)

NAMESPACE = "mnist"
WINDOW_COUNTS = f"{NAMESPACE}_drift_window_counts"
WINDOW_INPUTS = f"{NAMESPACE}_drift_window_inputs"
#: a scrape reuses the database's figures for this long (several scrapers, one query)
CACHE_SECONDS = 1.0


_lock = threading.Lock()
_metrics: LiveMetrics | None = None


def live_metrics(drift: DriftMonitor | None = None) -> LiveMetrics:
    """The process's recorder metrics (created once, beside the service's), reporting drift to
    ``drift``."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = LiveMetrics.create(service_metrics().registry, None)
        return dataclasses.replace(_metrics, drift=drift)


@dataclass
class LiveMetrics:
    """The recorder's series (an implementation of service.store.recorder.RecorderMetrics)."""

    written: Counter
    dropped: Counter
    store_available: Gauge
    confidence: Histogram
    rejections: Counter
    window_counts: Gauge
    window_inputs: Gauge
    drift: DriftMonitor | None = None

    @classmethod
    def create(cls, registry: CollectorRegistry, drift: DriftMonitor | None) -> LiveMetrics:
        return cls(
            written=Counter(
                "store_records_written",
                "Prediction records written to the store.",
                namespace=NAMESPACE,
                registry=registry,
            ),
            dropped=Counter(
                "store_records_dropped",
                "Prediction records not written: queue full, or store unavailable.",
                ["reason"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            store_available=Gauge(
                "store_available",
                "1 while the worker's last write to the store succeeded (min over workers).",
                namespace=NAMESPACE,
                multiprocess_mode="livemin",
                registry=registry,
            ),
            confidence=Histogram(
                "prediction_confidence",
                "Probability of the answered digit, by model version.",
                ["version"],
                namespace=NAMESPACE,
                buckets=(*CONFIDENCE_EDGES, 1.0),
                registry=registry,
            ),
            rejections=Counter(
                "predictions_rejected",
                "Answers the reject option marked as not accepted, by model version.",
                ["version"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            window_counts=Gauge(
                "drift_window_counts",
                "Live inputs (pixels for intensity) per bin of each drift statistic in the "
                "worker's window; summed over workers.",
                ["version", "statistic", "bin"],
                namespace=NAMESPACE,
                multiprocess_mode="livesum",
                registry=registry,
            ),
            window_inputs=Gauge(
                "drift_window_inputs",
                "Live inputs in the drift window, summed over workers.",
                ["version"],
                namespace=NAMESPACE,
                multiprocess_mode="livesum",
                registry=registry,
            ),
            drift=drift,
        )

    def count_written(self, records: int) -> None:
        self.written.inc(records)

    def count_dropped(self, reason: str, records: int) -> None:
        self.dropped.labels(reason).inc(records)

    def set_store_available(self, available: bool) -> None:
        self.store_available.set(1 if available else 0)

    def observe_answers(
        self, versions: np.ndarray, confidences: np.ndarray, accepted: np.ndarray | None
    ) -> None:
        for version in np.unique(versions).tolist():
            chosen = versions == version
            observe_many(self.confidence.labels(str(version)), confidences[chosen])
            if accepted is not None:
                refused = int(np.count_nonzero(~accepted[chosen]))
                if refused:
                    self.rejections.labels(str(version)).inc(refused)

    def observe_drift(
        self,
        versions: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
        statistics: np.ndarray | None = None,
    ) -> None:
        if self.drift is None:
            return
        for version in self.drift.add(versions, images, labels, confidences, statistics):
            snapshot = self.drift.snapshot(version)
            if snapshot is None:
                continue
            filled, counts = snapshot
            label = str(version)
            self.window_inputs.labels(label).set(filled)
            for name, bins in counts.items():
                for index, value in enumerate(bins):
                    self.window_counts.labels(label, name, str(index)).set(value)


class LiveFigures:
    """Computes the scrape-time series: feedback figures from the store, PSI from the windows."""

    def __init__(
        self,
        store: PredictionStore | None,
        references: ReferenceSource,
        feedback_window: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.references = references
        self.feedback_window = feedback_window
        self.clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[int, VersionFigures] | None] = (-1e9, None)

    def feedback(self) -> dict[int, VersionFigures] | None:
        """Per version feedback figures (cached for a second); None when the store is off or
        does not answer."""
        if self.store is None:
            return None
        with self._lock:
            taken, figures = self._cached
            if self.clock() - taken < CACHE_SECONDS:
                return figures
            try:
                figures = self.store.feedback_figures(self.feedback_window)
            except StoreUnavailable as exc:
                log.debug("live feedback figures unavailable: %s", exc)
                figures = None
            self._cached = (self.clock(), figures)
            return figures

    def drift(self, families: Iterable[Metric]) -> dict[int, DriftFigures]:
        """PSI per version from the (merged) window gauges among ``families``."""
        return drift_from_families(families, self.references)

    def families(self, merged: Iterable[Metric]) -> list[Metric]:
        """The scrape-time metric families, given every family the scrape already holds."""
        out: list[Metric] = []
        figures = self.feedback()
        if self.store is not None:
            up = GaugeMetricFamily(
                f"{NAMESPACE}_store_up", "1 when the store answered this scrape's query."
            )
            up.add_metric([], 0 if figures is None else 1)
            out.append(up)
        if figures:
            out.extend(feedback_families(figures))
        out.extend(drift_families(self.drift(merged).values()))
        return out

    def version_json(self, version: int) -> dict[str, Any]:
        """The live figures of one version for ``/v2/models/mnist/versions/N/stats``: feedback
        (count, live accuracy, recall), its stored answers (digits, confidence, rejections) and
        drift (PSI per statistic); each is null when there is nothing to say."""
        figures = self.feedback()
        feedback = figures.get(version) if figures else None
        answers = None
        if self.store is not None:
            try:
                answers = self.store.prediction_figures(version, self.feedback_window * 10)
            except StoreUnavailable:
                answers = None
        drift = self.drift(current_families()).get(version)
        return {
            "feedback": None if feedback is None else feedback.to_json(),
            "answers": None if answers is None or not answers.window else answers.to_json(),
            "drift": None if drift is None else drift.to_json(),
        }


def current_families() -> list[Metric]:
    """Every worker's series as they are now (or this process's, without a shared folder)."""
    path = multiprocess_dir()
    if path is not None and getattr(values.ValueClass, "_multiprocess", False):
        return list(multiprocess.MultiProcessCollector(None, path=path).collect())
    return list(service_metrics().registry.collect())


def feedback_families(figures: Mapping[int, VersionFigures]) -> list[Metric]:
    """Feedback count, live accuracy and its window (all answers, and the accepted ones), and
    recall per digit, per version."""
    total = GaugeMetricFamily(
        f"{NAMESPACE}_feedback_records",
        "Feedback records in the store for answers of this model version.",
        labels=["version"],
    )
    accuracy = GaugeMetricFamily(
        f"{NAMESPACE}_live_accuracy",
        "Share of the version's last FEEDBACK_WINDOW feedback records that confirm its answer.",
        labels=["version"],
    )
    window = GaugeMetricFamily(
        f"{NAMESPACE}_live_accuracy_window",
        "Feedback records live accuracy is computed from.",
        labels=["version"],
    )
    accepted = GaugeMetricFamily(
        f"{NAMESPACE}_live_accuracy_accepted",
        "Live accuracy among the answers the reject option accepted (same window).",
        labels=["version"],
    )
    accepted_window = GaugeMetricFamily(
        f"{NAMESPACE}_live_accuracy_accepted_window",
        "Feedback records in the window whose answer the reject option accepted.",
        labels=["version"],
    )
    recall = GaugeMetricFamily(
        f"{NAMESPACE}_live_recall",
        "Per true digit (the label people gave): share the version answered right, same window.",
        labels=["version", "digit"],
    )
    for version, item in sorted(figures.items()):
        label = str(version)
        total.add_metric([label], item.feedback_total)
        window.add_metric([label], item.window)
        if item.accuracy is not None:
            accuracy.add_metric([label], item.accuracy)
        accepted_window.add_metric([label], item.accepted_window)
        if item.accepted_accuracy is not None:
            accepted.add_metric([label], item.accepted_accuracy)
        for digit, value in item.recall().items():
            recall.add_metric([label, str(digit)], value)
    return [total, accuracy, window, accepted, accepted_window, recall]


def drift_families(figures: Iterable[DriftFigures]) -> list[Metric]:
    """PSI per statistic and the drift score (mean PSI), per version."""
    psi = GaugeMetricFamily(
        f"{NAMESPACE}_drift_psi",
        "Population stability index of a live input statistic against the card's reference.",
        labels=["version", "statistic"],
    )
    score = GaugeMetricFamily(
        f"{NAMESPACE}_drift_score",
        "Mean PSI over every drift statistic (> 0.25: the inputs have shifted).",
        labels=["version"],
    )
    window = GaugeMetricFamily(
        f"{NAMESPACE}_drift_window",
        "Live inputs the PSI is computed from (all workers).",
        labels=["version"],
    )
    for item in sorted(figures, key=lambda f: f.version):
        label = str(item.version)
        window.add_metric([label], item.window)
        score.add_metric([label], item.score)
        for name, value in item.psi.items():
            psi.add_metric([label, name], value)
    return [psi, score, window]


def drift_from_families(
    families: Iterable[Metric], references: ReferenceSource, minimum: int = MIN_WINDOW
) -> dict[int, DriftFigures]:
    """DriftFigures per version from the window gauges among ``families`` (summed over workers
    already, or summed here when each worker's series come separately)."""
    inputs: dict[int, float] = {}
    counts: dict[int, dict[str, dict[int, float]]] = {}
    for family in families:
        if family.name == WINDOW_INPUTS:
            for sample in family.samples:
                version = _int(sample.labels.get("version"))
                if version is not None:
                    inputs[version] = inputs.get(version, 0.0) + sample.value
        elif family.name == WINDOW_COUNTS:
            for sample in family.samples:
                version = _int(sample.labels.get("version"))
                index = _int(sample.labels.get("bin"))
                name = sample.labels.get("statistic", "")
                if version is None or index is None or name not in STATISTICS:
                    continue
                bins = counts.setdefault(version, {}).setdefault(name, {})
                bins[index] = bins.get(index, 0.0) + sample.value
    out = {}
    for version, window in inputs.items():
        reference = references(version)
        if reference is None or version not in counts:
            continue
        per_statistic = {
            name: [bins.get(i, 0.0) for i in range(len(reference.histograms[name].shares))]
            for name, bins in counts[version].items()
        }
        figures = drift_figures(version, int(window), per_statistic, reference, minimum)
        if figures is not None:
            out[version] = figures
    return out


def card_references(read_card: Callable[[int], Mapping[str, Any] | None]) -> ReferenceSource:
    """A ReferenceSource reading each version's card once (None for a card without one)."""
    cache: dict[int, DriftReference | None] = {}
    lock = threading.Lock()

    def reference(version: int) -> DriftReference | None:
        with lock:
            if version not in cache:
                try:
                    card = read_card(version)
                except Exception:  # a vanished or unreadable version: no reference (yet)
                    log.debug("no card for version %s", version, exc_info=True)
                    return None
                cache[version] = None if card is None else DriftReference.from_card(card)
            return cache[version]

    return reference


def _int(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    return int(text)
