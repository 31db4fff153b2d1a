"""Prometheus metrics for the service, correct across gunicorn workers (no web framework here).

With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it for every worker) each worker writes its
samples to mmap files in that folder and /metrics merges all of them, so any worker answers for the
whole server. Without it (a Flask test client, one process) the metrics live in this process only.
The metric objects are created on first use, never at import time, because prometheus_client picks
its storage when a metric is created.

Metrics never take a request down: a sample that cannot be written (a full or vanished folder,
a failed mmap) is dropped, counted in ``mnist_metrics_write_failures_total`` and logged once per
process, and the caller carries on (``never_fails``); the files themselves are grown so that a
full disk is an error, not a SIGBUS (service.observability.metric_files).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder

from service.model.contract import MAX_BATCH_SIZE, N_CLASSES
from service.observability import metric_files

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NAMESPACE = "mnist"

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

ReloadOutcome = Literal["success", "failure"]

# Whole requests take milliseconds to a few seconds (a batch of 1024 PNGs); one onnxruntime call
# on this model takes tens of microseconds for one image up to tens of milliseconds for a batch.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
PREPROCESSING_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.0)


def batch_buckets(max_batch: int = MAX_BATCH_SIZE) -> tuple[float, ...]:
    """Powers of two from 1 up to the largest batch the service accepts."""
    buckets = [1.0]
    while buckets[-1] < max_batch:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


def multiprocess_dir(environ: Mapping[str, str] | None = None) -> str | None:
    """The folder shared by the workers, or None in single-process mode."""
    environ = os.environ if environ is None else environ
    return environ.get(MULTIPROC_ENV) or None


@dataclass
class ServiceMetrics:
    """Every metric the service exports, created together in one registry."""

    registry: CollectorRegistry
    requests: Counter
    request_latency: Histogram
    inference_latency: Histogram
    preprocessing_latency: Histogram
    batch_size: Histogram
    predictions: Counter
    model_info: Gauge
    model_version: Gauge
    reloads: Counter
    in_flight: Gauge
    capacity: Gauge
    inferences: Counter
    last_inference: Gauge
    comparisons: Counter
    disagreements: Counter
    trial_dropped: Counter
    info_labels: tuple[str, str, str] | None = field(default=None)
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def child(self, metric: Counter | Histogram | Gauge, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: label sets are few (routes, statuses, versions),
        and prometheus_client's own lookup costs microseconds on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    @classmethod
    def create(cls, multiprocess_mode: bool) -> ServiceMetrics:
        """Build the metrics; in multiprocess mode the per-worker gauges are 'liveall' or 'livesum'
        (the time of a version's last run: 'max', kept after its worker is gone)."""
        registry = CollectorRegistry()
        if not multiprocess_mode:
            # Process figures only make sense per process; multiprocess mode cannot merge them.
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
        return cls(
            registry=registry,
            requests=Counter(
                "http_requests",
                "HTTP requests answered, by route template, status and model version.",
                ["route", "status", "version"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            request_latency=Histogram(
                "http_request_duration_seconds",
                "Time from the request reaching the app to its answer.",
                ["route", "status"],
                namespace=NAMESPACE,
                buckets=REQUEST_BUCKETS,
                registry=registry,
            ),
            inference_latency=Histogram(
                "inference_duration_seconds",
                "Time of one onnxruntime run, by model version.",
                ["version"],
                namespace=NAMESPACE,
                buckets=INFERENCE_BUCKETS,
                registry=registry,
            ),
            preprocessing_latency=Histogram(
                "preprocessing_duration_seconds",
                "Time to turn the images of one request into model input.",
                namespace=NAMESPACE,
                buckets=PREPROCESSING_BUCKETS,
                registry=registry,
            ),
            batch_size=Histogram(
                "batch_size",
                "Images per onnxruntime run.",
                namespace=NAMESPACE,
                buckets=batch_buckets(),
                registry=registry,
            ),
            predictions=Counter(
                "predictions",
                "Predicted digits, by digit and model version.",
                ["digit", "version"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            # liveall: one series per live worker (a pid label), so a rollout shows which worker
            # serves which version, and a dead worker's series go away with mark_worker_dead.
            model_info=Gauge(
                "model_info",
                "1 for the model version a worker serves (0 for one it served before).",
                ["name", "version", "sha256"],
                namespace=NAMESPACE,
                multiprocess_mode="liveall",
                registry=registry,
            ),
            model_version=Gauge(
                "model_loaded_version",
                "The model version a worker serves; min() and max() over workers show a rollout.",
                namespace=NAMESPACE,
                multiprocess_mode="liveall",
                registry=registry,
            ),
            reloads=Counter(
                "model_reloads",
                "Attempts to load a newly published model version, by outcome.",
                ["outcome"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            # livesum: the server's total over its live workers; in_flight / capacity is the
            # saturation an autoscaler can target (deploy/prometheus: mnist:saturation:ratio)
            in_flight=Gauge(
                "http_requests_in_flight",
                "Requests being answered right now (entered the app, not yet answered).",
                namespace=NAMESPACE,
                multiprocess_mode="livesum",
                registry=registry,
            ),
            capacity=Gauge(
                "http_request_capacity",
                "Requests the server can answer at once (worker threads).",
                namespace=NAMESPACE,
                multiprocess_mode="livesum",
                registry=registry,
            ),
            inferences=Counter(
                "inferences",
                "Images run by each model version, by role: answer, or trial (a shadow run, or "
                "the stable version re-running a canary's answer).",
                ["version", "role"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            # max over the workers, dead ones included: the last run the server ever made
            last_inference=Gauge(
                "last_inference_timestamp_seconds",
                "When each model version last ran (answer or trial), in seconds since the epoch.",
                ["version"],
                namespace=NAMESPACE,
                multiprocess_mode="max",
                registry=registry,
            ),
            comparisons=Counter(
                "trial_comparisons",
                "Images run by both the stable and the trial version, by whether they agreed.",
                ["mode", "stable_version", "trial_version", "outcome"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            disagreements=Counter(
                "trial_disagreements",
                "Images on which the stable and the trial version disagree, by both digits.",
                ["mode", "stable_version", "trial_version", "stable_digit", "trial_digit"],
                namespace=NAMESPACE,
                registry=registry,
            ),
            trial_dropped=Counter(
                "trial_dropped",
                "Comparisons dropped because the trial queue was full (the answers were sent).",
                ["mode"],
                namespace=NAMESPACE,
                registry=registry,
            ),
        )


@dataclass(eq=False)  # a collector is registered by identity
class WriteFailures:
    """Samples this process could not record, and whether that was logged yet."""

    count: int = 0
    logged: bool = False

    def record(self, exc: BaseException) -> None:
        """Count one failure; the first one in a process is logged with its reason."""
        self.count += 1
        if not self.logged:
            self.logged = True
            log.error(
                "writing metrics failed (%s: %s); requests are still answered, samples are "
                "dropped and counted in mnist_metrics_write_failures_total (logged once per "
                "process)",
                type(exc).__name__,
                exc,
            )

    def collect(self) -> Iterable[CounterMetricFamily]:
        """The count as a Prometheus counter of this process (prometheus_client collector)."""
        family = CounterMetricFamily(
            f"{NAMESPACE}_metrics_write_failures",
            "Samples the answering worker could not record (full or missing metrics folder).",
            labels=["pid"],
        )
        family.add_metric([str(os.getpid())], self.count)
        yield family


write_failures = WriteFailures()


def never_fails(func: Callable[P, R]) -> Callable[P, R | None]:
    """Run ``func``; any error it raises is counted and logged once, and None returned."""

    @functools.wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # metrics must never fail a request, whatever broke
            write_failures.record(exc)
            return None

    return guarded


_lock = threading.Lock()
_metrics: ServiceMetrics | None = None


def service_metrics() -> ServiceMetrics:
    """The process's metrics, created on first use in the mode the environment asks for."""
    global _metrics
    created = _metrics
    if created is not None:  # the per-request path: no lock once the metrics exist
        return created
    with _lock:
        if _metrics is None:
            multiprocess_mode = multiprocess_dir() is not None
            if multiprocess_mode:
                metric_files.install()
                # every metric created from now on writes to the shared files (also when
                # prometheus_client chose in-memory values at import, before the variable was
                # set), through the sample class whose writes a request can batch
                values.ValueClass = metric_files.MultiProcessSample
            try:
                _metrics = ServiceMetrics.create(multiprocess_mode)
            except Exception as exc:
                if not multiprocess_mode:
                    raise
                # the folder is missing or full: this process keeps its figures in memory
                write_failures.record(exc)
                values.ValueClass = values.MutexValue
                _metrics = ServiceMetrics.create(multiprocess_mode=False)
        return _metrics


@never_fails
def observe_inference(
    seconds: float, batch_size: int, labels: Iterable[int] | np.ndarray, model_version: int
) -> None:
    """Record one onnxruntime run: its latency, its batch size and the digits it predicted."""
    metrics = service_metrics()
    version = str(model_version)
    samples: list[tuple[Any, float]] = []
    _observed(samples, metrics.child(metrics.inference_latency, version), seconds)
    samples.append((metrics.child(metrics.inferences, version, "answer")._value, batch_size))
    _observed(samples, metrics.batch_size, batch_size)
    flat = np.asarray(labels, dtype=np.int64).ravel()
    if flat.size == 1:  # the common case, without a bincount
        samples.append((metrics.child(metrics.predictions, str(int(flat[0])), version)._value, 1))
    else:
        counts = np.bincount(flat, minlength=N_CLASSES)
        for digit, count in enumerate(counts.tolist()):
            if count:
                counted = metrics.child(metrics.predictions, str(digit), version)
                samples.append((counted._value, count))
    samples.append(
        (metrics.child(metrics.last_inference, version)._value, metric_files.SetTo(time.time()))
    )
    _record(samples)


@never_fails
def observe_trial_inference(seconds: float, batch_size: int, model_version: int) -> None:
    """Record one onnxruntime run done for a trial comparison (not an answer)."""
    metrics = service_metrics()
    version = str(model_version)
    metrics.child(metrics.inference_latency, version).observe(seconds)
    metrics.child(metrics.inferences, version, "trial").inc(batch_size)
    metrics.child(metrics.last_inference, version).set(time.time())  # a trial thread's, unbatched


@never_fails
def observe_comparison(
    mode: str,
    stable_version: int,
    trial_version: int,
    stable_labels: np.ndarray,
    trial_labels: np.ndarray,
) -> None:
    """Count agreements and each (stable digit, trial digit) disagreement of a trial."""
    metrics = service_metrics()
    stable, trial = str(stable_version), str(trial_version)
    differ = stable_labels != trial_labels
    disagreed = int(np.count_nonzero(differ))
    agreed = len(stable_labels) - disagreed
    if agreed:
        metrics.child(metrics.comparisons, mode, stable, trial, "agree").inc(agreed)
    if disagreed:
        metrics.child(metrics.comparisons, mode, stable, trial, "disagree").inc(disagreed)
        pairs = np.stack([stable_labels[differ], trial_labels[differ]], axis=1).tolist()
        for (a, b), count in zip(*np.unique(pairs, axis=0, return_counts=True), strict=True):
            metrics.child(metrics.disagreements, mode, stable, trial, str(a), str(b)).inc(
                int(count)
            )


@never_fails
def count_trial_dropped(mode: str, count: int) -> None:
    """Count comparisons dropped because the trial queue was full."""
    service_metrics().trial_dropped.labels(mode).inc(count)


def collect_samples() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of every worker by sample name, as /metrics would show them (for JSON views
    such as the statistics extension); empty when the metrics folder cannot be read."""
    metrics = service_metrics()
    path = multiprocess_dir()
    registry = CollectorRegistry()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        if path is None or not getattr(values.ValueClass, "_multiprocess", False):
            registry.register(_RegistryCollector(metrics.registry))
        else:
            multiprocess.MultiProcessCollector(registry, path=path)
        for family in registry.collect():
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except Exception as exc:  # an unreadable folder: no figures rather than a failed request
        write_failures.record(exc)
    return samples


@never_fails
def observe_preprocessing(seconds: float) -> None:
    """Record the time spent decoding and preparing the images of one request."""
    samples: list[tuple[Any, float]] = []
    _observed(samples, service_metrics().preprocessing_latency, seconds)
    _record(samples)


@never_fails
def set_model_info(name: str, version: int, sha256: str) -> None:
    """Mark the model this worker now serves (and the one it served before as 0)."""
    metrics = service_metrics()
    labels = (name, str(version), sha256)
    with _lock:
        if metrics.info_labels is not None and metrics.info_labels != labels:
            # Series cannot be removed in multiprocess mode, so the old version drops to 0.
            metrics.model_info.labels(*metrics.info_labels).set(0)
        metrics.model_info.labels(*labels).set(1)
        metrics.model_version.set(version)
        metrics.info_labels = labels


def count_reload(outcome: ReloadOutcome) -> None:
    """Count one attempt to load a new model version; ValueError for an unknown outcome."""
    if outcome not in ("success", "failure"):
        raise ValueError(f"reload outcome must be 'success' or 'failure', not {outcome!r}")
    _count_reload(outcome)


@never_fails
def _count_reload(outcome: ReloadOutcome) -> None:
    service_metrics().reloads.labels(outcome).inc()


class _RequestSamples(threading.local):
    """The samples of the request this thread is answering, written when it is answered."""

    pending: list[tuple[Any, float]] | None = None


_request_samples = _RequestSamples()


def _observed(samples: list[tuple[Any, float]], histogram: Any, amount: float) -> None:
    """Add what ``histogram.observe(amount)`` writes: the sum, and the first bucket whose upper
    bound is >= amount (prometheus_client's Histogram, one label set)."""
    samples.append((histogram._sum, amount))
    index = bisect.bisect_left(histogram._upper_bounds, amount)
    if index < len(histogram._buckets):  # a NaN falls in no bucket, as in observe()
        samples.append((histogram._buckets[index], 1.0))


@never_fails
def observe_many(histogram: Any, amounts: np.ndarray) -> None:
    """What ``histogram.observe(a)`` for every ``a`` in ``amounts`` (float [N]) writes, as one
    addition per bucket touched and one to the sum (prometheus_client's Histogram, one label
    set): the store's writer observes a whole flush at once."""
    if len(amounts) == 0:
        return
    buckets = histogram._buckets
    samples: list[tuple[Any, float]] = [(histogram._sum, float(np.sum(amounts)))]
    # the first bucket whose upper bound is >= amount; a NaN falls in no bucket, as in observe()
    indices = np.searchsorted(np.asarray(histogram._upper_bounds), amounts, side="left")
    counts = np.bincount(indices, minlength=len(buckets) + 1)[: len(buckets)]
    samples.extend((buckets[i], float(n)) for i, n in enumerate(counts.tolist()) if n)
    _record(samples)


def _record(samples: list[tuple[Any, float]]) -> None:
    """Write ``samples`` now, or with the rest of this thread's request when one is open."""
    pending = _request_samples.pending
    if pending is None:
        metric_files.add_all(samples, write_failures.record)
    else:
        pending.extend(samples)


@never_fails
def request_started() -> None:
    """One more request in flight (the outer WSGI layer calls it as a request enters); the
    samples recorded in this thread until request_finished are written together then."""
    _request_samples.pending = []
    service_metrics().in_flight.inc()


def request_finished(
    route: str | None = None,
    status: int = 500,
    version: int | None = None,
    seconds: float | None = None,
) -> None:
    """One request fewer in flight, the request counted (unless ``route`` is None: it failed
    without an answer) and timed, and every sample held since request_started written, all
    under one lock; a sample that cannot be written is counted and the rest are still written."""
    pending = _request_samples.pending
    _request_samples.pending = None
    samples = [] if pending is None else pending
    try:
        metrics = service_metrics()
        samples.append((metrics.in_flight._value, -1.0))
        if route is not None:
            _request_samples_of(metrics, samples, route, status, version, seconds)
    except Exception as exc:  # metrics must never fail a request
        write_failures.record(exc)
    metric_files.add_all(samples, write_failures.record)


@never_fails
def set_capacity(threads: int) -> None:
    """This process answers up to ``threads`` requests at once (gunicorn's threads)."""
    service_metrics().capacity.set(threads)


@never_fails
def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's per-process gauges (gunicorn's child_exit hook calls this)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)


class ScrapeFigures(Protocol):
    """Series computed when a scrape comes, from the series every worker wrote (live figures)."""

    def families(self, merged: Iterable[Any]) -> list[Any]: ...


def exposition(
    accept_header: str | None, figures: ScrapeFigures | None = None
) -> tuple[bytes, str]:
    """The metrics of every worker in the format the scraper asked for, and its content type;
    ``figures`` adds the series it computes from them."""
    metrics = service_metrics()
    path = multiprocess_dir()
    try:
        encoder, content_type = choose_encoder(accept_header or "")
    except (TypeError, ValueError):
        # prometheus_client fails on a malformed version parameter (e.g. "version=abc");
        # a scraper that sends one still gets the classic text format rather than a 500.
        encoder, content_type = choose_encoder("")
    registry = CollectorRegistry()
    try:
        source: Any
        if path is None or not getattr(values.ValueClass, "_multiprocess", False):
            # in-process figures (no folder, or the folder failed when the metrics were created)
            source = _RegistryCollector(metrics.registry)
        else:
            # A fresh registry per scrape: the collector reads every worker's files as they are.
            source = multiprocess.MultiProcessCollector(None, path=path)
        registry.register(source)
        if figures is not None:
            registry.register(_ScrapeCollector(source, figures))
        registry.register(write_failures)
        return encoder(registry), content_type
    except Exception as exc:  # an unreadable folder: the scrape still gets the failure count
        write_failures.record(exc)
        only_failures = CollectorRegistry()
        only_failures.register(write_failures)
        return encoder(only_failures), content_type


@dataclass(frozen=True)
class _ScrapeCollector:
    """The scrape-time series, computed from what ``source`` collects (read a second time)."""

    source: Any
    figures: ScrapeFigures

    def collect(self) -> Iterable[Any]:
        try:
            return self.figures.families(self.source.collect())
        except Exception:  # the scrape still gets every other series
            log.exception("scrape-time figures failed; /metrics answers without them")
            return []


@dataclass(frozen=True)
class _RegistryCollector:
    """Another registry's metrics, collected as one collector (prometheus_client protocol)."""

    registry: CollectorRegistry

    def collect(self) -> Iterable[Any]:
        return self.registry.collect()


@never_fails
def observe_request(route: str, status: int, version: int | None, seconds: float | None) -> None:
    """Count one answered request by route template, status and model version, and time it."""
    samples: list[tuple[Any, float]] = []
    _request_samples_of(service_metrics(), samples, route, status, version, seconds)
    metric_files.add_all(samples, write_failures.record)


def _request_samples_of(
    metrics: ServiceMetrics,
    samples: list[tuple[Any, float]],
    route: str,
    status: int,
    version: int | None,
    seconds: float | None,
) -> None:
    code = str(status)
    counted = metrics.child(metrics.requests, route, code, "" if version is None else str(version))
    samples.append((counted._value, 1.0))
    if seconds is not None:
        _observed(samples, metrics.child(metrics.request_latency, route, code), seconds)
