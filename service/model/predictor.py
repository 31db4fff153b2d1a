"""The Predictor: the only code that touches onnxruntime; loads, validates, serves and hot-swaps."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from service.config import ServiceConfig
from service.errors import InvalidInput, ModelUnavailable
from service.model import contract
from service.model.repository import ModelRepository, ModelVersion, RepositoryError, sha256_bytes

log = logging.getLogger(__name__)

#: probabilities recorded at training time are rounded; float32 kernels differ across CPUs
SELFTEST_ATOL = 1e-4


class ModelRejected(Exception):
    """A version failed validation (files, signature, session or self-test) and is not served."""


class PredictorMetrics(Protocol):
    """What the Predictor reports; service.observability.metrics implements it."""

    def observe_inference(
        self, seconds: float, batch_size: int, labels: np.ndarray, model_version: int
    ) -> None: ...

    def count_reload(self, outcome: str) -> None: ...

    def set_model_info(self, name: str, version: int, sha256: str) -> None: ...


def default_metrics() -> PredictorMetrics:
    """The process's Prometheus metrics (service.observability.metrics)."""
    from service.observability import metrics

    return metrics  # type: ignore[return-value]


@dataclass(frozen=True)
class LoadedModel:
    """A snapshot of the version being served."""

    name: str
    version: int
    card: contract.ModelCard = field(repr=False)
    path: Path

    @property
    def sha256(self) -> str:
        return self.card.sha256


@dataclass(frozen=True)
class Prediction:
    """Labels and probabilities for a batch, and the version that computed them."""

    labels: np.ndarray
    probabilities: np.ndarray
    model_name: str
    model_version: int


@dataclass(frozen=True)
class _Serving:
    # one immutable pair, swapped by replacing the reference: a request that took it keeps it
    model: LoadedModel
    session: ort.InferenceSession


SessionFactory = Callable[[bytes, ServiceConfig], ort.InferenceSession]


def create_session(onnx_bytes: bytes, config: ServiceConfig) -> ort.InferenceSession:
    """An onnxruntime CPU session with the thread counts set explicitly."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1  # one model, one graph: parallel branches do not exist
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # workers and gthread threads already use both cores; spinning threads would steal them
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def check_card(card: contract.ModelCard) -> None:
    """ModelRejected unless the card declares the contract's input, outputs and classes."""
    declared, expected_input = card.input.to_json(), contract.INPUT.to_json()
    for key in ("name", "dtype", "shape", "pixel_scale"):
        if declared[key] != expected_input[key]:
            raise ModelRejected(
                f"the card's input {key} is {declared[key]!r}, the service expects "
                f"{expected_input[key]!r}"
            )
    by_name = {o.name: o.to_json() for o in card.outputs}
    for expected in contract.output_contract():
        found = by_name.get(expected["name"])
        if found is None:
            raise ModelRejected(f"the card lists no output {expected['name']!r}")
        for key in ("dtype", "shape"):
            if found[key] != expected[key]:
                raise ModelRejected(
                    f"the card's output {expected['name']!r} has {key} {found[key]!r}, "
                    f"the service expects {expected[key]!r}"
                )
    if card.class_labels != contract.CLASS_LABELS:
        raise ModelRejected(f"the card's class_labels {list(card.class_labels)!r} are not 0..9")


def _dynamic(dim: object) -> bool:
    # onnxruntime shows a symbolic batch dimension as None or as its name
    return dim is None or isinstance(dim, str) or dim == -1


def check_signature(session: ort.InferenceSession) -> None:
    """ModelRejected unless the ONNX graph has the contract's input and outputs."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelRejected(f"the model has {len(inputs)} inputs, the service expects 1")
    (tensor,) = inputs
    if tensor.name != contract.INPUT_NAME or tensor.type != "tensor(float)":
        raise ModelRejected(
            f"the model's input is {tensor.name!r} {tensor.type}, the service expects "
            f"{contract.INPUT_NAME!r} tensor(float)"
        )
    if len(tensor.shape) != 2 or not _dynamic(tensor.shape[0]) or tensor.shape[1] != 784:
        raise ModelRejected(f"the model's input shape is {tensor.shape}, expected [N, 784]")
    outputs = {o.name: o for o in session.get_outputs()}
    expected = {
        contract.OUTPUT_LABEL: ("tensor(int64)", 1, None),
        contract.OUTPUT_PROBABILITIES: ("tensor(float)", 2, contract.N_CLASSES),
    }
    for name, (kind, rank, last) in expected.items():
        found = outputs.get(name)
        if found is None:
            raise ModelRejected(f"the model has no output {name!r} (it has {sorted(outputs)})")
        if found.type != kind or len(found.shape) != rank:
            raise ModelRejected(
                f"the model's output {name!r} is {found.type} of shape {found.shape}, "
                f"expected {kind} of rank {rank}"
            )
        if last is not None and found.shape[-1] != last:
            raise ModelRejected(f"the model's output {name!r} has shape {found.shape}")


def read_selftest(version: ModelVersion, card: contract.ModelCard) -> dict[str, Any]:
    """The self-test digits beside the model, checked against the sha256 in the card."""
    entry = card.selftest
    name = entry.file
    if "/" in name or "\\" in name or name.startswith("."):
        raise ModelRejected(f"the selftest file {name!r} is not a plain file name")
    try:
        data = (version.path / name).read_bytes()
    except OSError as exc:
        raise ModelRejected(f"cannot read the selftest file {name}: {exc}") from exc
    if sha256_bytes(data) != entry.sha256:
        raise ModelRejected(f"the selftest file {name} does not match its sha256 in the card")
    try:
        selftest = json.loads(data)
    except ValueError as exc:
        raise ModelRejected(f"the selftest file {name} is not JSON: {exc}") from exc
    if not isinstance(selftest, dict):
        raise ModelRejected(f"the selftest file {name} is not a JSON object")
    return selftest


def run_selftest(session: ort.InferenceSession, selftest: Mapping[str, Any]) -> None:
    """ModelRejected unless the model reproduces the labels and probabilities of training time."""
    try:
        images = np.asarray(selftest["images"], dtype=np.uint8)
        expected_labels = np.asarray(selftest["expected_labels"], dtype=np.int64)
        expected_probs = np.asarray(selftest["expected_probabilities"], dtype=np.float32)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ModelRejected(f"the selftest file is malformed: {exc!r}") from exc
    count = len(images)
    if (
        count == 0
        or images.shape != (count, contract.N_PIXELS)
        or expected_labels.shape != (count,)
        or expected_probs.shape != (count, contract.N_CLASSES)
    ):
        raise ModelRejected("the selftest file has inconsistent shapes")
    pixels = images.astype(np.float32) * np.float32(contract.PIXEL_SCALE)
    try:
        labels, probs = session.run(
            [contract.OUTPUT_LABEL, contract.OUTPUT_PROBABILITIES], {contract.INPUT_NAME: pixels}
        )
    except Exception as exc:  # onnxruntime raises a dozen unrelated types, all direct Exceptions
        raise ModelRejected(f"the model failed to run the self-test: {exc}") from exc
    if not np.array_equal(np.asarray(labels), expected_labels):
        raise ModelRejected(
            f"self-test labels {np.asarray(labels).tolist()} differ from the expected "
            f"{expected_labels.tolist()}"
        )
    worst = float(np.max(np.abs(np.asarray(probs) - expected_probs)))
    if not worst <= SELFTEST_ATOL:
        raise ModelRejected(f"self-test probabilities differ by up to {worst:.2e}")


class Predictor:
    """Serves one validated model version at a time and swaps in newer ones when they pass."""

    def __init__(
        self,
        config: ServiceConfig,
        repository: ModelRepository | None = None,
        metrics: PredictorMetrics | None = None,
        session_factory: SessionFactory = create_session,
    ) -> None:
        self.config = config
        self.repository = repository or ModelRepository(config.model_dir)
        self.metrics = metrics if metrics is not None else default_metrics()
        self._session_factory = session_factory
        self._serving: _Serving | None = None
        self._rejected: dict[int, tuple[tuple[str, int, int], ...]] = {}
        self._reload_lock = threading.Lock()
        # a lock of its own: a slow validation must not hold up the first request of a worker
        self._watch_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_pid: int | None = None

    # -- loading ------------------------------------------------------------------------------

    def validate(self, version: ModelVersion) -> _Serving:
        """A ready session for ``version`` after every check; ModelRejected says which failed."""
        try:
            onnx_bytes, document = version.read_verified()
        except RepositoryError as exc:
            raise ModelRejected(str(exc)) from exc
        try:
            card = contract.ModelCard.from_json(document)
        except contract.CardError as exc:
            raise ModelRejected(f"{contract.CARD_FILE}: {exc}") from exc
        if card.name != self.repository.name:
            raise ModelRejected(f"the card names model {card.name!r}")
        check_card(card)
        selftest = read_selftest(version, card)
        try:
            session = self._session_factory(onnx_bytes, self.config)
        except Exception as exc:  # onnxruntime raises a dozen unrelated types (InvalidProtobuf...)
            raise ModelRejected(f"onnxruntime cannot load model.onnx: {exc}") from exc
        check_signature(session)
        run_selftest(session, selftest)
        loaded = LoadedModel(
            name=self.repository.name, version=version.version, card=card, path=version.path
        )
        return _Serving(model=loaded, session=session)

    def _install(self, serving: _Serving) -> None:
        self._serving = serving  # one reference assignment: atomic for every reader
        model = serving.model
        self.metrics.set_model_info(model.name, model.version, model.sha256)

    def load(self) -> LoadedModel:
        """Load the pinned or the highest valid version; ModelUnavailable when there is none."""
        with self._reload_lock:
            if self.config.model_version is not None:
                candidates = self._pinned()
            else:
                candidates = list(reversed(self.repository.versions()))
            reasons = []
            for version in candidates:
                try:
                    serving = self.validate(version)
                except ModelRejected as exc:
                    self._reject(version, exc)
                    reasons.append(f"version {version.version}: {exc}")
                    continue
                self._install(serving)
                log.info(
                    "worker %d serving %s version %d from %s",
                    os.getpid(),
                    serving.model.name,
                    serving.model.version,
                    version.path,
                )
                return serving.model
        where = self.repository.model_dir
        why = "; ".join(reasons) if reasons else "no complete version (model.onnx + card.json)"
        message = f"no valid model in {where}: {why}"
        log.error(message)
        raise ModelUnavailable(message)

    def _pinned(self) -> list[ModelVersion]:
        assert self.config.model_version is not None
        try:
            return [self.repository.get(self.config.model_version)]
        except RepositoryError as exc:
            log.error("MODEL_VERSION=%d: %s", self.config.model_version, exc)
            return []

    def _reject(self, version: ModelVersion, exc: ModelRejected) -> None:
        self._rejected[version.version] = version.fingerprint()
        self.metrics.count_reload("failure")
        log.warning("rejected %s version %d: %s", self.repository.name, version.version, exc)

    def check_for_update(self) -> LoadedModel | None:
        """Swap in the highest newer valid version, if any; the version swapped in or None."""
        if self.config.model_version is not None:
            return None  # pinned: the operator chose this version
        with self._reload_lock:
            current = self._serving
            floor = current.model.version if current else 0
            newer = [v for v in self.repository.versions() if v.version > floor]
            for version in reversed(newer):
                if self._rejected.get(version.version) == version.fingerprint():
                    continue  # failed before and unchanged since: do not retry
                try:
                    serving = self.validate(version)
                except ModelRejected as exc:
                    self._reject(version, exc)
                    continue
                self._rejected.pop(version.version, None)
                self._install(serving)
                self.metrics.count_reload("success")
                log.info(
                    "worker %d swapped in %s version %d (was %s)",
                    os.getpid(),
                    serving.model.name,
                    serving.model.version,
                    current.model.version if current else "none",
                )
                return serving.model
        return None

    # -- serving ------------------------------------------------------------------------------

    @property
    def loaded(self) -> LoadedModel:
        """The version being served; ModelUnavailable before one is loaded."""
        serving = self._serving
        if serving is None:
            raise ModelUnavailable("no model is loaded")
        return serving.model

    def predict(self, images: np.ndarray) -> Prediction:
        """Labels and probabilities for float32 images [N, 784] in [0, 1]."""
        serving = self._serving  # taken once: a swap during this call does not affect it
        if serving is None:
            raise ModelUnavailable("no model is loaded")
        if images.dtype != np.float32 or images.ndim != 2 or images.shape[1] != contract.N_PIXELS:
            raise InvalidInput(
                f"images must be float32 of shape [N, {contract.N_PIXELS}], got "
                f"{images.dtype} {list(images.shape)}"
            )
        count = images.shape[0]
        if not 1 <= count <= self.config.max_batch:
            raise InvalidInput(f"batch size must be 1..{self.config.max_batch}, got {count}")
        started = time.perf_counter()
        labels, probabilities = serving.session.run(
            [contract.OUTPUT_LABEL, contract.OUTPUT_PROBABILITIES], {contract.INPUT_NAME: images}
        )
        seconds = time.perf_counter() - started
        version = serving.model.version
        self.metrics.observe_inference(seconds, count, labels, version)
        return Prediction(
            labels=labels,
            probabilities=probabilities,
            model_name=serving.model.name,
            model_version=version,
        )

    # -- hot reload ---------------------------------------------------------------------------

    def start_watching(self, *, handle_sighup: bool = True) -> None:
        """Start this process's reload thread once (after fork); SIGHUP wakes it when asked."""
        pid = os.getpid()
        if self._watcher_pid == pid:
            return
        with self._watch_lock:
            if self._watcher_pid == pid:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._watcher = thread
            self._watcher_pid = pid
            thread.start()
        if handle_sighup and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._wake.set()  # a signal handler only wakes the thread; the work happens there

    def stop_watching(self, timeout: float = 5.0) -> None:
        """Stop the reload thread (tests; gunicorn just exits)."""
        self._stop.set()
        self._wake.set()
        thread = self._watcher
        if thread is not None:
            thread.join(timeout)
        self._watcher = None
        self._watcher_pid = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.config.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check_for_update()
            except Exception:  # the thread must outlive any surprise; the old model keeps serving
                log.exception("model reload check failed")
                self.metrics.count_reload("failure")
