"""Error-reject curves of several rejection scores on a version's validation split (no test set).

    .venv/bin/python bench/reject_scores.py --models-dir models --version 1 \\
        --data-dir ../shared/data/mnist

Recreates the version's validation split from its card (the digits its model never trained on,
as training/calibrate.py does), runs the ONNX graph on them and prints, per score, the error
among the accepted digits when the given shares of the least confident digits are rejected (one
markdown table; the count of errors left in brackets), then the same with the version's
not-a-digit rejections counted first, as the service decides. The scores:

* the top probability (Chow 1970), the card's temperature-scaled one (the served rule), the
  margin p1 - p2 and its log, the negative entropy;
* the not-a-digit signals: the discriminator's score and the squared distance to the predicted
  digit's subspace, and how much farther that subspace is than the nearest one (the subspace
  classifier disagreeing with the model);
* a logistic regression predicting a correct answer from [log margin, log distance, top
  probability], fitted on four fifths of the validation digits and scored on the fifth left out
  (five folds: every digit is scored by a fit that did not see it);
* test-time shifts: the mean probability of the predicted digit over the image and its four
  one-pixel shifts (the model run five times).

The MNIST test images are never read here: every choice about the reject option is made on
these figures. Not part of the test run; a few seconds of CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.model.contract import INPUT_NAME, NOVELTY_FILE, OUTPUT_PROBABILITIES, PIXEL_SCALE
from training.calibrate import Subspaces, discriminator_features, ink_aspect, with_temperature
from training.config import TrainConfig
from training.data import load_mnist
from training.fit import validation_split

RATES = (0.01, 0.015, 0.02, 0.03, 0.05)


def error_at(
    score: np.ndarray, correct: np.ndarray, rate: float, first: np.ndarray
) -> tuple[float, int, float]:
    """(error among accepted, errors left, share rejected): the ``first`` ones (bool [N]) and
    then the lowest ``score`` ones rejected until ``rate`` of the digits are."""
    order = np.lexsort((score, ~first))
    kept = order[max(round(rate * len(score)), int(first.sum())) :]
    wrong = int((~correct[kept]).sum())
    return wrong / len(kept), wrong, 1.0 - len(kept) / len(score)


def out_of_fold(features: np.ndarray, correct: np.ndarray, folds: int = 5) -> np.ndarray:
    """Logistic-regression log-odds of a correct answer, each digit scored by a fit on the
    other folds (standardised features, stratified folds, seed 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)
    scores = np.zeros(len(x))
    for fitted, scored in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, correct):
        model = LogisticRegression(max_iter=1000).fit(x[fitted], correct[fitted])
        scores[scored] = model.decision_function(x[scored])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--name", default="mnist")
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    folder = args.models_dir / args.name / str(args.version)
    card = json.loads((folder / "card.json").read_text())
    reject = card.get("reject")
    if reject is None:
        print(f"{folder}: the card has no reject section", file=sys.stderr)
        return 2
    settings = card["config"]
    config = TrainConfig(
        validation_fraction=float(settings["validation_fraction"]),
        seed=int(settings.get("seed", 0)),
    )
    train = load_mnist(args.data_dir, log=sys.stderr).train.head(settings.get("train_limit"))
    images = train.images.astype(np.float32) * np.float32(PIXEL_SCALE)
    _, _, x_val, y_val = validation_split(images, train.labels, config)
    if x_val is None or y_val is None:
        print(f"{folder}: trained without a validation split", file=sys.stderr)
        return 2
    session = ort.InferenceSession((folder / "model.onnx").read_bytes())

    def run(batch: np.ndarray) -> np.ndarray:
        found = session.run(
            [OUTPUT_PROBABILITIES], {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}
        )[0]
        return np.asarray(found, dtype=np.float64)

    probabilities = run(x_val)
    predicted = probabilities.argmax(axis=1)
    correct = predicted == y_val
    rows = np.arange(len(y_val))

    with np.load(folder / NOVELTY_FILE, allow_pickle=False) as archive:
        stored = {key: archive[key] for key in archive.files}
    subspaces = Subspaces(stored["means"], stored["components"])
    residuals = np.stack(
        [subspaces.scores(x_val, np.full(len(x_val), digit)) for digit in range(10)], axis=1
    )
    distance = residuals[rows, predicted]
    novelty = reject["novelty"]
    not_a_digit = (distance > novelty["threshold"]) | (ink_aspect(x_val) > novelty["max_aspect"])
    discriminator = np.zeros(len(x_val))
    if "discriminator_weights" in stored:
        hidden = (stored["hidden_weights"], stored["hidden_biases"])
        discriminator = discriminator_features(x_val, probabilities, distance, hidden) @ stored[
            "discriminator_weights"
        ].astype(np.float64) + float(stored["discriminator_bias"])
        not_a_digit |= discriminator > novelty["discriminator_threshold"]

    ordered = np.sort(probabilities, axis=1)
    logs = np.log(np.clip(ordered, 1e-30, 1.0))
    log_margin = logs[:, -1] - logs[:, -2]
    log_distance = np.log(distance + 1e-3)
    square = x_val.reshape(-1, 28, 28)
    shifted = [
        run(np.roll(square, step, axis=axis).reshape(-1, 784))[rows, predicted]
        for axis in (1, 2)
        for step in (-1, 1)
    ]
    scores: dict[str, Callable[[], np.ndarray]] = {
        "top probability (Chow)": lambda: ordered[:, -1],
        "temperature-scaled top probability (served)": lambda: with_temperature(
            probabilities, float(reject["temperature"])
        ).max(axis=1),
        "margin p1 - p2": lambda: ordered[:, -1] - ordered[:, -2],
        "log margin": lambda: log_margin,
        "negative entropy": lambda: (probabilities * np.log(np.clip(probabilities, 1e-30, 1))).sum(
            axis=1
        ),
        "not-a-digit discriminator (negated)": lambda: -discriminator,
        "distance to the predicted digit's subspace (negated)": lambda: -distance,
        "predicted subspace's distance over the nearest (negated)": lambda: (
            -(distance - residuals.min(axis=1))
        ),
        "logistic regression [log margin, log distance, top p] (5-fold)": lambda: out_of_fold(
            np.column_stack([log_margin, log_distance, ordered[:, -1]]), correct
        ),
        "mean p(predicted) over the image and 4 one-pixel shifts": lambda: np.mean(
            [probabilities[rows, predicted], *shifted], axis=0
        ),
    }
    none = np.zeros(len(y_val), dtype=bool)
    results = {}
    for label, compute in scores.items():
        score = compute()
        results[label] = {
            "alone": {rate: error_at(score, correct, rate, none)[:2] for rate in RATES},
            "after_not_a_digit": error_at(score, correct, 0.02, not_a_digit),
        }
    print(
        f"{folder}: {len(y_val)} validation digits, {int((~correct).sum())} wrong "
        f"({100 * (1 - correct.mean()):.2f}%); the card's not-a-digit rules flag "
        f"{100 * not_a_digit.mean():.2f}% of them ({int((~correct[not_a_digit]).sum())} wrong)"
    )
    header = " | ".join(f"{100 * r:g}% rejected" for r in RATES)
    print(f"\n| score | {header} | 2% with not_a_digit first |")
    print("|---" + "|---:" * (len(RATES) + 1) + "|")
    for label, result in results.items():
        cells = [f"{100 * e:.2f}% ({w})" for e, w in result["alone"].values()]
        error, wrong, _ = result["after_not_a_digit"]
        cells.append(f"{100 * error:.2f}% ({wrong})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
