"""Hot reload that converges: each worker's loaded versions follow what the repository says.

Every ``MODEL_POLL_SECONDS`` (at once on SIGHUP) the watcher reads the repository's serving state
(labels.json, else the config's version policy) and its versions, and makes the worker's loaded
set match it, whatever happened before:
- a version to serve is validated in a fresh session, then swapped in by replacing one reference;
- a loaded version whose files change on disk and fail validation keeps serving the copy
  validated before (the session in memory is still good); the rejection is logged, counted and
  shown by the repository index;
- a rejected version is looked at again when any of its files changes (size, mtime, inode) and on
  SIGHUP (which re-examines every version, checksums included); a rejection is logged and counted
  once per change of its files or reason;
- a version no longer named, or whose folder is gone, is dropped;
- a repository that cannot be read leaves the worker as it is (serving, or live but not ready at
  boot) and is retried at the next poll; the worker never exits because of it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from service.model.repository import (
    ModelRepository,
    ModelVersion,
    RepositoryError,
    ServingState,
    Trial,
)
from service.model.validation import (
    ModelRejected,
    SessionFactory,
    SessionSettings,
    ValidatedModel,
    validate_version,
)

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int, int], ...]


class WatcherSettings(SessionSettings, Protocol):
    """What the watcher reads of the service configuration (service.config.ServiceConfig)."""

    @property
    def model_version(self) -> int | None: ...
    @property
    def poll_seconds(self) -> float: ...


class ReloadMetrics(Protocol):
    """What the watcher reports; service.observability.metrics implements it."""

    def count_reload(self, outcome: str) -> None: ...


@dataclass(frozen=True)
class ServingSet:
    """What one worker serves, as one immutable value swapped by replacing one reference.

    ``stable`` answers unversioned requests (None: not ready, ``reason`` says why); ``trial`` and
    ``trial_model`` the canary or shadow; ``by_version`` every loaded version (for /versions/N).
    """

    stable: ValidatedModel | None
    trial: Trial | None = None
    trial_model: ValidatedModel | None = None
    by_version: Mapping[int, ValidatedModel] = field(default_factory=dict)
    reason: str = "no model is loaded yet"

    def key(self) -> tuple[object, ...]:
        return (
            None if self.stable is None else id(self.stable),
            self.trial,
            None if self.trial_model is None else id(self.trial_model),
            self.reason if self.stable is None else "",
        )


@dataclass
class _Held:
    fingerprint: Fingerprint
    model: ValidatedModel


class ModelWatcher:
    """Converges one worker's loaded versions on the repository's state; see the module doc."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: WatcherSettings,
        install: Callable[[ServingSet], None],
        metrics: ReloadMetrics,
        session_factory: SessionFactory,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self._install = install
        self.metrics = metrics
        self._session_factory = session_factory
        self._held: dict[int, _Held] = {}
        self._rejected: dict[int, tuple[Fingerprint, str]] = {}
        #: every version number this worker has seen complete in the repository: one missing
        #: now was removed ("gone"), any other was never there
        self._seen: set[int] = set()
        self._problem: str | None = None
        self._converged_once = False
        self._current: ServingSet | None = None
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._force = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    # -- one reconciliation -----------------------------------------------------------------

    def rejections(self) -> dict[int, str]:
        """Versions this worker refused, with the reason."""
        return {version: reason for version, (_, reason) in self._rejected.items()}

    def converge(self, *, force: bool = False) -> ServingSet | None:
        """Make the loaded set match the repository; the set installed, or None when unreadable.

        ``force`` re-validates every version it needs, unchanged files and loaded ones included.
        """
        with self._lock:
            try:
                state, versions = self.repository.snapshot()
            except RepositoryError as exc:
                self._unreadable(f"cannot read the model repository: {exc}; retrying")
                return None
            except Exception as exc:
                # a surprise while reading the folder must not stop a worker's boot (gunicorn's
                # master then halts the whole server): live, not ready, retried at each poll
                problem = f"cannot read the model repository: {type(exc).__name__}: {exc}; retrying"
                if problem != self._problem:
                    log.exception("worker %d: reading the model repository failed", os.getpid())
                self._unreadable(problem)
                return None
            if self.settings.model_version is not None:
                state = ServingState(stable=self.settings.model_version)  # MODEL_VERSION wins
            self._note_problem(None)
            serving = self._reconcile(state, versions, force)
            self._converged_once = True
            if self._current is None or serving.key() != self._current.key():
                previous = self._current
                self._current = serving
                self._log_change(previous, serving)  # first: the log never lags the gauges
                self._install(serving)
            return serving

    def _reconcile(
        self, state: ServingState, versions: Mapping[int, ModelVersion], force: bool
    ) -> ServingSet:
        if not state.loaded:
            self._held.clear()
            return ServingSet(
                None, reason="the model is unloaded (repository API); load it to serve again"
            )
        self._seen.update(versions)
        if state.pinned:
            assert state.stable is not None
            wanted = [state.stable, *reversed(state.history)]
        elif state.policy_versions:
            wanted = sorted(state.policy_versions, reverse=True)
        else:
            wanted = sorted(versions, reverse=True)
        stable = None
        for number in dict.fromkeys(wanted):  # in order, without repeats
            stable = self._examine(number, versions.get(number), force)
            if stable is not None:
                break
        trial_model = None
        trial = state.trial
        if trial is not None and stable is not None and trial.version != stable.model.version:
            trial_model = self._examine(trial.version, versions.get(trial.version), force)
        if trial_model is None:
            trial = None
        keep = {m.model.version for m in (stable, trial_model) if m is not None}
        for number in list(self._held):
            if number not in keep:
                del self._held[number]  # deleted or no longer named: not served any more
        for number in list(self._rejected):
            if number not in versions:
                del self._rejected[number]
        by_version = {m.model.version: m for m in (stable, trial_model) if m is not None}
        if stable is None:
            reason = self._why_nothing(state, wanted, versions)
            return ServingSet(None, by_version=by_version, reason=reason)
        return ServingSet(stable, trial, trial_model, by_version)

    def _why_nothing(
        self, state: ServingState, wanted: list[int], versions: Mapping[int, ModelVersion]
    ) -> str:
        where = self.repository.model_dir
        if not wanted:
            return f"no valid model in {where}: no complete version (model.onnx + card.json)"
        present = ", ".join(str(n) for n in sorted(versions)) or "none"
        reasons = [
            f"version {n}: {self._rejected[n][1]}"
            if n in self._rejected
            else f"version {n}: gone (removed from the model repository; versions: {present})"
            if n in self._seen
            else f"version {n} is not in the model repository (versions: {present})"
            for n in dict.fromkeys(wanted)
        ]
        return f"no valid model in {where}: " + "; ".join(reasons)

    def _examine(
        self, number: int, version: ModelVersion | None, force: bool
    ) -> ValidatedModel | None:
        if version is None:
            self._held.pop(number, None)
            return None
        fingerprint = version.fingerprint()
        held = self._held.get(number)
        if held is not None and held.fingerprint == fingerprint and not force:
            return held.model
        rejected = self._rejected.get(number)
        if rejected is not None and rejected[0] == fingerprint and not force:
            # failed before and unchanged since: the copy validated earlier (if any) serves on
            return held.model if held is not None else None
        try:
            validated = validate_version(
                version, self.repository.name, self.settings, self._session_factory
            )
        except ModelRejected as exc:
            reason = str(exc)
            if rejected != (fingerprint, reason):  # once per change of the files or the reason
                self.metrics.count_reload("failure")
                if held is None:
                    log.warning("rejected %s version %d: %s", self.repository.name, number, reason)
                else:
                    log.warning(
                        "the files of %s version %d changed on disk and are rejected (%s); "
                        "this worker keeps serving the copy it validated before",
                        self.repository.name,
                        number,
                        reason,
                    )
            self._rejected[number] = (fingerprint, reason)
            # a failed publish leaves the service answering: the validated session is still good
            return held.model if held is not None else None
        if rejected is not None:
            log.info("%s version %d passes validation now", self.repository.name, number)
        self._rejected.pop(number, None)
        if held is not None and held.model.model.sha256 == validated.model.sha256:
            held.fingerprint = fingerprint
            return held.model  # re-examined (SIGHUP) and unchanged: keep the session serving
        self._held[number] = _Held(fingerprint, validated)
        if self._converged_once:
            self.metrics.count_reload("success")
        return validated

    def _unreadable(self, problem: str) -> None:
        """The repository could not be read: say so once; with nothing serving yet, the worker
        is live and not ready, its reason ``problem``."""
        self._note_problem(problem)
        if self._current is None or self._current.stable is None:
            self._current = ServingSet(None, reason=problem)  # live, not ready
            self._install(self._current)

    def _note_problem(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is not None:
            log.error("worker %d: %s", os.getpid(), problem)
        elif self._problem is not None:
            log.info("worker %d: the model repository is readable again", os.getpid())
        self._problem = problem

    def _log_change(self, previous: ServingSet | None, serving: ServingSet) -> None:
        name = self.repository.name
        pid = os.getpid()
        if serving.stable is None:
            log.error("worker %d serves no model: %s", pid, serving.reason)
            return
        model = serving.stable.model
        before = previous.stable if previous is not None else None
        if before is None:
            where = model.path
            log.info("worker %d serving %s version %d from %s", pid, name, model.version, where)
        elif before is not serving.stable:
            log.info(
                "worker %d swapped in %s version %d (was %d)",
                pid,
                name,
                model.version,
                before.model.version,
            )
        old_trial = previous.trial if previous is not None else None
        if serving.trial != old_trial:
            what = serving.trial.describe() if serving.trial else "none"
            log.info("worker %d trial: %s", pid, what)

    # -- the thread -------------------------------------------------------------------------

    def start(self, *, handle_sighup: bool = True) -> None:
        """Start this process's poll thread once (after fork); SIGHUP re-examines everything."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._start_lock:
            if self._pid == pid:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
            self._thread = thread
            self._pid = pid
            thread.start()
        if handle_sighup and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._on_sighup)

    @property
    def running(self) -> bool:
        """True while this process's poll thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler only sets flags; the work happens on the watcher thread
        self._force.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (tests; gunicorn just exits)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None
        self._pid = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            force = self._force.is_set()
            self._force.clear()
            try:
                self.converge(force=force)
            except Exception:  # the thread must outlive any surprise; the old model keeps serving
                log.exception("model reload check failed")
                self.metrics.count_reload("failure")
