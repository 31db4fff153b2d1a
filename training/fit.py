"""Fit an MLPClassifier: sgd/adam epoch by epoch through partial_fit, lbfgs in one honest call.

sgd and adam hold out a seeded, stratified validation split of the training images, train one
``partial_fit`` call per epoch (the optimizer state and learning-rate schedule carry over, unlike
``warm_start`` with ``max_iter=1``), report every epoch, and stop early on the validation accuracy
with patience, restoring the best weights. lbfgs has no epochs: it is fitted once and reports its
iteration count.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from service.model.contract import CLASS_LABELS
from training.config import ConfigError, TrainConfig
from training.data import Split, scale_pixels

if TYPE_CHECKING:
    from sklearn.neural_network import MLPClassifier

    from training.progress import Reporter

Distort = Callable[[np.ndarray, np.random.Generator], np.ndarray]

#: probabilities are clipped here before the log, as scikit-learn's log_loss does
_LOG_EPS = 1e-15


class TrainingDiverged(ConfigError):
    """The solver drove the weights to infinity or NaN: settings it cannot support (exit 2)."""


@dataclass
class FloatingPointErrors:
    """numpy's floating-point errors (overflow, invalid value, division by zero), counted instead
    of printed as RuntimeWarnings: a run reports them once, in its card and one line."""

    counts: dict[str, int] = field(default_factory=dict)

    def __call__(self, kind: str, flag: int) -> None:  # numpy's seterrcall signature
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @contextlib.contextmanager
    def counted(self) -> Iterator[FloatingPointErrors]:
        """Count the errors raised inside (underflow stays ignored, as numpy's default)."""
        # errstate is local to the thread and context: runs sharing a process count their own
        with np.errstate(over="call", divide="call", invalid="call", call=self):
            yield self


def floating_point_summary(counts: Mapping[str, int]) -> str:
    """``invalid value x3, overflow x120``: each kind of floating-point error and how often."""
    return ", ".join(f"{kind} x{count}" for kind, count in sorted(counts.items()))


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss (scikit-learn's ``loss_``, with the L2 term), validation figures."""

    epoch: int
    train_loss: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """The fitted model and how it got there."""

    model: MLPClassifier
    history: list[EpochRecord]
    seconds: float
    epochs: int  # epochs for sgd/adam, iterations for lbfgs (see ``unit``)
    best_epoch: int | None
    converged: bool
    stop_reason: str
    unit: str = "epoch"
    loss_curve: list[float] = field(default_factory=list)
    final_loss: float | None = None
    train_size: int = 0
    validation_size: int = 0
    val_accuracy: float | None = None
    val_loss: float | None = None
    restored_best: bool = False


@contextlib.contextmanager
def catch_convergence() -> Iterator[list[warnings.WarningMessage]]:
    """Collect ConvergenceWarnings raised inside (expected on short runs); others pass through."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        convergence: list[warnings.WarningMessage] = []
        yield convergence
    for item in caught:
        if issubclass(item.category, ConvergenceWarning):
            convergence.append(item)
        else:  # not ours to swallow: hand it back to the caller's filters
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-probability of the true class (no renormalisation, no warnings)."""
    picked = probabilities[np.arange(labels.shape[0]), labels]
    return float(-np.mean(np.log(np.clip(picked.astype(np.float64), _LOG_EPS, 1.0))))


def _weights_finite(model: MLPClassifier) -> bool:
    layers = [*getattr(model, "coefs_", []), *getattr(model, "intercepts_", [])]
    return all(np.isfinite(w).all() for w in layers)


def remedy(config: TrainConfig) -> str:
    """What to lower when ``config`` overflows: the step size (sgd, adam), a large L2 term."""
    flags = (
        []
        if config.solver == "lbfgs"
        else [f"--learning-rate-init (now {config.learning_rate_init:g})"]
    )
    if config.alpha > 1 or not flags:
        flags.append(f"--alpha (now {config.alpha:g})")
    return "a smaller " + " or a smaller ".join(flags)


@contextlib.contextmanager
def _divergence_named(model: MLPClassifier, config: TrainConfig, where: str) -> Iterator[None]:
    """scikit-learn's ValueError on non-finite weights as TrainingDiverged, naming the remedy."""
    try:
        yield
    except ValueError as exc:
        if _weights_finite(model):
            raise  # another problem: not ours to rename
        raise TrainingDiverged(
            f"training diverged{where} ({config.solver}, {config.activation}): the weights "
            f"overflowed to infinity or NaN, settings the solver cannot support; "
            f"try {remedy(config)}"
        ) from exc


def _validation_split(
    x: np.ndarray, y: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if config.validation_fraction <= 0:
        return x, y, None, None
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=config.validation_fraction, random_state=config.seed, stratify=y
    )
    return x_train, y_train, x_val, y_val


def validation_split(
    x: np.ndarray, y: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x_train, y_train, x_val, y_val): the seeded, stratified split ``fit`` holds out."""
    return _validation_split(x, y, config)


def _estimator(config: TrainConfig, n_train: int) -> MLPClassifier:
    from sklearn.neural_network import MLPClassifier

    params = config.mlp_params()
    # our loop does the early stopping: partial_fit refuses early_stopping=True
    params["early_stopping"] = False
    # a RandomState instance, not the int: partial_fit re-seeds from an int on every call, which
    # would replay the same shuffle order each epoch; the instance advances and stays reproducible
    params["random_state"] = np.random.RandomState(config.seed)
    if params["batch_size"] != "auto":
        params["batch_size"] = min(params["batch_size"], n_train)  # sklearn warns and clips
    return MLPClassifier(**params)


def _evaluate_validation(
    model: MLPClassifier, x_val: np.ndarray | None, y_val: np.ndarray | None
) -> tuple[float | None, float | None]:
    if x_val is None or y_val is None:
        return None, None
    probabilities = model.predict_proba(x_val)
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y_val))
    return log_loss(y_val, probabilities), accuracy


def fit(
    train: Split,
    config: TrainConfig,
    reporter: Reporter | None = None,
    *,
    distort: Distort | None = None,
    extra: Split | None = None,
) -> FitResult:
    """Fit an MLPClassifier on ``train`` as ``config`` says, reporting progress to ``reporter``.

    ``extra`` examples (feedback) join the training share after the validation split, so none
    of them, nor any of their repeated copies, is ever scored as validation.
    """
    from training.progress import SilentReporter

    reporter = reporter or SilentReporter()
    x_train, y_train, x_val, y_val = _validation_split(
        scale_pixels(train.images), train.labels, config
    )
    train_size = int(x_train.shape[0])
    if extra is not None and len(extra):
        x_train = np.concatenate([x_train, scale_pixels(extra.images)])
        y_train = np.concatenate([y_train, extra.labels.astype(y_train.dtype)])
    if config.augment and distort is None:
        from training.augment import distort as distort_with

        distortion = config.distortion()

        def distort(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return distort_with(images, rng, distortion)

    if config.solver == "lbfgs":
        if config.augment:
            # lbfgs has no epochs to draw fresh copies for: it fits once on a fixed augmented set
            reporter.step(f"lbfgs: adding {config.augment_copies} distorted copies, drawn once")
            x_train, y_train = _epoch_data(
                x_train,
                y_train,
                config.augment_copies,
                distort,
                np.random.default_rng(config.seed),
            )
        model = _estimator(config, x_train.shape[0])
        result = _fit_lbfgs(model, config, x_train, y_train, x_val, y_val, reporter)
    else:
        model = _estimator(config, x_train.shape[0])
        result = _fit_epochs(
            model,
            config,
            x_train,
            y_train,
            x_val,
            y_val,
            reporter,
            distort if config.augment else None,
        )
    result.train_size = train_size  # the training images, not counting distorted copies
    result.validation_size = 0 if x_val is None else int(x_val.shape[0])
    return result


def _fit_lbfgs(
    model: MLPClassifier,
    config: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    reporter: Reporter,
) -> FitResult:
    if config.early_stopping:
        reporter.step("note: lbfgs has no epochs, so early stopping does not apply")
    reporter.step(f"lbfgs: one fit of up to {config.epochs} iterations (lbfgs has no epochs)")
    started = time.perf_counter()
    with catch_convergence() as convergence, _divergence_named(model, config, ""):
        model.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    val_loss, val_accuracy = _evaluate_validation(model, x_val, y_val)
    converged = not convergence
    summary = (
        f"lbfgs: {model.n_iter_} iterations in {seconds:.1f}s, loss {model.loss_:.4f}"
        + (f", val_acc {val_accuracy:.4f}" if val_accuracy is not None else "")
        + ("" if converged else " (not converged: iteration limit reached)")
    )
    reporter.close(summary)
    return FitResult(
        model=model,
        history=[],
        seconds=seconds,
        epochs=int(model.n_iter_),
        best_epoch=None,
        converged=converged,
        stop_reason="converged" if converged else "max_iter reached",
        unit="iteration",
        loss_curve=[float(v) for v in getattr(model, "loss_curve_", [])],
        final_loss=float(model.loss_),
        val_accuracy=val_accuracy,
        val_loss=val_loss,
    )


def _epoch_data(
    x: np.ndarray, y: np.ndarray, copies: int, distort: Distort | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if distort is None or copies == 0:
        return x, y
    parts = [x] + [distort(x, rng) for _ in range(copies)]
    return np.concatenate(parts).astype(np.float32, copy=False), np.tile(y, copies + 1)


def _set_learning_rate(model: MLPClassifier, rate: float) -> None:
    """The rate of the next partial_fit: adam derives its step from ``learning_rate_init``, sgd
    (constant schedule) uses ``learning_rate``; both live on scikit-learn's optimizer object."""
    optimizer = model._optimizer
    optimizer.learning_rate_init = rate
    if hasattr(optimizer, "learning_rate") and model.solver == "sgd":
        optimizer.learning_rate = rate


def _fit_epochs(
    model: MLPClassifier,
    config: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    reporter: Reporter,
    distort: Distort | None,
) -> FitResult:
    classes = np.asarray(CLASS_LABELS)
    rng = np.random.default_rng(config.seed)
    history: list[EpochRecord] = []
    best_score = -np.inf
    best_epoch: int | None = None
    best_weights: tuple[list[np.ndarray], list[np.ndarray]] | None = None
    stale = 0
    stop_reason = "max_iter reached"
    converged = False
    description = f"{config.solver}/{config.activation} {list(config.hidden_layers)}"
    reporter.start(config.epochs, description)
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        x_epoch, y_epoch = _epoch_data(x_train, y_train, config.augment_copies, distort, rng)
        with _divergence_named(model, config, f" in epoch {epoch}"):
            if epoch == 1:
                model.partial_fit(x_epoch, y_epoch, classes=classes)
            else:
                model.partial_fit(x_epoch, y_epoch)
        val_loss, val_accuracy = _evaluate_validation(model, x_val, y_val)
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(model.loss_),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=time.perf_counter() - epoch_started,
        )
        history.append(record)
        reporter.epoch(record)
        if config.lr_schedule != "constant":
            _set_learning_rate(model, config.learning_rate_after(epoch))
        if val_accuracy is not None:
            if val_accuracy > best_score + config.tol:
                best_score, best_epoch, stale = val_accuracy, epoch, 0
                best_weights = (
                    [c.copy() for c in model.coefs_],
                    [i.copy() for i in model.intercepts_],
                )
            else:
                stale += 1
        if config.early_stopping:
            if stale >= config.patience:
                stop_reason = (
                    f"early stopping: validation accuracy did not improve by more than "
                    f"tol={config.tol} for {config.patience} epochs"
                )
                converged = True
                break
        # scikit-learn's own rule on the training loss (the one fit() applies; for the adaptive
        # schedule it lowers the rate instead and only asks to stop when the rate is spent)
        elif model._no_improvement_count > model.n_iter_no_change:
            stop_reason = (
                f"training loss did not improve by more than tol={config.tol} for "
                f"{config.patience} epochs"
            )
            converged = True
            break
    seconds = time.perf_counter() - started
    restored = False
    if config.early_stopping and best_weights is not None and best_epoch != len(history):
        model.coefs_, model.intercepts_ = best_weights
        restored = True
    final = history[-1]
    best = history[best_epoch - 1] if best_epoch is not None else final
    kept = best if restored else final
    summary = (
        f"{len(history)} epochs in {seconds:.1f}s ({stop_reason})"
        + (f"; restored the best weights of epoch {best_epoch}" if restored else "")
        + (f"; val_acc {kept.val_accuracy:.4f}" if kept.val_accuracy is not None else "")
    )
    reporter.close(summary)
    return FitResult(
        model=model,
        history=history,
        seconds=seconds,
        epochs=len(history),
        best_epoch=best_epoch,
        converged=converged,
        stop_reason=stop_reason,
        unit="epoch",
        loss_curve=[r.train_loss for r in history],
        final_loss=final.train_loss,
        val_accuracy=kept.val_accuracy,
        val_loss=kept.val_loss,
        restored_best=restored,
    )
