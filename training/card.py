"""The model card (card.json) and the self-test digits (selftest.json) written beside every model.

The card is ``service.model.contract.ModelCard``; the repository numbers it when it publishes.
"""

from __future__ import annotations

import json
import platform
import shlex
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np

from service.model.contract import (
    CLASS_LABELS,
    INPUT,
    MODEL_NAME,
    N_CLASSES,
    OUTPUTS,
    SELFTEST_FILE,
    Baselines,
    DataInfo,
    EpochFigures,
    Metrics,
    ModelCard,
    ParityInfo,
    SelftestRef,
    ThreadInfo,
    TrainingInfo,
    ValidationCurve,
    load_section,
)
from service.model.repository import sha256_bytes
from training.config import SETTINGS, TrainConfig
from training.data import MnistData, Split
from training.evaluate import Evaluation
from training.fit import FitResult
from training.verify import Parity

#: the packages whose versions decide what a run produces
LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "scipy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the model, and Python's."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def reproducing_command(config: TrainConfig) -> str:
    """A ``mnist-train`` command that sets every knob the solver uses (paths stay out: they
    belong to the machine), in the order of the settings table."""
    words = ["mnist-train"]
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if not setting.in_command or value is None or config.solver not in setting.solvers:
            continue
        if setting.is_switch:
            words.append(setting.flag if value else "--no-" + setting.flag[2:])
            continue
        if isinstance(value, tuple):
            value = ",".join(str(n) for n in value)
        words += [setting.flag, str(value)]
    return shlex.join(words)


def select_selftest(test: Split) -> np.ndarray:
    """Indices of the first test digit of each class, in class order."""
    return np.array([int(np.flatnonzero(test.labels == digit)[0]) for digit in CLASS_LABELS])


def build_selftest(
    test: Split, onnx_labels: np.ndarray, onnx_probabilities: np.ndarray
) -> tuple[bytes, SelftestRef]:
    """selftest.json (one raw test digit per class and what the ONNX graph answers for it) and
    the card's ``selftest`` entry."""
    chosen = select_selftest(test)
    document = {
        "images": test.images[chosen].astype(int).tolist(),
        "labels": test.labels[chosen].astype(int).tolist(),
        "expected_labels": onnx_labels[chosen].astype(int).tolist(),
        "expected_probabilities": [
            [float(p) for p in row] for row in onnx_probabilities[chosen].astype(np.float32)
        ],
    }
    data = (json.dumps(document) + "\n").encode()
    return data, SelftestRef(file=SELFTEST_FILE, sha256=sha256_bytes(data), count=len(chosen))


def build_card(
    *,
    config: TrainConfig,
    data: MnistData,
    fitted: FitResult,
    evaluation: Evaluation,
    parity: Parity,
    baselines: dict[str, Any],
    selftest: SelftestRef,
    onnx_bytes: bytes,
    threads: ThreadInfo | None = None,
    invocation: list[str] | None = None,
    created: datetime | None = None,
) -> ModelCard:
    """Everything a reader needs to trust and reproduce the model (DESIGN.md section 2).

    The card says version 0 until the repository publishes it and numbers it.
    """
    created = created or datetime.now(UTC)
    train_used = min(len(data.train), config.train_limit or len(data.train))
    metrics = evaluation.metrics()
    return ModelCard(
        name=MODEL_NAME,
        version=0,
        sha256=sha256_bytes(onnx_bytes),
        size=len(onnx_bytes),
        description=f"MLPClassifier {list(config.hidden_layers)} {config.activation}/"
        f"{config.solver}, trained with mnist-train",
        input=INPUT,
        outputs=OUTPUTS,
        class_labels=CLASS_LABELS,
        num_classes=N_CLASSES,
        framework="scikit-learn MLPClassifier exported with skl2onnx",
        params=config.mlp_params(),
        config=config.to_dict(),
        data=DataInfo(
            source="MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0",
            md5=dict(data.checksums),
            train_available=len(data.train),
            train_used=train_used,
            train_size=fitted.train_size,
            validation_size=fitted.validation_size,
            test_size=len(data.test),
            pixel_scale="raw / 255",
        ),
        metrics=Metrics(
            test_accuracy=metrics["test_accuracy"],
            test_error=metrics["test_error"],
            test_count=metrics["test_count"],
            per_class_precision=tuple(metrics["per_class_precision"]),
            per_class_recall=tuple(metrics["per_class_recall"]),
            confusion_matrix=tuple(tuple(row) for row in metrics["confusion_matrix"]),
            log_loss=metrics["log_loss"],
            train_seconds=fitted.seconds,
            epochs=fitted.epochs,
            epoch_unit=fitted.unit,
            best_epoch=fitted.best_epoch,
            final_loss=fitted.final_loss,
            validation_accuracy=fitted.val_accuracy,
            validation_loss=fitted.val_loss,
            converged=fitted.converged,
        ),
        training=TrainingInfo(
            converged=fitted.converged,
            stop_reason=fitted.stop_reason,
            restored_best_weights=fitted.restored_best,
            epochs=fitted.epochs,
            epoch_unit=fitted.unit,
            seconds=fitted.seconds,
            threads=threads,
        ),
        converged=fitted.converged,
        loss_curve=tuple(fitted.loss_curve),
        validation_curve=ValidationCurve(
            val_accuracy=tuple(r.val_accuracy for r in fitted.history),
            val_loss=tuple(r.val_loss for r in fitted.history),
        ),
        history=tuple(EpochFigures(**r.to_dict()) for r in fitted.history),
        baselines=load_section(Baselines, baselines),
        parity=load_section(ParityInfo, parity.to_dict()),
        libraries=library_versions(),
        command=reproducing_command(config),
        invocation=shlex.join(["mnist-train", *invocation]) if invocation is not None else None,
        created=created.isoformat(timespec="seconds"),
        selftest=selftest,
        host={"machine": platform.machine(), "system": platform.system()},
    )
