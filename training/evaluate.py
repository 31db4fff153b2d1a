"""Evaluate a fitted model on the test split, and the reference points every card carries."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.model.contract import CLASS_LABELS
from training.data import Split, scale_pixels
from training.fit import catch_convergence, log_loss

#: epochs of the linear reference model: enough to be a fair reference, quick on 60,000 images
LINEAR_BASELINE_EPOCHS = 10


@dataclass(frozen=True)
class Evaluation:
    """Test-set figures of one model, plus its predictions (for the report and the self-test)."""

    accuracy: float
    precision: list[float]
    recall: list[float]
    confusion: np.ndarray  # [10, 10], rows true, columns predicted
    log_loss: float
    predicted_labels: np.ndarray
    probabilities: np.ndarray
    count: int

    def metrics(self) -> dict[str, Any]:
        """The JSON-ready metrics written into the card."""
        return {
            "test_accuracy": self.accuracy,
            "test_error": 1.0 - self.accuracy,
            "test_count": self.count,
            "per_class_precision": self.precision,
            "per_class_recall": self.recall,
            "confusion_matrix": self.confusion.tolist(),
            "log_loss": self.log_loss,
        }


def evaluate(model: Any, test: Split) -> Evaluation:
    """Accuracy, per-class precision/recall, confusion matrix and log-loss on ``test``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probabilities = model.predict_proba(scale_pixels(test.images))
    predicted = np.asarray(model.classes_)[np.argmax(probabilities, axis=1)].astype(np.int64)
    labels = list(CLASS_LABELS)
    precision, recall, _, _ = precision_recall_fscore_support(
        test.labels, predicted, labels=labels, zero_division=0
    )
    return Evaluation(
        accuracy=float(np.mean(predicted == test.labels)),
        precision=[float(v) for v in precision],
        recall=[float(v) for v in recall],
        confusion=confusion_matrix(test.labels, predicted, labels=labels),
        log_loss=log_loss(test.labels, probabilities),
        predicted_labels=predicted,
        probabilities=probabilities.astype(np.float32),
        count=len(test),
    )


def baselines(train: Split, test: Split, seed: int) -> dict[str, Any]:
    """Test accuracy of a most-frequent-class baseline and of a linear model, on the same split."""
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import SGDClassifier

    x_train, x_test = scale_pixels(train.images), scale_pixels(test.images)
    dummy = DummyClassifier(strategy="most_frequent").fit(x_train, train.labels)
    started = time.perf_counter()
    linear = SGDClassifier(
        loss="log_loss", max_iter=LINEAR_BASELINE_EPOCHS, tol=1e-3, random_state=seed
    )
    with catch_convergence():  # a short reference fit need not converge
        linear.fit(x_train, train.labels)
    linear_seconds = time.perf_counter() - started
    return {
        "most_frequent": {
            "model": "DummyClassifier(strategy='most_frequent')",
            "test_accuracy": float(np.mean(dummy.predict(x_test) == test.labels)),
        },
        "linear": {
            "model": f"SGDClassifier(loss='log_loss', max_iter={LINEAR_BASELINE_EPOCHS}, "
            f"tol=1e-3, random_state={seed})",
            "test_accuracy": float(np.mean(linear.predict(x_test) == test.labels)),
            "train_seconds": linear_seconds,
        },
        "train_size": len(train),
    }
