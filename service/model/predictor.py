"""The Predictor: the only code that runs models; answers with what the repository says serves.

Unversioned requests go to the ``stable`` version, or to the canary for its share; a shadow runs
a sample of them after the answer (service.model.trials). ``/versions/N`` requests go to N when it
is loaded. Every Prediction names the version that computed it. Which versions are loaded is the
watcher's business (service.model.watcher); validation is service.model.validation.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.config import ServiceConfig
from service.errors import InvalidInput, ModelUnavailable, NotFound
from service.model import contract
from service.model.reject import RejectOption
from service.model.repository import ModelRepository
from service.model.trials import Comparison, TrialMetrics, TrialRunner
from service.model.validation import (
    SELFTEST_ATOL,
    LoadedModel,
    ModelRejected,
    SessionFactory,
    ValidatedModel,
    check_card,
    check_signature,
    create_session,
    read_selftest,
    run_selftest,
)
from service.model.watcher import ModelWatcher, ReloadMetrics, ServingSet

__all__ = [
    "SELFTEST_ATOL",
    "LoadedModel",
    "ModelRejected",
    "Prediction",
    "Predictor",
    "PredictorMetrics",
    "check_card",
    "check_signature",
    "loaded_phrase",
    "read_selftest",
    "run_selftest",
]


def loaded_phrase(loaded: Sequence[int]) -> str:
    """What is loaded, for a message about a version that is not: ``version 1 is serving``,
    ``versions 1, 3 are loaded`` or ``none is loaded``."""
    if not loaded:
        return "none is loaded"
    if len(loaded) == 1:
        return f"version {loaded[0]} is serving"
    return f"versions {', '.join(map(str, loaded))} are loaded"


class PredictorMetrics(ReloadMetrics, TrialMetrics, Protocol):
    """What the Predictor reports; service.observability.metrics implements it."""

    def observe_inference(
        self, seconds: float, batch_size: int, labels: np.ndarray, model_version: int
    ) -> None: ...

    def set_model_info(self, name: str, version: int, sha256: str) -> None: ...


def default_metrics() -> PredictorMetrics:
    """The process's Prometheus metrics (service.observability.metrics)."""
    from service.observability import metrics

    return metrics  # type: ignore[return-value]


@dataclass(frozen=True)
class Prediction:
    """Labels and probabilities for a batch, and the version that computed them."""

    labels: np.ndarray
    probabilities: np.ndarray
    model_name: str
    model_version: int
    #: how the version that answered accepts or rejects its answers
    reject: RejectOption = field(default_factory=RejectOption, repr=False)
    #: float32 [N, H]: the model's hidden layer from the same run, for ``reject.decide``; None
    #: when the version's session does not give it (the option then computes it when needed)
    hidden: np.ndarray | None = field(default=None, repr=False)


_OUTPUTS = [contract.OUTPUT_LABEL, contract.OUTPUT_PROBABILITIES]


class Predictor:
    """Serves the repository's stable version (and its trial) and follows every change to it."""

    def __init__(
        self,
        config: ServiceConfig,
        repository: ModelRepository | None = None,
        metrics: PredictorMetrics | None = None,
        session_factory: SessionFactory = create_session,
        choose: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.repository = repository or ModelRepository(config.model_dir)
        self.metrics = metrics if metrics is not None else default_metrics()
        self._choose = choose  # a uniform number in [0, 1): which requests a trial takes
        self._serving = ServingSet(None)
        self.trials = TrialRunner(self.metrics)
        self.watcher = ModelWatcher(
            self.repository, config, self._install, self.metrics, session_factory
        )

    # -- loading ------------------------------------------------------------------------------

    def _install(self, serving: ServingSet) -> None:
        self._serving = serving  # one reference assignment: atomic for every reader
        if serving.stable is not None:
            model = serving.stable.model
            self.metrics.set_model_info(model.name, model.version, model.sha256)

    def load(self) -> LoadedModel:
        """Converge on the repository now; the stable model, or ModelUnavailable saying why."""
        self.watcher.converge(force=True)
        return self.loaded

    def check_for_update(self) -> LoadedModel | None:
        """Converge on the repository now; the stable model when it changed, else None."""
        before = self._serving.stable
        serving = self.watcher.converge()
        if serving is None or serving.stable is None or serving.stable is before:
            return None
        return serving.stable.model

    # -- what serves --------------------------------------------------------------------------

    @property
    def serving(self) -> ServingSet:
        """The current serving set (stable, trial, every loaded version)."""
        return self._serving

    @property
    def name(self) -> str:
        """The model's name in the repository (``mnist``)."""
        return self.repository.name

    def loaded_versions(self) -> list[int]:
        """Every version this worker has loaded (stable and trial), ascending."""
        return sorted(self._serving.by_version)

    @property
    def loaded(self) -> LoadedModel:
        """The stable version; ModelUnavailable (saying why) while there is none."""
        stable = self._serving.stable
        if stable is None:
            raise ModelUnavailable(self._serving.reason)
        return stable.model

    def model(self, version: int | None = None) -> LoadedModel:
        """The stable model, or loaded version ``version``; NotFound when it is not loaded."""
        if version is None:
            return self.loaded
        found = self._serving.by_version.get(version)
        if found is None:
            serving = loaded_phrase(self.loaded_versions())
            raise NotFound(
                f"model {self.repository.name!r} has no version {str(version)!r} loaded; {serving}"
            )
        return found.model

    # -- serving ------------------------------------------------------------------------------

    def predict(self, images: np.ndarray, version: int | None = None) -> Prediction:
        """Labels and probabilities for float32 images [N, 784] in [0, 1].

        ``version`` None: the stable version answers, or the canary for its share; a shadow is
        queued to run after. Otherwise that loaded version answers (NotFound when not loaded).
        """
        serving = self._serving  # taken once: a swap during this call does not affect it
        if images.dtype != np.float32 or images.ndim != 2 or images.shape[1] != contract.N_PIXELS:
            raise InvalidInput(
                f"images must be float32 of shape [N, {contract.N_PIXELS}], got "
                f"{images.dtype} {list(images.shape)}"
            )
        count = images.shape[0]
        if not 1 <= count <= self.config.max_batch:
            raise InvalidInput(f"batch size must be 1..{self.config.max_batch}, got {count}")
        other: ValidatedModel | None = None
        if version is not None:
            target = serving.by_version.get(version)
            if target is None:
                self.model(version)  # raises NotFound naming what is loaded
                raise AssertionError("unreachable")
        else:
            stable = serving.stable
            if stable is None:
                raise ModelUnavailable(serving.reason)
            target = stable
            trial = serving.trial
            trial_model = serving.trial_model
            if trial is not None and trial_model is not None and self._choose() < trial.share:
                if trial.mode == "canary":
                    target, other = trial_model, stable
                else:
                    other = trial_model
        hidden = None
        started = time.perf_counter()
        if target.hidden_output is None:
            labels, probabilities = target.session.run(_OUTPUTS, {contract.INPUT_NAME: images})
        else:
            labels, probabilities, hidden = target.session.run(
                [*_OUTPUTS, target.hidden_output], {contract.INPUT_NAME: images}
            )
        seconds = time.perf_counter() - started
        answered = target.model.version
        self.metrics.observe_inference(seconds, count, labels, answered)
        if other is not None and serving.trial is not None and serving.stable is not None:
            self.trials.submit(
                Comparison(
                    mode=serving.trial.mode,
                    stable_version=serving.stable.model.version,
                    trial_version=serving.trial.version,
                    images=images,
                    answered_labels=labels,
                    answered_by_trial=other is serving.stable,
                    other=other,
                )
            )
        reject = target.reject
        if self.config.min_confidence is not None:  # MIN_CONFIDENCE overrides the card's
            reject = dataclasses.replace(reject, min_confidence=self.config.min_confidence)
        return Prediction(
            labels=labels,
            probabilities=probabilities,
            model_name=target.model.name,
            model_version=answered,
            reject=reject,
            hidden=hidden,
        )

    # -- hot reload ---------------------------------------------------------------------------

    def start_watching(self, *, handle_sighup: bool = True) -> None:
        """Start this process's reload thread once (after fork); SIGHUP wakes it when asked."""
        self.watcher.start(handle_sighup=handle_sighup)

    def stop_watching(self, timeout: float = 5.0) -> None:
        """Stop the reload thread (tests; gunicorn just exits)."""
        self.watcher.stop(timeout)
