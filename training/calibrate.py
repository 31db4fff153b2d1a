"""The reject option, fitted on digits the model did not train on: the pipeline's calibration step.

Three things are fitted, all on the training data (the test set is never looked at):

* a temperature T for the model's probabilities (Guo et al. 2017, "On calibration of modern
  neural networks"), by minimising the negative log-likelihood on the validation split; the
  probabilities the ONNX graph returns are rescaled beside it as ``p ** (1/T)``, renormalised,
  which is exactly ``softmax(logits / T)``;
* the not-a-digit detector: for each class, the mean and the leading principal components of the
  training digits of that class (the subspace method, Watanabe's CLAFIC); an input's score is its
  squared distance to the subspace of the digit the model reads in it (a plain MLP's softmax is
  confident far from the data, this distance is not; a letter read as a 4 is farther from the
  4s than from the nearest class, so this catches more non-digits than the nearest subspace at
  the same share of digits flagged). The threshold is a high quantile of the scores of the
  validation digits;
* a not-a-digit discriminator (outlier exposure, Hendrycks et al. 2019): a logistic regression
  on the model's hidden layer, the log subspace distance and the log margin between the two
  likeliest digits, fitted to tell training digits from printed letters and symbols, scribbles
  and noise drawn by training/outliers.py (fonts the picture benchmark does not use); its
  threshold is a high quantile of its scores on the validation digits;
* Chow's rule (Chow 1970; reported as error at a given rejection rate by LeCun et al. 1998): a
  digit whose calibrated top probability is under ``min_confidence`` is rejected; the threshold
  is chosen on the validation split so that, together with the not-a-digit detector, the stated
  share of validation digits is rejected.

``calibrate`` returns a ``Calibration`` (the card's ``reject`` section, the subspaces file and
two report plots). ``python -m training.calibrate --models-dir models --version 1`` computes the
same for an already published version (recreating its validation split from its card) and writes
it into that version; ``--check`` only prints the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.command_line import integer_text
from service.model.contract import (
    CARD_FILE,
    INPUT_NAME,
    N_CLASSES,
    NOVELTY_FILE,
    OUTPUT_PROBABILITIES,
    PIXEL_SCALE,
    REJECT_SECTION,
)
from service.model.repository import ModelRepository, sha256_bytes, write_atomically

#: default target: this share of validation digits is rejected, both reasons together (at most 2%
#: may be rejected; 1.8% leaves room for the sampling error of a quantile of 6,000 digits, 0.2%)
TARGET_REJECT_RATE = 0.018
#: ...of which the subspace distance takes this share (its quantile on validation; the share of
#: the card's target.not_a_digit_rate when there is no discriminator)
NOVELTY_REJECT_RATE = 0.001
#: ...or this share when there is no discriminator (no fonts, or no ReLU MLP)
NOVELTY_ALONE_REJECT_RATE = 0.005
#: ...and the discriminator this share (its quantile on validation; the two overlap a little).
#: The split (0.1% + 0.5%, about 0.6% together) caught the most of a generated set of non-digits
#: (not the picture benchmark's) among the splits that flag under 0.65% of validation digits
DISCRIMINATOR_REJECT_RATE = 0.005
#: generated non-digits and training digits the discriminator is fitted on
OUTLIER_COUNT = 6000
DISCRIMINATOR_DIGITS = 20000
#: principal components kept per class (40 caught more of a set of generated non-digits than 5,
#: 10 or 20 at the same share of validation digits flagged; the set's seed and fonts are not the
#: picture benchmark's)
COMPONENTS_PER_CLASS = 40
#: bins of the reliability diagram and of the expected calibration error
CALIBRATION_BINS = 15
ERROR_REJECT_FILE = "report/error_reject.png"
RELIABILITY_FILE = "report/reliability.png"


#: a digit is at most this wide for its height (the quantile over training digits): a word is not
ASPECT_QUANTILE = 0.999
#: a pixel (0..1) brighter than this is ink, for the ink's box
ASPECT_INK = 0.1


def ink_aspect(images: np.ndarray) -> np.ndarray:
    """float64 [N]: width / height of the box around the ink of float32 [N, 784] images."""
    ink = images.reshape(-1, 28, 28) > ASPECT_INK
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    index = np.arange(28)
    height = np.where(rows, index, -1).max(axis=1) - np.where(rows, index, 99).min(axis=1) + 1
    width = np.where(cols, index, -1).max(axis=1) - np.where(cols, index, 99).min(axis=1) + 1
    return np.where(height > 0, width / np.maximum(height, 1), 0.0)


@dataclass(frozen=True)
class Subspaces:
    """Per-class means float32 [10, 784] and orthonormal components float32 [10, k, 784]."""

    means: np.ndarray
    components: np.ndarray

    def scores(self, images: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray:
        """float64 [N]: squared distance of each float32 [N, 784] image (0..1) to the subspace of
        its ``predicted`` class (int [N]), or to the nearest class subspace without it (the
        residual after projecting onto that class's mean + components)."""
        residuals = np.empty((len(images), len(self.means)))
        for digit, (mean, basis) in enumerate(zip(self.means, self.components, strict=True)):
            centred = images - mean
            projected = centred @ basis.T
            residuals[:, digit] = np.einsum("ij,ij->i", centred, centred) - np.einsum(
                "ij,ij->i", projected, projected
            )
        if predicted is None:
            chosen = residuals.min(axis=1)
        else:
            chosen = residuals[np.arange(len(images)), predicted]
        return np.asarray(np.maximum(chosen, 0.0))

    def to_bytes(self, **extra: np.ndarray) -> bytes:
        """The .npz file served beside the model (no pickles: plain float32 arrays), with the
        discriminator's arrays when given."""
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"means": self.means, "components": self.components, **extra}
        np.savez(buffer, **arrays)
        return buffer.getvalue()


def fit_subspaces(images: np.ndarray, labels: np.ndarray, components: int) -> Subspaces:
    """Per-class PCA (scikit-learn, randomized SVD) of float32 [N, 784] images in 0..1."""
    from sklearn.decomposition import PCA

    means, bases = [], []
    for digit in range(N_CLASSES):
        members = images[labels == digit]
        pca = PCA(n_components=components, svd_solver="randomized", random_state=0)
        pca.fit(members)
        means.append(pca.mean_)
        bases.append(pca.components_)
    return Subspaces(np.asarray(means, np.float32), np.asarray(bases, np.float32))


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """float64 [N, 10]: softmax(logits / T) from softmax(logits), as p ** (1/T) renormalised."""
    logs = np.log(np.clip(probabilities.astype(np.float64), 1e-30, 1.0)) / temperature
    logs -= logs.max(axis=1, keepdims=True)
    scaled = np.exp(logs)
    return np.asarray(scaled / scaled.sum(axis=1, keepdims=True))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood (bounded Brent)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        scaled = with_temperature(probabilities, float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(scaled[rows, labels], 1e-30, 1.0))))

    found = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict[str, float]]]:
    """ECE (Naeini et al. 2015) over equal-width confidence bins, and the bins themselves."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total, table = 0.0, []
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        if count == 0:
            continue
        accuracy = float(correct[members].mean())
        mean_confidence = float(confidence[members].mean())
        total += count / len(labels) * abs(accuracy - mean_confidence)
        table.append(
            {
                "low": float(edges[index]),
                "high": float(edges[index + 1]),
                "count": count,
                "accuracy": accuracy,
                "confidence": mean_confidence,
            }
        )
    return float(total), table


def error_reject_curve(
    confidence: np.ndarray, correct: np.ndarray, flagged: np.ndarray, rates: Sequence[float]
) -> list[dict[str, float]]:
    """Error among accepted digits when the least confident ones are rejected, per reject rate
    (the not-a-digit ``flagged`` ones always rejected first)."""
    order = np.lexsort((confidence, ~flagged))  # flagged first, then by rising confidence
    curve = []
    count = len(confidence)
    for rate in rates:
        rejected = max(round(rate * count), int(flagged.sum()))
        kept = order[rejected:]
        error = float(1.0 - correct[kept].mean()) if len(kept) else 0.0
        curve.append({"reject_rate": rejected / count, "error_accepted": error})
    return curve


def hidden_layer(onnx_bytes: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """The first dense layer of a ReLU MLP's ONNX graph (skl2onnx: Cast, MatMul, Add, Relu):
    weights float32 [784, H] and biases float32 [H]; None for any other graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(onnx_bytes).graph
    constants = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    ops = [node for node in graph.node if node.op_type != "Cast"]
    if [node.op_type for node in ops[:3]] != ["MatMul", "Add", "Relu"]:
        return None
    weights = next((constants[n] for n in ops[0].input if n in constants), None)
    biases = next((constants[n] for n in ops[1].input if n in constants), None)
    if weights is None or biases is None or weights.ndim != 2:
        return None
    return weights.astype(np.float32), biases.reshape(-1).astype(np.float32)


def discriminator_features(
    images: np.ndarray,
    probabilities: np.ndarray,
    residual: np.ndarray,
    hidden: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """float64 [N, H + 2]: the hidden layer relu(x W + b), log(residual + 1e-3) and the log
    margin log p1 - log p2 of float32 [N, 784] images, their probabilities and subspace distances
    (the same as service/model/reject.py computes)."""
    weights, biases = hidden
    activations = np.maximum(images @ weights + biases, 0.0)
    logs = np.log(np.clip(np.sort(probabilities.astype(np.float64), axis=1), 1e-30, 1.0))
    margin = logs[:, -1] - logs[:, -2]
    return np.column_stack([activations, np.log(residual + 1e-3), margin]).astype(np.float64)


@dataclass(frozen=True)
class DiscriminatorData:
    """What the discriminator is fitted on: training digits and generated non-digits (float32
    [N, 784] in 0..1) with the model's probabilities, and the model's first layer."""

    digits: np.ndarray
    digit_probabilities: np.ndarray
    outliers: np.ndarray
    outlier_probabilities: np.ndarray
    hidden: tuple[np.ndarray, np.ndarray]


def fit_discriminator(data: DiscriminatorData, subspaces: Subspaces) -> tuple[np.ndarray, float]:
    """Logistic regression digits (0) vs non-digits (1) on standardised features, folded back to
    raw features: float32 weights [H + 2] and the bias of ``features @ weights + bias``."""
    from sklearn.linear_model import LogisticRegression

    sets = [
        discriminator_features(
            images,
            probabilities,
            subspaces.scores(images, probabilities.argmax(axis=1)),
            data.hidden,
        )
        for images, probabilities in (
            (data.digits, data.digit_probabilities),
            (data.outliers, data.outlier_probabilities),
        )
    ]
    mean, scale = sets[0].mean(axis=0), sets[0].std(axis=0) + 1e-6
    features = (np.vstack(sets) - mean) / scale
    target = np.r_[np.zeros(len(sets[0])), np.ones(len(sets[1]))]
    model = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")
    model.fit(features, target)
    weights = model.coef_[0] / scale
    bias = float(model.intercept_[0] - (mean * weights).sum())
    return weights.astype(np.float32), bias


@dataclass
class Calibration:
    """What the calibration step produced: the card section and the files for the version."""

    section: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)


def calibrate(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    validation_images: np.ndarray,
    validation_labels: np.ndarray,
    validation_probabilities: np.ndarray,
    *,
    target_reject_rate: float = TARGET_REJECT_RATE,
    novelty_reject_rate: float | None = None,
    components: int = COMPONENTS_PER_CLASS,
    discriminator: DiscriminatorData | None = None,
    discriminator_reject_rate: float = DISCRIMINATOR_REJECT_RATE,
) -> Calibration:
    """Fit temperature, subspaces and thresholds; images float32 [N, 784] in 0..1.

    ``validation_probabilities`` float32 [N, 10] are the model's (the ONNX graph's) answers on
    the validation images, which the model did not train on.
    """
    subspaces = fit_subspaces(train_images, train_labels, components)
    max_aspect = float(np.quantile(ink_aspect(train_images), ASPECT_QUANTILE))
    novelty = subspaces.scores(validation_images, validation_probabilities.argmax(axis=1))
    if novelty_reject_rate is None:
        novelty_reject_rate = (
            NOVELTY_ALONE_REJECT_RATE if discriminator is None else NOVELTY_REJECT_RATE
        )
    novelty_threshold = float(np.quantile(novelty, 1.0 - novelty_reject_rate))
    flagged = (novelty > novelty_threshold) | (ink_aspect(validation_images) > max_aspect)
    learned: dict[str, Any] = {}
    extra: dict[str, np.ndarray] = {}
    if discriminator is not None:
        weights, bias = fit_discriminator(discriminator, subspaces)
        scores = (
            discriminator_features(
                validation_images, validation_probabilities, novelty, discriminator.hidden
            )
            @ weights.astype(np.float64)
            + bias
        )
        threshold = float(np.quantile(scores, 1.0 - discriminator_reject_rate))
        flagged |= scores > threshold
        extra = {
            "hidden_weights": discriminator.hidden[0],
            "hidden_biases": discriminator.hidden[1],
            "discriminator_weights": weights,
            "discriminator_bias": np.asarray(bias, dtype=np.float32),
        }
        learned = {
            "discriminator_threshold": threshold,
            "discriminator": "logistic regression on relu(x W + b) of the model's hidden layer "
            "(hidden_weights, hidden_biases), log(distance + 0.001) and the log margin of the "
            f"two likeliest digits; fitted on {len(discriminator.digits)} training digits "
            f"against {len(discriminator.outliers)} non-digits of training/outliers.py; "
            f"not_a_digit when features @ discriminator_weights + discriminator_bias is over "
            f"the threshold ({100 * discriminator_reject_rate:g}% of validation digits)",
        }

    temperature = fit_temperature(validation_probabilities, validation_labels)
    calibrated = with_temperature(validation_probabilities, temperature)
    ece_before, _ = expected_calibration_error(
        validation_probabilities.astype(np.float64), validation_labels
    )
    ece_after, bins = expected_calibration_error(calibrated, validation_labels)
    if ece_after >= ece_before:  # the temperature does not help: keep the model's own scale
        temperature, ece_after = 1.0, ece_before
        calibrated = validation_probabilities.astype(np.float64)
        _, bins = expected_calibration_error(calibrated, validation_labels)

    confidence = calibrated.max(axis=1)
    correct = calibrated.argmax(axis=1) == validation_labels
    budget = round(target_reject_rate * len(confidence)) - int(flagged.sum())
    remaining = np.sort(confidence[~flagged])
    min_confidence = float(remaining[budget]) if budget > 0 else 0.0
    rejected = flagged | (confidence < min_confidence)
    rates = [0.0, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1]
    curve = error_reject_curve(confidence, correct, flagged, rates)
    data = subspaces.to_bytes(**extra)
    section = {
        "rule": "Chow: reject when the temperature-scaled top probability is under "
        "min_confidence; not_a_digit when the distance to the predicted digit's subspace is "
        "over novelty.threshold",
        "target": {
            "split": "validation",
            "reject_rate": target_reject_rate,
            "not_a_digit_rate": novelty_reject_rate,
            **(
                {"discriminator_rate": discriminator_reject_rate}
                if discriminator is not None
                else {}
            ),
        },
        "temperature": temperature,
        "min_confidence": min_confidence,
        "validation": {
            "size": len(confidence),
            "rejected": float(rejected.mean()),
            "not_a_digit": float(flagged.mean()),
            "error_all": float(1.0 - correct.mean()),
            "error_accepted": float(1.0 - correct[~rejected].mean()),
            "ece_model": ece_before,
            "ece_calibrated": ece_after,
            "error_reject_curve": curve,
            "reliability": bins,
        },
        "novelty": {
            "file": NOVELTY_FILE,
            "sha256": sha256_bytes(data),
            "score": "squared distance to the subspace (mean + principal components of that "
            "class's training digits) of the digit the model predicts, pixels in 0..1",
            "subspace": "predicted",
            "components_per_class": components,
            "fitted_on": f"{len(train_labels)} training digits (the validation split held out)",
            "threshold": novelty_threshold,
            "max_aspect": max_aspect,
            "aspect": f"width / height of the ink's box in the 28x28 image (ink > {ASPECT_INK}); "
            f"max_aspect is the {100 * ASPECT_QUANTILE:g}th percentile over the training digits",
            **learned,
        },
    }
    files = {NOVELTY_FILE: data}
    files.update(plots(section, calibrated, validation_labels, confidence, correct, flagged))
    return Calibration(section=section, files=files)


def plots(
    section: dict[str, Any],
    calibrated: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    correct: np.ndarray,
    flagged: np.ndarray,
) -> dict[str, bytes]:
    """The error-reject curve and the reliability diagram (with the ECE) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    files: dict[str, bytes] = {}
    rates = list(np.linspace(0.0, 0.1, 41))
    curve = error_reject_curve(confidence, correct, flagged, rates)
    figure, axes = plt.subplots(figsize=(7.0, 4.5), dpi=100)
    axes.plot(
        [100 * p["reject_rate"] for p in curve],
        [100 * p["error_accepted"] for p in curve],
        marker=".",
    )
    chosen = section["validation"]
    axes.axvline(100 * chosen["rejected"], color="grey", linestyle="--", label="chosen threshold")
    axes.set_xlabel("rejected digits (%)")
    axes.set_ylabel("error among accepted digits (%)")
    axes.set_title("Error-reject curve (validation split)")
    axes.legend()
    files[ERROR_REJECT_FILE] = _png(figure)
    plt.close(figure)

    bins = section["validation"]["reliability"]
    figure, axes = plt.subplots(figsize=(5.5, 5.0), dpi=100)
    centres = [(b["low"] + b["high"]) / 2 for b in bins]
    axes.bar(centres, [b["accuracy"] for b in bins], width=1 / CALIBRATION_BINS, edgecolor="k")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--")
    axes.set_xlabel("confidence (temperature-scaled top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(
        f"Reliability (validation): ECE {100 * section['validation']['ece_calibrated']:.2f}% "
        f"(model {100 * section['validation']['ece_model']:.2f}%), T={section['temperature']:.2f}"
    )
    files[RELIABILITY_FILE] = _png(figure)
    plt.close(figure)
    return files


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def calibrate_run(
    onnx_bytes: bytes, train_images: np.ndarray, train_labels: np.ndarray, config: Any
) -> Calibration | None:
    """The pipeline's step: recreate fit's validation split of the raw uint8 [N, 784] training
    images, run the ONNX graph on it and calibrate; None without a validation split (or with
    too few digits per class for the subspaces)."""
    import onnxruntime as ort

    from training.fit import validation_split

    images = train_images.astype(np.float32) * np.float32(PIXEL_SCALE)
    x_train, y_train, x_val, y_val = validation_split(images, train_labels, config)
    if x_val is None or y_val is None:
        return None
    fewest = int(np.bincount(y_train, minlength=N_CLASSES).min())
    if fewest < 3 or len(np.unique(y_val)) < N_CLASSES:
        return None
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])

    def probabilities_of(images: np.ndarray) -> np.ndarray:
        [found] = session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: images})
        return np.asarray(found)

    return calibrate(
        x_train,
        y_train,
        x_val,
        y_val,
        probabilities_of(x_val),
        components=min(COMPONENTS_PER_CLASS, fewest - 1),
        discriminator=_discriminator_data(onnx_bytes, x_train, probabilities_of, config),
    )


def _discriminator_data(
    onnx_bytes: bytes, x_train: np.ndarray, probabilities_of: Any, config: Any
) -> DiscriminatorData | None:
    """Digits and generated non-digits for the discriminator; None when the model is no ReLU MLP
    or the fonts are missing (the card then has the subspace rule alone)."""
    from training import outliers

    hidden = hidden_layer(onnx_bytes)
    if hidden is None or not outliers.fonts_available():
        return None
    rng = np.random.default_rng(int(config.seed))
    picked = rng.choice(len(x_train), min(DISCRIMINATOR_DIGITS, len(x_train)), replace=False)
    digits = np.ascontiguousarray(x_train[np.sort(picked)])
    # about one non-digit for three digits: a short run (--train-limit) stays short
    count = min(OUTLIER_COUNT, max(100, len(digits) // 3))
    generated = outliers.non_digit_fields(count, seed=int(config.seed))
    return DiscriminatorData(
        digits=digits,
        digit_probabilities=probabilities_of(digits),
        outliers=generated,
        outlier_probabilities=probabilities_of(generated),
        hidden=hidden,
    )


# -- an already published version -------------------------------------------------------------


def calibrate_version(
    models_dir: Path, version: int, data_dir: Path | None, *, write: bool
) -> dict[str, Any]:
    """Calibrate a published version from its card's split; write it in when ``write``."""
    from training.config import TrainConfig
    from training.data import load_mnist

    found = ModelRepository(models_dir).get(version)
    onnx_bytes, card = found.read_verified()
    data = load_mnist(data_dir, log=sys.stderr)
    settings = card["config"]  # older cards name the seed random_state
    config = TrainConfig(
        validation_fraction=float(settings["validation_fraction"]),
        seed=int(settings.get("seed", settings.get("random_state", 0))),
    )
    train = data.train.head(card["config"].get("train_limit"))
    result = calibrate_run(onnx_bytes, train.images, train.labels, config)
    if result is None:
        raise SystemExit("the version was trained without a validation split: nothing to fit on")
    if write:
        for name, content in result.files.items():
            target = found.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, content)
        card[REJECT_SECTION] = result.section
        card.setdefault("report", {}).update(
            {Path(name).stem: name for name in (ERROR_REJECT_FILE, RELIABILITY_FILE)}
        )
        text = json.dumps(card, indent=2, sort_keys=True) + "\n"
        write_atomically(found.path / CARD_FILE, text.encode())
    return result.section


def main(argv: list[str] | None = None) -> int:
    """CLI: calibrate a published version (``--write``) or only print what it would be."""
    parser = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--version", type=integer_text, default=None, help="default: the latest")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--write", action="store_true", help="write the section into the card")
    args = parser.parse_args(argv)
    version = args.version
    if version is None:
        latest = ModelRepository(args.models_dir).latest()
        if latest is None:
            print(f"no model in {args.models_dir}", file=sys.stderr)
            return 2
        version = latest.version
    section = calibrate_version(args.models_dir, version, args.data_dir, write=args.write)
    shown = {k: v for k, v in section["validation"].items() if k not in ("reliability",)}
    print(
        json.dumps(
            {
                "temperature": section["temperature"],
                "min_confidence": section["min_confidence"],
                "novelty_threshold": section["novelty"]["threshold"],
                "discriminator_threshold": section["novelty"].get("discriminator_threshold"),
                "validation": shown,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
