"""The training pipeline composed in one place, in the order of the design's diagram:

load_mnist -> fit -> evaluate -> export_onnx -> verify_onnx -> report + card -> (gate) publish
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from service.model.contract import SELFTEST_FILE
from service.model.repository import ModelRepository, ModelVersion
from training.card import build_card, build_selftest
from training.config import TrainConfig
from training.data import DataError, MnistData, Split, load_mnist, scale_pixels
from training.evaluate import Evaluation, baselines, evaluate
from training.export import export_onnx
from training.fit import Distort, FitResult, fit
from training.progress import Reporter, SilentReporter, make_reporter
from training.report import build_report
from training.verify import ParityError, verify_onnx

#: exit codes of ``mnist-train``: each failure says what kind it was
EXIT_OK = 0
EXIT_USAGE = 2  # bad flag, config file or value (argparse uses 2 as well)
EXIT_DATA = 3  # MNIST files missing, corrupt or not downloadable
EXIT_BELOW_GATE = 4  # test accuracy under --min-accuracy: nothing published
EXIT_PARITY = 5  # ONNX does not match scikit-learn: nothing published


class QualityGateError(Exception):
    """The model is below the minimum accuracy; it is not published."""


@dataclass
class TrainedRun:
    """Everything one run produced, ready to publish (nothing is on disk yet)."""

    onnx_bytes: bytes
    card: dict[str, Any]
    report_files: dict[str, bytes]  # paths relative to the version folder
    selftest_bytes: bytes
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    seconds: float


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

    Raises ParityError when the ONNX graph does not reproduce scikit-learn's predictions.
    """
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    train = data.train.head(config.train_limit)
    fitted = fit(train, config, reporter, distort=distort)
    reporter.step(f"evaluating on {len(data.test)} test images")
    evaluation = evaluate(fitted.model, data.test)
    reporter.step("reference points: most-frequent-class and linear baselines")
    references = baselines(train, data.test, config.random_state)
    reporter.step("exporting to ONNX")
    onnx_bytes = export_onnx(fitted.model)
    reporter.step(f"verifying ONNX against scikit-learn on {len(data.test)} test images")
    parity = verify_onnx(
        onnx_bytes,
        evaluation.predicted_labels,
        evaluation.probabilities,
        scale_pixels(data.test.images),
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
        invocation=invocation,
    )
    reporter.step("rendering the report")
    report_files = _build_report(card, fitted, evaluation, data.test)
    card["report"] = {Path(path).stem: path for path in sorted(report_files)}
    return TrainedRun(
        onnx_bytes=onnx_bytes,
        card=card,
        report_files=report_files,
        selftest_bytes=selftest_bytes,
        history=[r.to_dict() for r in fitted.history],
        metrics=card["metrics"],
        seconds=time.perf_counter() - started,
    )


def publish_run(run: TrainedRun, models_dir: Path | str, min_accuracy: float) -> ModelVersion:
    """Apply the quality gate, then publish the model, card, report and self-test atomically."""
    accuracy = float(run.metrics["test_accuracy"])
    if accuracy < min_accuracy:
        raise QualityGateError(
            f"test accuracy {accuracy:.4f} is under the minimum {min_accuracy:.4f}; not published"
        )
    if not run.card["parity"]["passed"]:
        raise ParityError("ONNX parity failed; not published")
    extra_files = dict(run.report_files)
    extra_files[SELFTEST_FILE] = run.selftest_bytes
    return ModelRepository(models_dir).publish(run.onnx_bytes, run.card, extra_files)


def run(
    config: TrainConfig,
    *,
    invocation: list[str] | None = None,
    reporter: Reporter | None = None,
    data: MnistData | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The whole diagram for the CLI: load, train, gate, publish; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    reporter = reporter or make_reporter(config.progress)
    try:
        if data is None:
            # --progress none means silence, the loader's messages included
            log = io.StringIO() if config.progress == "none" else err
            data = load_mnist(config.data_dir, log=log)
        trained = train_run(config, data, reporter, invocation=invocation)
        version = publish_run(trained, config.models_dir, config.min_accuracy)
    except DataError as exc:
        print(f"mnist-train: data error: {exc}", file=err)
        return EXIT_DATA
    except ParityError as exc:
        print(f"mnist-train: {exc}; nothing was published", file=err)
        return EXIT_PARITY
    except QualityGateError as exc:
        print(f"mnist-train: quality gate: {exc}", file=err)
        return EXIT_BELOW_GATE
    metrics = trained.metrics
    message = (
        f"published {version.path} (version {version.version}): test accuracy "
        f"{metrics['test_accuracy']:.4f}, {metrics['epochs']} {metrics['epoch_unit']}s, "
        f"trained in {metrics['train_seconds']:.1f}s, whole run {trained.seconds:.1f}s"
    )
    # in JSON mode stdout carries only the epoch lines
    print(message, file=err if config.progress == "json" else out, flush=True)
    return EXIT_OK
