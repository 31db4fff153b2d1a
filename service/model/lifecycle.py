"""What an operator does to the repository: promote, roll back, run a trial, prune, compare.

``mnist-models`` and the admin HTTP routes both call these functions. Each change is written under
the repository lock as one atomic replace of labels.json (service.model.repository), and every
worker converges on it within its poll interval (service.model.watcher).

The promote gate (also for a canary, which answers real requests): the version must pass the
service's own validation (files, card, graph, self-test), its test accuracy measured here on the
MNIST test set must match what its card claims (within ``CARD_TOLERANCE``), and it must not be
worse than ``stable`` by more than ``tolerance``. ``force`` overrides the accuracy figures only,
never validation: a version the service would not load (a damaged model.onnx, an unreadable card,
a failed self-test) is refused even when forced, or it would be labelled stable while every
server keeps serving the old one. For the same reason a shadow and the version a rollback returns
to pass validation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus

import numpy as np

from service.errors import ServiceError
from service.model import contract
from service.model.repository import (
    HISTORY_LENGTH,
    ModelRepository,
    ModelVersion,
    RepositoryError,
    ServingState,
    Trial,
    TrialMode,
    version_number,
)
from service.model.testset import MnistTestSet
from service.model.validation import (
    ModelRejected,
    SessionSettings,
    ValidatedModel,
    create_session,
    validate_version,
)

#: a candidate may be this much less accurate than stable on the test set (0.2 points)
DEFAULT_TOLERANCE = 0.002
#: a card whose test accuracy differs from the measured one by more than this lies
CARD_TOLERANCE = 0.002


class LifecycleError(ServiceError):
    """An operation on the repository that cannot be done; ``exit_code`` for mnist-models."""

    status = HTTPStatus.CONFLICT
    code = "conflict"
    exit_code = 5


class UnknownVersion(LifecycleError):
    """No such complete version in the repository."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"
    exit_code = 2


class OutOfRange(LifecycleError):
    """A share or count outside its range (the command lines refuse these while parsing)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_value"
    exit_code = 2


class Refused(LifecycleError):
    """The gate refused the version, or it fails validation; the message says why."""

    code = "refused"
    exit_code = 4


class NothingToDo(LifecycleError):
    """The request does not fit the serving state: no earlier stable version to roll back to,
    no labels.json yet, a trial of the stable version itself. The repository is fine."""

    exit_code = 7


class RepositoryNotWritable(LifecycleError):
    """labels.json could not be written (a read-only mount, permissions, a full disk)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "repository_not_writable"
    exit_code = 5


@dataclass(frozen=True)
class Figures:
    """One version's test accuracy: measured here (None without the test set) and claimed."""

    version: int
    measured: float | None
    claimed: float | None

    def describe(self) -> str:
        measured = "not measured" if self.measured is None else f"{self.measured:.2%}"
        claimed = "no claim" if self.claimed is None else f"card says {self.claimed:.2%}"
        return f"version {self.version}: {measured} ({claimed})"

    @property
    def accuracy(self) -> float | None:
        return self.measured if self.measured is not None else self.claimed


@dataclass(frozen=True)
class GateReport:
    """The gate's figures and the reasons it refuses (none: passed)."""

    candidate: Figures
    stable: Figures | None
    tolerance: float
    problems: tuple[str, ...]
    test_images: int

    @property
    def passed(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        where = (
            f"on the {self.test_images:,} MNIST test images"
            if self.test_images
            else "from the cards (no MNIST test set: set MNIST_DATA_DIR or --data-dir to measure)"
        )
        parts = [self.candidate.describe()]
        if self.stable is not None:
            parts.append(f"stable {self.stable.describe()}")
        return f"{'; '.join(parts)}; {where}"


@dataclass(frozen=True)
class Outcome:
    """What an operation did: a one-line message, the new state, the gate when one ran."""

    message: str
    state: ServingState
    gate: GateReport | None = None
    details: dict[str, object] = field(default_factory=dict)


def card_accuracy(model: ValidatedModel) -> float | None:
    """The test accuracy the version's card claims."""
    return float(model.model.card.metrics.test_accuracy)


def predict_labels(model: ValidatedModel, images: np.ndarray) -> np.ndarray:
    """The model's digits (int64 [N]) for uint8 images [N, 784], in batches the contract allows."""
    out = []
    for start in range(0, len(images), contract.MAX_BATCH_SIZE):
        chunk = images[start : start + contract.MAX_BATCH_SIZE].astype(np.float32)
        chunk *= np.float32(contract.PIXEL_SCALE)
        (labels,) = model.session.run([contract.OUTPUT_LABEL], {contract.INPUT_NAME: chunk})
        out.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _version(repository: ModelRepository, number: int) -> ModelVersion:
    try:
        return repository.get(number)
    except RepositoryError as exc:
        raise UnknownVersion(str(exc)) from exc


def validated(
    repository: ModelRepository, number: int, settings: SessionSettings
) -> ValidatedModel:
    """Version ``number`` after the service's own validation; Refused says why it fails."""
    try:
        return validate_version(
            _version(repository, number), repository.name, settings, create_session
        )
    except ModelRejected as exc:
        raise Refused(f"version {number} fails validation: {exc}") from exc


def run_gate(
    candidate: ValidatedModel,
    stable: ValidatedModel | None,
    test_set: MnistTestSet | None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> GateReport:
    """Compare ``candidate`` with ``stable`` on the test set (or their cards without one)."""
    problems = []

    def figures(model: ValidatedModel) -> Figures:
        measured = None
        if test_set is not None:
            labels = predict_labels(model, test_set.images)
            measured = float(np.mean(labels == test_set.labels))
        return Figures(model.model.version, measured, card_accuracy(model))

    mine = figures(candidate)
    theirs = figures(stable) if stable is not None else None
    if mine.measured is not None and (
        mine.claimed is None or abs(mine.measured - mine.claimed) > CARD_TOLERANCE
    ):
        claim = "no test accuracy" if mine.claimed is None else f"{mine.claimed:.2%}"
        problems.append(
            f"its card lies: it claims {claim}, it scores {mine.measured:.2%} on the test set"
        )
    if theirs is not None and mine.accuracy is not None and theirs.accuracy is not None:
        gap = theirs.accuracy - mine.accuracy
        if gap > tolerance:
            problems.append(
                f"it is {gap * 100:.2f} points less accurate than stable version "
                f"{theirs.version} (tolerance {tolerance * 100:.2f})"
            )
    elif mine.accuracy is None:
        problems.append("its card has no test accuracy and there is no test set to measure it")
    count = 0 if test_set is None else len(test_set)
    return GateReport(mine, theirs, tolerance, tuple(problems), count)


def _gate_or_refuse(
    repository: ModelRepository,
    number: int,
    state: ServingState,
    settings: SessionSettings,
    test_set: MnistTestSet | None,
    tolerance: float,
    force: bool,
    what: str,
) -> GateReport:
    if not (math.isfinite(tolerance) and 0.0 <= tolerance <= 1.0):  # NaN would pass every check
        raise OutOfRange(f"the tolerance must be between 0 and 1, not {tolerance}")
    candidate = validated(repository, number, settings)  # even when forced
    stable = None
    if state.stable is not None and state.stable != number:
        try:
            stable = validated(repository, state.stable, settings)
        except LifecycleError:
            stable = None  # a broken stable is no reason to refuse a working candidate
    report = run_gate(candidate, stable, test_set, tolerance)
    if not report.passed and not force:
        raise Refused(
            f"refused to {what} version {number}: {'; '.join(report.problems)}. "
            f"Figures: {report.describe()}. Use --force to {what} it anyway."
        )
    return report


class _Change:
    """``with _Change(repo) as change:`` the state under the lock; write errors become 503s."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def __enter__(self) -> _Change:
        try:
            self._context = self.repository.changing_state()
            self._change = self._context.__enter__()
        except OSError as exc:
            raise RepositoryNotWritable(f"cannot lock the repository: {exc}") from exc
        except RepositoryError as exc:
            raise LifecycleError(f"cannot read the serving state: {exc}") from exc
        return self

    @property
    def state(self) -> ServingState:
        return self._change.state

    @state.setter
    def state(self, value: ServingState) -> None:
        self._change.state = value

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._context.__exit__(*exc_info)  # type: ignore[arg-type]
        except OSError as exc:
            raise RepositoryNotWritable(
                f"cannot write {self.repository.labels_path}: {exc}"
            ) from exc


def _pinned(state: ServingState) -> ServingState:
    if state.stable is not None:
        return state
    # no labels.json yet: what the policy serves now becomes explicit
    raise NothingToDo(
        "the repository has no labels.json yet; publish a version or promote one to create it"
    )


def promote(
    repository: ModelRepository,
    number: int,
    settings: SessionSettings,
    test_set: MnistTestSet | None,
    *,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Outcome:
    """Make ``number`` the stable version (the old one goes on the rollback history)."""
    with _Change(repository) as change:
        state = change.state
        if state.stable == number:
            return Outcome(f"version {number} is already stable", state)
        report = _gate_or_refuse(
            repository, number, state, settings, test_set, tolerance, force, "promote"
        )
        history = state.history
        if state.stable is not None:
            history = (*history, state.stable)[-HISTORY_LENGTH:]
        trial = state.trial if state.trial is None or state.trial.version != number else None
        change.state = ServingState(stable=number, trial=trial, history=history)
    forced = " (forced past the gate)" if force and not report.passed else ""
    return Outcome(
        f"promoted version {number} to stable{forced}; {report.describe()}", change.state, report
    )


def rollback(repository: ModelRepository, settings: SessionSettings) -> Outcome:
    """Make the previous stable version stable again (the current one is forgotten).

    The version rolled back to passes the service's validation first, as a promoted one does:
    labelled stable while failing it, every server would quietly serve an older version.
    """
    with _Change(repository) as change:
        state = _pinned(change.state)
        present = {v.version for v in repository.versions()}
        history = list(state.history)
        while history and not _has_folder(repository, history[-1]):
            history.pop()  # pruned or deleted since: cannot go back to it
        if not history:
            raise NothingToDo(f"no earlier stable version to roll back to from {state.stable}")
        back = history.pop()
        if back not in present:  # its folder is there, but without model.onnx or card.json
            raise Refused(
                f"refused to roll back to version {back}: its folder lacks model.onnx or "
                f"card.json; nothing changed (version {state.stable} stays stable)"
            )
        try:
            validated(repository, back, settings)
        except Refused as exc:
            raise Refused(
                f"refused to roll back to version {back}: {exc.message}; nothing changed "
                f"(version {state.stable} stays stable)"
            ) from exc
        trial = state.trial if state.trial is None or state.trial.version != back else None
        change.state = replace(state, stable=back, history=tuple(history), trial=trial)
    return Outcome(
        f"rolled back: version {back} is stable again (was {state.stable})", change.state
    )


def _has_folder(repository: ModelRepository, number: int) -> bool:
    """Whether version ``number`` still has a folder (complete or not): a rollback skips only
    versions whose folder is gone, and refuses one that is there but damaged."""
    if not repository.model_dir.is_dir():
        return False
    return any(
        version_number(entry.name) == number and entry.is_dir()
        for entry in repository.model_dir.iterdir()
    )


def start_trial(
    repository: ModelRepository,
    mode: TrialMode,
    number: int,
    share: float,
    settings: SessionSettings,
    test_set: MnistTestSet | None,
    *,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Outcome:
    """Run ``number`` as the canary (``share`` of the answers) or the shadow (``share`` sampled).

    A canary answers real requests, so it passes the promote gate; a shadow only validation.
    """
    if not 0.0 < share <= 1.0:  # NaN fails too
        raise OutOfRange(
            f"a canary's percent must be in (0, 100], not {share * 100:g}"
            if mode == "canary"
            else f"a shadow's sample must be in (0, 1], not {share:g}"
        )
    with _Change(repository) as change:
        state = _pinned(change.state)
        if number == state.stable:
            raise NothingToDo(f"version {number} is stable; a trial needs another version")
        report = None
        if mode == "canary":
            report = _gate_or_refuse(
                repository, number, state, settings, test_set, tolerance, force, "canary"
            )
        else:
            validated(repository, number, settings)  # even when forced
        trial = Trial(mode=mode, version=number, share=share)
        change.state = replace(state, trial=trial)
    return Outcome(
        f"trial started: {trial.describe()} beside stable {state.stable}", change.state, report
    )


def end_trial(repository: ModelRepository) -> Outcome:
    """Stop the canary or shadow; stable answers everything again."""
    with _Change(repository) as change:
        state = change.state
        if state.trial is None:
            return Outcome("no trial is running", state)
        ended = state.trial
        change.state = replace(state, trial=None)
    return Outcome(f"trial ended: {ended.describe()}", change.state)


def set_loaded(repository: ModelRepository, loaded: bool) -> Outcome:
    """Triton's load/unload for the whole model: unloaded, every worker stops answering."""
    with _Change(repository) as change:
        state = _pinned(change.state)
        change.state = replace(state, loaded=loaded)
    return Outcome(f"model {repository.name} {'loaded' if loaded else 'unloaded'}", change.state)


def prune(repository: ModelRepository, keep: int) -> Outcome:
    """Delete all but the ``keep`` newest unlabelled versions; never stable, the trial's version
    or the version rollback would return to."""
    if keep < 0:
        raise OutOfRange(f"keep must be 0 or more, not {keep}")
    state = repository.read_state()
    protected = set(state.versions())
    if state.history:
        protected.add(state.history[-1])
    spare = [v.version for v in repository.versions() if v.version not in protected]
    doomed = spare[: max(0, len(spare) - keep)]
    for number in doomed:
        try:
            repository.delete_version(number)
        except OSError as exc:
            raise RepositoryNotWritable(f"cannot delete version {number}: {exc}") from exc
    kept = ", ".join(map(str, sorted(protected | set(spare[len(doomed) :])))) or "none"
    removed = ", ".join(map(str, doomed)) or "nothing"
    return Outcome(f"pruned {removed}; kept {kept}", state, details={"deleted": doomed})


@dataclass(frozen=True)
class Comparison:
    """Two versions on the same test images: agreement, disagreements, accuracy of each."""

    a: int
    b: int
    agreement: float
    #: counts [10, 10]: row = A's digit, column = B's digit, only where they differ
    disagreements: np.ndarray
    accuracy_a: float
    accuracy_b: float
    count: int

    def table(self) -> Sequence[str]:
        head = "A\\B " + " ".join(f"{d:>5}" for d in range(contract.N_CLASSES))
        rows = [
            f"{a:>3} " + " ".join(f"{int(n) if n else '.':>5}" for n in self.disagreements[a])
            for a in range(contract.N_CLASSES)
        ]
        return [head, *rows]


def diff(
    repository: ModelRepository,
    a: int,
    b: int,
    settings: SessionSettings,
    test_set: MnistTestSet,
) -> Comparison:
    """Run versions ``a`` and ``b`` on the MNIST test set and compare their digits."""
    model_a = validated(repository, a, settings)
    model_b = validated(repository, b, settings)
    labels_a = predict_labels(model_a, test_set.images)
    labels_b = predict_labels(model_b, test_set.images)
    differ = labels_a != labels_b
    matrix = np.zeros((contract.N_CLASSES, contract.N_CLASSES), np.int64)
    np.add.at(matrix, (labels_a[differ], labels_b[differ]), 1)
    return Comparison(
        a=a,
        b=b,
        agreement=float(np.mean(~differ)),
        disagreements=matrix,
        accuracy_a=float(np.mean(labels_a == test_set.labels)),
        accuracy_b=float(np.mean(labels_b == test_set.labels)),
        count=len(test_set),
    )
