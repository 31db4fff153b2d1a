"""The training report: metrics.json, three PNG plots and a Markdown summary, returned as bytes.

``build_report`` is pure: it renders everything in memory and writes nothing; the pipeline puts the
files into the published version through ``ModelRepository.publish(extra_files=...)``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.model.contract import IMAGE_SIDE, N_CLASSES, N_PIXELS
from training.fit import floating_point_summary

REPORT_DIR = "report"
METRICS_FILE = f"{REPORT_DIR}/metrics.json"
LOSS_FILE = f"{REPORT_DIR}/loss.png"
CONFUSION_FILE = f"{REPORT_DIR}/confusion.png"
MISCLASSIFIED_FILE = f"{REPORT_DIR}/misclassified.png"
SUMMARY_FILE = f"{REPORT_DIR}/summary.md"

#: figure sizes in inches at DPI: the PNG pixel sizes are fixed (tests hold them)
DPI = 100
LOSS_FIGSIZE = (8.0, 5.0)  # 800 x 500 px
CONFUSION_FIGSIZE = (7.0, 6.0)  # 700 x 600 px
MISCLASSIFIED_FIGSIZE = (10.0, 7.0)  # 1000 x 700 px
MISCLASSIFIED_GRID = (5, 8)  # rows x columns of the worst misclassified digits

#: pixel sizes (width, height) of the three plots
PNG_SIZES: dict[str, tuple[int, int]] = {
    LOSS_FILE: (int(LOSS_FIGSIZE[0] * DPI), int(LOSS_FIGSIZE[1] * DPI)),
    CONFUSION_FILE: (int(CONFUSION_FIGSIZE[0] * DPI), int(CONFUSION_FIGSIZE[1] * DPI)),
    MISCLASSIFIED_FILE: (int(MISCLASSIFIED_FIGSIZE[0] * DPI), int(MISCLASSIFIED_FIGSIZE[1] * DPI)),
}


def report_paths() -> dict[str, str]:
    """The report's files relative to the version folder, as the card's ``"report"`` entry."""
    return {
        "metrics": METRICS_FILE,
        "loss": LOSS_FILE,
        "confusion": CONFUSION_FILE,
        "misclassified": MISCLASSIFIED_FILE,
        "summary": SUMMARY_FILE,
    }


def build_report(
    *,
    card: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    confusion: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    predicted_labels: np.ndarray,
    probabilities: np.ndarray,
) -> dict[str, bytes]:
    """The report files (paths relative to the version folder) rendered from one run's results."""
    confusion = np.asarray(confusion, dtype=np.int64)
    test_images = np.asarray(test_images)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    predicted_labels = np.asarray(predicted_labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check_shapes(confusion, test_images, test_labels, predicted_labels, probabilities)

    per_class = per_class_scores(confusion)
    worst = worst_misclassified(test_labels, predicted_labels, probabilities)
    history_rows = [_history_row(row) for row in history]
    metrics = {
        "model": {"name": card.get("name"), "params": card.get("params", {})},
        "metrics": card.get("metrics", {}),
        "test_accuracy": float(np.trace(confusion) / max(int(confusion.sum()), 1)),
        "test_count": int(test_labels.size),
        "errors": int(np.count_nonzero(test_labels != predicted_labels)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "history": history_rows,
        "worst_misclassified": [
            {
                "index": int(i),
                "label": int(test_labels[i]),
                "predicted": int(predicted_labels[i]),
                "confidence": float(probabilities[i, predicted_labels[i]]),
            }
            for i in worst
        ],
    }
    return {
        METRICS_FILE: (json.dumps(_finite(metrics), indent=2, sort_keys=True) + "\n").encode(),
        LOSS_FILE: _render_loss(history_rows),
        CONFUSION_FILE: _render_confusion(confusion),
        MISCLASSIFIED_FILE: _render_misclassified(
            test_images, test_labels, predicted_labels, probabilities, worst
        ),
        SUMMARY_FILE: _summary_markdown(card, metrics).encode(),
    }


def per_class_scores(confusion: np.ndarray) -> list[dict[str, float | int]]:
    """Precision, recall and support per class; confusion rows are true, columns predicted."""
    confusion = np.asarray(confusion, dtype=np.int64)
    correct = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    rows = []
    for digit in range(confusion.shape[0]):
        rows.append(
            {
                "digit": digit,
                # an empty column/row has no defined score; 0.0 keeps the JSON finite and sortable
                "precision": float(correct[digit] / predicted[digit]) if predicted[digit] else 0.0,
                "recall": float(correct[digit] / support[digit]) if support[digit] else 0.0,
                "support": int(support[digit]),
            }
        )
    return rows


def worst_misclassified(
    test_labels: np.ndarray,
    predicted_labels: np.ndarray,
    probabilities: np.ndarray,
    limit: int = MISCLASSIFIED_GRID[0] * MISCLASSIFIED_GRID[1],
) -> np.ndarray:
    """Indices of misclassified digits, most confidently wrong first (ties by index)."""
    wrong = np.flatnonzero(np.asarray(test_labels) != np.asarray(predicted_labels))
    confidence = np.asarray(probabilities)[wrong, np.asarray(predicted_labels)[wrong]]
    order = np.lexsort((wrong, -confidence))  # lexsort keys go last-first: confidence, then index
    return wrong[order][:limit]


def _check_shapes(
    confusion: np.ndarray,
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray,
) -> None:
    if confusion.shape != (N_CLASSES, N_CLASSES):
        raise ValueError(f"confusion must be {N_CLASSES}x{N_CLASSES}, got {confusion.shape}")
    n = labels.shape[0]
    if images.shape != (n, N_PIXELS):
        raise ValueError(f"test_images must be [{n}, {N_PIXELS}], got {images.shape}")
    if predicted.shape != (n,):
        raise ValueError(f"predicted_labels must be [{n}], got {predicted.shape}")
    if probabilities.shape != (n, N_CLASSES):
        raise ValueError(f"probabilities must be [{n}, {N_CLASSES}], got {probabilities.shape}")


def _history_row(row: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds")
    return {key: row.get(key) for key in keys}


def _finite(value: Any) -> Any:
    """The value with NaN/inf floats replaced by None, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _new_figure(figsize: tuple[float, float]) -> Any:
    # The object API with an explicit Agg canvas: no pyplot global state, no backend switch for
    # the caller, safe in worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _png_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    # no bbox_inches="tight" (it would change the pixel size); no Software tag (bytes reproducible)
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for row in rows:
        value = row.get(key)
        if value is not None and math.isfinite(float(value)):
            xs.append(float(row.get("epoch") or len(xs) + 1))
            ys.append(float(value))
    return xs, ys


def _render_loss(history: Sequence[Mapping[str, Any]]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    figure = _new_figure(LOSS_FIGSIZE)
    axes = figure.add_subplot(1, 1, 1)
    train_x, train_y = _series(history, "train_loss")
    val_x, val_y = _series(history, "val_loss")
    acc_x, acc_y = _series(history, "val_accuracy")
    lines = []
    if train_x:
        lines += axes.plot(train_x, train_y, marker="o", markersize=3, label="train loss")
    if val_x:
        lines += axes.plot(val_x, val_y, marker="o", markersize=3, label="validation loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("log-loss")
    axes.grid(True, alpha=0.3)
    if acc_x:
        accuracy_axes = axes.twinx()
        lines += accuracy_axes.plot(
            acc_x, acc_y, color="tab:green", marker="s", markersize=3, label="validation accuracy"
        )
        accuracy_axes.set_ylabel("validation accuracy")
    if lines:
        axes.legend(lines, [line.get_label() for line in lines], loc="center right")
    else:
        axes.text(
            0.5,
            0.5,
            "no per-epoch history (lbfgs)",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
    axes.set_title("Training curve")
    figure.tight_layout()
    return _png_bytes(figure)


def _render_confusion(confusion: np.ndarray) -> bytes:
    from matplotlib.colors import LogNorm

    figure = _new_figure(CONFUSION_FIGSIZE)
    axes = figure.add_subplot(1, 1, 1)
    # log colours: the diagonal holds ~1000 per cell, errors a handful; linear colours hide them
    image = axes.imshow(np.maximum(confusion, 1), cmap="Blues", norm=LogNorm(vmin=1))
    figure.colorbar(image, ax=axes, label="count (log scale)")
    threshold = math.sqrt(max(int(confusion.max()), 1))
    for true in range(N_CLASSES):
        for predicted in range(N_CLASSES):
            count = int(confusion[true, predicted])
            if count:
                axes.text(
                    predicted,
                    true,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > threshold else "black",
                )
    axes.set_xticks(range(N_CLASSES))
    axes.set_yticks(range(N_CLASSES))
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    accuracy = np.trace(confusion) / max(int(confusion.sum()), 1)
    axes.set_title(f"Confusion matrix (test accuracy {accuracy:.2%})")
    figure.tight_layout()
    return _png_bytes(figure)


def _render_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    probabilities: np.ndarray,
    worst: np.ndarray,
) -> bytes:
    figure = _new_figure(MISCLASSIFIED_FIGSIZE)
    rows, columns = MISCLASSIFIED_GRID
    grid = figure.subplots(rows, columns)
    for slot, axes in enumerate(grid.flat):
        axes.set_axis_off()
        if slot >= len(worst):
            continue
        index = int(worst[slot])
        axes.imshow(
            images[index].reshape(IMAGE_SIDE, IMAGE_SIDE),
            cmap="gray_r",
            vmin=0,
            vmax=float(max(images.max(), 1)),
        )
        confidence = probabilities[index, predicted[index]]
        axes.set_title(f"true {labels[index]} → {predicted[index]}\n{confidence:.0%}", fontsize=8)
    heading = f"The {len(worst)} most confidently misclassified test digits"
    if not len(worst):
        heading = "No misclassified test digits"
    figure.suptitle(heading)
    figure.tight_layout()
    return _png_bytes(figure)


def _format_number(value: Any, spec: str) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return "n/a"


def _summary_markdown(card: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    card_metrics = card.get("metrics", {}) or {}
    # the run's whole configuration when the card has it (augmentation is not an MLP parameter)
    settings = {**(card.get("params", {}) or {}), **(card.get("config", {}) or {})}
    title = card.get("description") or card.get("name") or "MNIST model"
    lines = [
        f"# Training report: {title}",
        "",
        f"- test accuracy: **{metrics['test_accuracy']:.2%}** "
        f"({metrics['errors']} errors in {metrics['test_count']} test images)",
    ]
    baselines = card.get("baselines", {}) or {}
    references = [
        f"{label} {baselines[key]['test_accuracy']:.2%}"
        for key, label in (("most_frequent", "most frequent class"), ("linear", "linear model"))
        if isinstance(baselines.get(key), Mapping) and "test_accuracy" in baselines[key]
    ]
    if references:
        lines.append(f"- reference points on the same split: {', '.join(references)}")
    for key, label, spec in (
        ("log_loss", "test log-loss", ".4f"),
        ("epochs", "epochs", "d"),
        ("train_seconds", "training seconds", ".1f"),
    ):
        if key in card_metrics:
            lines.append(f"- {label}: {_format_number(card_metrics[key], spec)}")
    shown = ", ".join(
        f"{key}={settings[key]}"
        for key in (
            "hidden_layers",
            "activation",
            "solver",
            "alpha",
            "batch_size",
            "learning_rate_init",
            "epochs",
            "seed",
            "train_limit",
            "augment",
            "augment_copies",
        )
        if key in settings
    )
    if shown:
        lines.append(f"- settings: {shown}")
    if card.get("command"):
        lines.append(f"- command: `{card['command']}`")
    training = card.get("training") or {}
    errors = training.get("floating_point_errors") if isinstance(training, Mapping) else None
    if errors:
        lines.append(
            f"- numpy floating-point errors while training: {floating_point_summary(errors)} "
            "(the settings take the "
            "solver past the range of floating point; a smaller --learning-rate-init or --alpha "
            "avoids them)"
        )
    if settings.get("augment"):
        lines += [
            "",
            "The training loss is measured on the augmented epoch (originals plus distorted "
            "copies) and includes the L2 term, so it sits above the validation loss.",
        ]
    lines += [
        "",
        "Full figures: [metrics.json](metrics.json).",
        "",
        "## Training curve",
        "",
        "![loss and validation curves](loss.png)",
        "",
        "## Confusion matrix",
        "",
        "![confusion matrix](confusion.png)",
        "",
        "## Per class",
        "",
        "| digit | precision | recall | support |",
        "|---:|---:|---:|---:|",
    ]
    for row in metrics["per_class"]:
        lines.append(
            f"| {row['digit']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['support']} |"
        )
    lines += [
        "",
        "## Worst misclassified digits",
        "",
        "![most confidently misclassified test digits](misclassified.png)",
        "",
    ]
    return "\n".join(lines)
