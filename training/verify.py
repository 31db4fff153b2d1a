"""Check the exported ONNX graph against the scikit-learn model on the whole test set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.model.contract import INPUT_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES

#: largest acceptable |p_onnx - p_sklearn|; float32 graphs differ from sklearn by ~1e-7
PROBABILITY_TOLERANCE = 1e-4


class ParityError(Exception):
    """The ONNX graph does not predict what the scikit-learn model predicts."""


@dataclass(frozen=True)
class Parity:
    """How closely ONNX follows scikit-learn on the same images."""

    count: int
    label_agreement: float
    label_mismatches: int
    max_abs_probability_diff: float
    tolerance: float
    onnx_labels: np.ndarray
    onnx_probabilities: np.ndarray

    @property
    def passed(self) -> bool:
        return self.label_mismatches == 0 and self.max_abs_probability_diff <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready figures written into the card."""
        return {
            "images": self.count,
            "label_agreement": self.label_agreement,
            "label_mismatches": self.label_mismatches,
            "max_abs_probability_diff": self.max_abs_probability_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "runtime": "onnxruntime CPUExecutionProvider",
        }


def run_onnx(onnx_bytes: bytes, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of the graph for float32 ``images`` [N, 784] in [0, 1]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the graph is ours; its optimiser notes are noise here
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(
        [OUTPUT_LABEL, OUTPUT_PROBABILITIES], {INPUT_NAME: images.astype(np.float32, copy=False)}
    )
    return np.asarray(labels), np.asarray(probabilities)


def verify_onnx(
    onnx_bytes: bytes,
    sklearn_labels: np.ndarray,
    sklearn_probabilities: np.ndarray,
    images: np.ndarray,
    tolerance: float = PROBABILITY_TOLERANCE,
) -> Parity:
    """Compare the graph's outputs on ``images`` with scikit-learn's; ParityError if they differ."""
    labels, probabilities = run_onnx(onnx_bytes, images)
    mismatches = int(np.sum(labels != sklearn_labels))
    parity = Parity(
        count=int(images.shape[0]),
        label_agreement=float(np.mean(labels == sklearn_labels)),
        label_mismatches=mismatches,
        max_abs_probability_diff=float(np.max(np.abs(probabilities - sklearn_probabilities))),
        tolerance=tolerance,
        onnx_labels=labels,
        onnx_probabilities=probabilities,
    )
    if not parity.passed:
        raise ParityError(
            f"ONNX parity failed on {parity.count} test images: {mismatches} labels differ from "
            f"scikit-learn's, max |probability difference| {parity.max_abs_probability_diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    return parity
