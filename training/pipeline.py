"""The training pipeline composed in one place, in the order of the design's diagram:

load_mnist (+ feedback examples) -> (checks) -> fit -> evaluate -> export_onnx -> verify_onnx
-> drift reference -> report + card -> (gate) publish

``run`` maps every way a run can end to one line and a documented exit code (``EXIT_*``); no
traceback reaches the user.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from service.command_line import EXIT_BROKEN_PIPE, say, stop_if_output_closed
from service.errors import StoreUnavailable
from service.model.contract import (
    SELFTEST_FILE,
    FeedbackInfo,
    ModelCard,
    RejectSection,
    ThreadInfo,
    ThreadPool,
    load_section,
)
from service.model.drift import build_reference
from service.model.repository import ModelRepository, ModelVersion, RepositoryError
from training.calibrate import ERROR_REJECT_FILE, RELIABILITY_FILE, calibrate_run
from training.card import build_card, build_selftest
from training.checks import check_trainable
from training.config import ConfigError, TrainConfig, redact_url
from training.data import DataError, MnistData, Split, load_mnist, scale_pixels
from training.evaluate import Evaluation, baselines, evaluate
from training.export import export_onnx
from training.fit import (
    Distort,
    FitResult,
    FloatingPointErrors,
    TrainingDiverged,
    fit,
    floating_point_summary,
    remedy,
)
from training.progress import Reporter, SilentReporter, make_reporter
from training.report import build_report
from training.verify import ParityError, verify_onnx

if TYPE_CHECKING:
    from service.store.examples import FeedbackExamples

#: exit codes of ``mnist-train``: each failure says what kind it was
EXIT_OK = 0
EXIT_USAGE = 2  # bad flag, config file or value (argparse uses 2 as well), a diverging solver
EXIT_DATA = 3  # MNIST files missing, corrupt or not downloadable
EXIT_BELOW_GATE = 4  # test accuracy under --min-accuracy: nothing published
EXIT_PARITY = 5  # ONNX does not match scikit-learn: nothing published
EXIT_WRITE = 6  # the model repository cannot be written (permissions, disk full): nothing published
EXIT_BUG = 1  # an unexpected error: a bug to report (one line, the traceback only on request)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT): nothing published
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM): nothing published
EXIT_NOT_PROMOTED = 7  # --promote: published as a candidate, but the promote gate refused it

#: every exit code mnist-train documents, with what it means
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "published",
    EXIT_BUG: "unexpected error (a bug; MNIST_TRAIN_TRACEBACK=1 shows the traceback)",
    EXIT_USAGE: "bad configuration, or settings the data or the solver cannot support (a "
    "diverging solver)",
    EXIT_DATA: "MNIST files missing or corrupt",
    EXIT_BELOW_GATE: "test accuracy under --min-accuracy",
    EXIT_PARITY: "ONNX parity failure",
    EXIT_WRITE: "the model repository cannot be written (or its labels.json cannot be read)",
    EXIT_NOT_PROMOTED: "--promote refused by the promote gate: published as a candidate",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
    EXIT_BROKEN_PIPE: "standard output or error closed early (`| head`, `| true`) before "
    "publishing: nothing was published (closed after publishing: the code says what happened)",
}


class QualityGateError(Exception):
    """The model is below the minimum accuracy; it is not published."""


class RepositoryWriteError(Exception):
    """The model repository cannot be written (permissions, disk full); nothing is published."""


class Terminated(Exception):
    """SIGTERM arrived; the run stops as after Ctrl-C."""


@dataclass
class TrainedRun:
    """Everything one run produced, ready to publish (nothing is on disk yet)."""

    onnx_bytes: bytes
    card: ModelCard
    report_files: dict[str, bytes]  # paths relative to the version folder
    selftest_bytes: bytes
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    seconds: float


def thread_info(limit: int) -> ThreadInfo:
    """The native thread pools as threadpoolctl sees them now (inside the limit)."""
    from threadpoolctl import threadpool_info

    pools = tuple(
        ThreadPool(
            user_api=str(pool.get("user_api")),
            internal_api=str(pool.get("internal_api")),
            num_threads=int(pool.get("num_threads", 0)),
            version=pool.get("version"),
        )
        for pool in threadpool_info()
    )
    return ThreadInfo(limit=limit, pools=pools)


def _build_report(
    card: dict[str, Any], fitted: FitResult, evaluation: Evaluation, test: Split
) -> dict[str, bytes]:
    return build_report(
        card=card,
        history=[r.to_dict() for r in fitted.history],
        confusion=evaluation.confusion,
        test_images=test.images,
        test_labels=test.labels,
        predicted_labels=evaluation.predicted_labels,
        probabilities=evaluation.probabilities,
    )


def train_run(
    config: TrainConfig,
    data: MnistData,
    reporter: Reporter | None = None,
    *,
    invocation: list[str] | None = None,
    distort: Distort | None = None,
) -> TrainedRun:
    """Fit, evaluate, export, verify, and build the card, report and self-test (no publish).

    BLAS and OpenMP run on ``config.threads`` threads (threadpoolctl), recorded in the card.
    Raises ConfigError when the data cannot support the settings (training.checks), ParityError
    when the ONNX graph does not reproduce scikit-learn's predictions.
    """
    from threadpoolctl import threadpool_limits

    # numpy's overflow and invalid-value warnings (huge --alpha or --learning-rate-init) are
    # counted into the card instead of printed: every ending stays one line
    with threadpool_limits(limits=config.threads), FloatingPointErrors().counted() as errors:
        return _train_run(
            config, data, reporter, invocation, distort, thread_info(config.threads), errors
        )


def _train_run(
    config: TrainConfig,
    data: MnistData,
    reporter: Reporter | None,
    invocation: list[str] | None,
    distort: Distort | None,
    threads: ThreadInfo,
    errors: FloatingPointErrors,
) -> TrainedRun:
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    check_trainable(config, data.train)
    train = data.train.head(config.train_limit)
    feedback = None
    extra = None
    if config.feedback is not None:
        reporter.step("reading the feedback examples of the prediction store")
        feedback = load_feedback_examples(config)
        extra = feedback.training_split(config.feedback_weight)
    fitted = fit(train, config, reporter, distort=distort, extra=extra)
    reporter.step(f"evaluating on {len(data.test)} test images")
    evaluation = evaluate(fitted.model, data.test)
    reporter.step("reference points: most-frequent-class and linear baselines")
    references = baselines(train, data.test, config.seed)
    reporter.step("exporting to ONNX")
    onnx_bytes = export_onnx(fitted.model)
    reporter.step(f"verifying ONNX against scikit-learn on {len(data.test)} test images")
    parity = verify_onnx(
        onnx_bytes,
        evaluation.predicted_labels,
        evaluation.probabilities,
        scale_pixels(data.test.images),
    )
    reporter.step("reference statistics of the training inputs (for drift)")
    reference = build_reference(
        scale_pixels(train.images), parity.onnx_labels, parity.onnx_probabilities
    )
    selftest_bytes, selftest_entry = build_selftest(
        data.test, parity.onnx_labels, parity.onnx_probabilities
    )
    card = build_card(
        config=config,
        data=data,
        fitted=fitted,
        evaluation=evaluation,
        parity=parity,
        baselines=references,
        selftest=selftest_entry,
        onnx_bytes=onnx_bytes,
        threads=threads,
        invocation=invocation,
    )
    card = dataclasses.replace(
        card,
        drift_reference=reference.to_card(),
        feedback=None if feedback is None else feedback.card_section(config, fitted.model),
    )
    reporter.step("calibrating the reject option on the validation split")
    calibration = calibrate_run(onnx_bytes, train.images, train.labels, config)
    card = dataclasses.replace(
        card,
        training=dataclasses.replace(
            card.training, floating_point_errors=dict(errors.counts) or None
        ),
    )
    reporter.step("rendering the report")
    report_files = _build_report(card.to_json(), fitted, evaluation, data.test)
    report = {Path(path).stem: path for path in sorted(report_files)}
    reject = None
    if calibration is not None:
        reject = load_section(RejectSection, calibration.section)
        report.update({Path(name).stem: name for name in (ERROR_REJECT_FILE, RELIABILITY_FILE)})
        report_files.update(calibration.files)
    card = dataclasses.replace(card, report=report, reject=reject)
    return TrainedRun(
        onnx_bytes=onnx_bytes,
        card=card,
        report_files=report_files,
        selftest_bytes=selftest_bytes,
        history=[r.to_dict() for r in fitted.history],
        metrics=card.to_json()["metrics"],
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class FeedbackData:
    """The store's labelled examples for one run: the training share (the newest ``cap``) and
    the held-out share, a second test set."""

    train: FeedbackExamples
    test: FeedbackExamples
    available: int

    def training_split(self, weight: int) -> Split:
        """The training share, each example repeated ``weight`` times."""
        return Split(
            np.repeat(self.train.images, weight, axis=0), np.repeat(self.train.labels, weight)
        )

    def card_section(self, config: TrainConfig, model: Any) -> FeedbackInfo:
        """The card's ``feedback`` section: counts, dates, and the held-out accuracy."""
        created = sorted(self.train.created + self.test.created)
        accuracy = None
        if len(self.test):
            predicted = model.predict(scale_pixels(self.test.images))
            accuracy = float(np.mean(np.asarray(predicted) == self.test.labels))
        return FeedbackInfo(
            source=redact_url(config.feedback or ""),
            examples_available=self.available,
            train_examples=len(self.train),
            train_corrected=self.train.corrected,
            weight=config.feedback_weight,
            cap=config.feedback_cap,
            holdout_share=config.feedback_holdout,
            test_examples=len(self.test),
            test_accuracy=accuracy,
            first=created[0].isoformat(timespec="seconds") if created else None,
            last=created[-1].isoformat(timespec="seconds") if created else None,
        )


def load_feedback_examples(config: TrainConfig) -> FeedbackData:
    """The feedback examples of ``config.feedback``; DataError when the store cannot be read."""
    from service.store.examples import load_feedback  # SQLAlchemy only when asked for

    assert config.feedback is not None
    try:
        train, test = load_feedback(config.feedback, config.feedback_holdout)
    except StoreUnavailable as exc:
        raise DataError(f"feedback database {redact_url(config.feedback)}: {exc.message}") from exc
    return FeedbackData(
        train=train.newest(config.feedback_cap), test=test, available=len(train) + len(test)
    )


def publish_run(run: TrainedRun, models_dir: Path | str, min_accuracy: float) -> ModelVersion:
    """Apply the quality gate, then publish the model, card, report and self-test atomically.

    Raises QualityGateError, ParityError, or RepositoryWriteError (nothing is left half-written).
    """
    accuracy = run.card.metrics.test_accuracy
    if accuracy < min_accuracy:
        raise QualityGateError(
            f"test accuracy {accuracy:.4f} is under the minimum {min_accuracy:.4f}; not published"
        )
    if not run.card.parity.passed:
        raise ParityError("ONNX parity failed; not published")
    extra_files = dict(run.report_files)
    extra_files[SELFTEST_FILE] = run.selftest_bytes
    try:
        return ModelRepository(models_dir).publish(run.onnx_bytes, run.card.to_json(), extra_files)
    except OSError as exc:
        raise RepositoryWriteError(_write_problem(Path(models_dir), exc)) from exc
    except RepositoryError as exc:  # labels.json or config.pbtxt broken since the check
        raise RepositoryWriteError(_state_problem(Path(models_dir), exc)) from exc


def _write_problem(models_dir: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space or choose another --models-dir"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "choose a folder you can write with --models-dir"
    else:
        fix = "check the folder or choose another --models-dir"
    where = f" ({exc.filename})" if exc.filename else ""
    return f"cannot write the model repository {models_dir}: {reason}{where}; {fix}"


def _state_problem(models_dir: Path, exc: RepositoryError) -> str:
    return (
        f"cannot publish into the model repository {models_dir}: {exc}; repair the file in "
        f"{ModelRepository(models_dir).model_dir} or choose another --models-dir"
    )


def check_writable(models_dir: Path) -> None:
    """RepositoryWriteError unless a version can be published into ``models_dir``: the folder
    and its model folder exist or can be made and can be written, and the serving state
    (labels.json, config.pbtxt) can be read.

    Checked before training, so a run of minutes does not end in a folder it cannot use.
    """
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryWriteError(_write_problem(models_dir, exc)) from exc
    repository = ModelRepository(models_dir)
    folders = [models_dir]
    if os.path.lexists(repository.model_dir):  # else publishing makes it
        folders.append(repository.model_dir)
    for folder in folders:
        if not folder.is_dir():
            raise RepositoryWriteError(
                f"cannot write the model repository {models_dir}: {folder} is not a folder; "
                f"choose a folder with --models-dir"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise RepositoryWriteError(
                _write_problem(
                    models_dir, PermissionError(errno.EACCES, "Permission denied", str(folder))
                )
            )
    if repository.model_dir.is_dir():
        try:
            repository.read_state()
        except RepositoryError as exc:
            raise RepositoryWriteError(_state_problem(models_dir, exc)) from exc


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread (the run stops as after Ctrl-C)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _is_stable(models_dir: Path, version: ModelVersion) -> bool:
    """Whether ``version`` serves as stable (the first version of an empty repository does)."""
    try:
        return ModelRepository(models_dir).read_state().stable == version.version
    except (RepositoryError, OSError):
        return False


def promote_version(
    version: ModelVersion, models_dir: Path | str, data_dir: Path | None
) -> subprocess.CompletedProcess[str]:
    """``mnist-models promote N``: the service's own gate decides (validation, self-test, test
    accuracy against stable); training does not import the serving code, it runs the command."""
    command = [sys.executable, "-m", "service.model.cli", "--models-dir", str(models_dir)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    command += ["promote", str(version.version)]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def run(
    config: TrainConfig,
    *,
    promote: bool = False,
    invocation: list[str] | None = None,
    reporter: Reporter | None = None,
    data: MnistData | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The whole diagram for the CLI: load, train, gate, publish (a candidate, served by nobody),
    then with ``promote`` the promote gate (mnist-models promote); returns the exit code.

    Every ending is one line on ``err`` and an exit code of ``EXIT_CODES``; with ``--progress
    json`` stdout ends with one ``{"event": "end", ...}`` record (version, path, test accuracy,
    seconds, exit code).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    started = time.perf_counter()
    version: ModelVersion | None = None
    trained: TrainedRun | None = None
    code, message = EXIT_OK, ""
    try:
        with _sigterm_raises():
            reporter = reporter or make_reporter(config.progress)
            check_writable(config.models_dir)
            if data is None:
                # --progress none means silence, the loader's messages included
                log = io.StringIO() if config.progress == "none" else err
                data = load_mnist(config.data_dir, log=log)
            trained = train_run(config, data, reporter, invocation=invocation)
            # a reader gone before anything was written stops the run here, as a write would
            stop_if_output_closed(out, err)
            version = publish_run(trained, config.models_dir, config.min_accuracy)
    except TrainingDiverged as exc:
        code, message = EXIT_USAGE, f"{exc}; nothing was published"
    except ConfigError as exc:
        code, message = EXIT_USAGE, f"configuration error: {exc}"
    except DataError as exc:
        code, message = EXIT_DATA, f"data error: {exc}"
    except ParityError as exc:
        code, message = EXIT_PARITY, f"{exc}; nothing was published"
    except QualityGateError as exc:
        code, message = EXIT_BELOW_GATE, f"quality gate: {exc}"
    except RepositoryWriteError as exc:
        code, message = EXIT_WRITE, f"{exc}; nothing was published"
    except KeyboardInterrupt:
        code, message = EXIT_INTERRUPTED, "interrupted; nothing was published"
    except Terminated:
        code, message = EXIT_TERMINATED, "terminated; nothing was published"
    except MemoryError:
        code, message = EXIT_BUG, "out of memory; try --train-limit or fewer --augment-copies"
    except BrokenPipeError:  # the reader went away before publishing: stop, as Unix tools do
        code = EXIT_BROKEN_PIPE
        message = "output closed early (its reader went away); nothing was published"
    except Exception as exc:  # the promise is one line, never a traceback: a bug says so
        if os.environ.get("MNIST_TRAIN_TRACEBACK"):
            raise
        code = EXIT_BUG
        message = (
            f"unexpected error, please report it: {type(exc).__name__}: {exc} "
            f"(MNIST_TRAIN_TRACEBACK=1 shows the traceback)"
        )
    if code != EXIT_OK and reporter is not None:
        # the ending below is the only line left on stderr (a reader gone: say() drops it too)
        with contextlib.suppress(BrokenPipeError):
            reporter.abort()
    seconds = time.perf_counter() - started
    if code == EXIT_OK and trained is not None and version is not None:
        card = trained.card
        stable = _is_stable(config.models_dir, version)
        role = (
            "stable: the repository had no stable version, so it serves now"
            if stable
            else "a candidate"
        )
        message = (
            f"published {version.path} (version {version.version}, {role}): test accuracy "
            f"{card.metrics.test_accuracy:.4f}, {card.metrics.epochs} {card.metrics.epoch_unit}s, "
            f"trained in {card.metrics.train_seconds:.1f}s, whole run {trained.seconds:.1f}s"
        )
        # in JSON mode stdout carries only the JSON records
        # from here on the version is published: a closed output no longer changes the code
        report_to = err if config.progress == "json" else out
        say(message, file=report_to)
        errors = card.training.floating_point_errors
        if errors:
            say(
                f"mnist-train: warning: numpy floating-point errors while training "
                f"({floating_point_summary(errors)}): "
                f"the settings take the solver past the range of floating point; "
                f"{remedy(config)} avoids them (recorded in the card)",
                file=err,
            )
        if not promote and not stable:
            say(
                f"not served until promoted: mnist-models --models-dir {config.models_dir} "
                f"promote {version.version}",
                file=report_to,
            )
        elif promote and not stable:  # stable already: nothing to promote
            decision = promote_version(version, config.models_dir, config.data_dir)
            if decision.returncode == 0:
                say(decision.stdout.strip(), file=report_to)
            else:
                why = decision.stderr.strip() or decision.stdout.strip()
                code = EXIT_NOT_PROMOTED
                message = f"version {version.version} stays a candidate: {why}"
                say(f"mnist-train: {message}", file=err)
    else:
        say(f"mnist-train: {message}", file=err)
    if config.progress == "json":
        record = {
            "event": "end",
            "exit_code": code,
            "published": version is not None,
            "version": version.version if version is not None else None,
            "path": str(version.path) if version is not None else None,
            "test_accuracy": trained.card.metrics.test_accuracy if trained is not None else None,
            "seconds": seconds,
            "error": message if code != EXIT_OK else None,
        }
        say(json.dumps(record), file=out)
    return code
