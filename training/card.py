"""The model card (card.json) and the self-test digits (selftest.json) written beside every model.

The repository fills in ``name``, ``version``, ``sha256`` and ``size`` when it publishes.
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
    N_CLASSES,
    SELFTEST_FILE,
    input_contract,
    output_contract,
)
from service.model.repository import sha256_bytes
from training.config import TrainConfig
from training.data import MnistData, Split
from training.evaluate import Evaluation
from training.fit import FitResult
from training.verify import Parity

#: the packages whose versions decide what a run produces
LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "scipy")

#: flags of the reproducing command, in order (the knobs only: paths belong to the machine)
_FLAGS: tuple[tuple[str, str], ...] = (
    ("hidden_layer_sizes", "--hidden-layers"),
    ("activation", "--activation"),
    ("solver", "--solver"),
    ("alpha", "--alpha"),
    ("batch_size", "--batch-size"),
    ("learning_rate", "--learning-rate"),
    ("learning_rate_init", "--learning-rate-init"),
    ("power_t", "--power-t"),
    ("momentum", "--momentum"),
    ("beta_1", "--beta-1"),
    ("beta_2", "--beta-2"),
    ("epsilon", "--epsilon"),
    ("validation_fraction", "--validation-fraction"),
    ("n_iter_no_change", "--patience"),
    ("tol", "--tol"),
    ("max_iter", "--epochs"),
    ("random_state", "--seed"),
    ("train_limit", "--train-limit"),
    ("augment_copies", "--augment-copies"),
    ("min_accuracy", "--min-accuracy"),
)
_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("nesterovs_momentum", "--nesterov", "--no-nesterov"),
    ("shuffle", "--shuffle", "--no-shuffle"),
    ("early_stopping", "--early-stopping", "--no-early-stopping"),
    ("augment", "--augment", "--no-augment"),
)


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
    """A ``mnist-train`` command line that sets every knob of ``config`` explicitly."""
    words = ["mnist-train"]
    for name, flag in _FLAGS:
        value = getattr(config, name)
        if value is None:
            continue
        if name == "hidden_layer_sizes":
            value = ",".join(str(n) for n in value)
        words += [flag, str(value)]
    for name, on, off in _SWITCHES:
        words.append(on if getattr(config, name) else off)
    return shlex.join(words)


def select_selftest(test: Split) -> np.ndarray:
    """Indices of the first test digit of each class, in class order."""
    return np.array([int(np.flatnonzero(test.labels == digit)[0]) for digit in CLASS_LABELS])


def build_selftest(
    test: Split, onnx_labels: np.ndarray, onnx_probabilities: np.ndarray
) -> tuple[bytes, dict[str, Any]]:
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
    return data, {"file": SELFTEST_FILE, "sha256": sha256_bytes(data), "count": len(chosen)}


def build_card(
    *,
    config: TrainConfig,
    data: MnistData,
    fitted: FitResult,
    evaluation: Evaluation,
    parity: Parity,
    baselines: dict[str, Any],
    selftest: dict[str, Any],
    invocation: list[str] | None = None,
    created: datetime | None = None,
) -> dict[str, Any]:
    """Everything a reader needs to trust and reproduce the model (DESIGN.md section 2)."""
    created = created or datetime.now(UTC)
    params = config.mlp_params()
    params["hidden_layer_sizes"] = list(config.hidden_layer_sizes)
    train_used = min(len(data.train), config.train_limit or len(data.train))
    metrics = evaluation.metrics()
    metrics.update(
        train_seconds=fitted.seconds,
        epochs=fitted.epochs,
        epoch_unit=fitted.unit,
        best_epoch=fitted.best_epoch,
        final_loss=fitted.final_loss,
        validation_accuracy=fitted.val_accuracy,
        validation_loss=fitted.val_loss,
        converged=fitted.converged,
    )
    return {
        "description": f"MLPClassifier {list(config.hidden_layer_sizes)} {config.activation}/"
        f"{config.solver}, trained with mnist-train",
        "input": input_contract(),
        "outputs": output_contract(),
        "class_labels": list(CLASS_LABELS),
        "num_classes": N_CLASSES,
        "framework": "scikit-learn MLPClassifier exported with skl2onnx",
        "params": params,
        "config": config.to_dict(),
        "data": {
            "source": "MNIST (LeCun, Cortes, Burges), CC BY-SA 3.0",
            "md5": dict(data.checksums),
            "train_available": len(data.train),
            "train_used": train_used,
            "train_size": fitted.train_size,
            "validation_size": fitted.validation_size,
            "test_size": len(data.test),
            "pixel_scale": "raw / 255",
        },
        "metrics": metrics,
        "training": {
            "converged": fitted.converged,
            "stop_reason": fitted.stop_reason,
            "restored_best_weights": fitted.restored_best,
            "epochs": fitted.epochs,
            "epoch_unit": fitted.unit,
            "seconds": fitted.seconds,
        },
        "converged": fitted.converged,
        "loss_curve": fitted.loss_curve,
        "validation_curve": {
            "val_accuracy": [r.val_accuracy for r in fitted.history],
            "val_loss": [r.val_loss for r in fitted.history],
        },
        "history": [r.to_dict() for r in fitted.history],
        "baselines": baselines,
        "parity": parity.to_dict(),
        "libraries": library_versions(),
        "command": reproducing_command(config),
        "invocation": shlex.join(["mnist-train", *invocation]) if invocation is not None else None,
        "created": created.isoformat(timespec="seconds"),
        "selftest": selftest,
        "host": {"machine": platform.machine(), "system": platform.system()},
    }
