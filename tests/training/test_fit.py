"""The fit loop: partial_fit per epoch equals scikit-learn's own loop, early stopping, lbfgs."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from training.config import TrainConfig
from training.data import Split, scale_pixels
from training.fit import catch_convergence, fit, log_loss


@pytest.fixture(scope="module")
def small_train(mnist_data: Any) -> Split:
    split: Split = mnist_data.train.head(1500)
    return split


def _validation_part(train: Split, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, x_val, _, y_val = train_test_split(
        scale_pixels(train.images),
        train.labels,
        test_size=config.validation_fraction,
        random_state=config.seed,
        stratify=train.labels,
    )
    return x_val, y_val


@pytest.mark.parametrize(
    "changes",
    [
        {"solver": "adam"},
        {"solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.1},
        {"solver": "sgd", "learning_rate": "constant", "nesterov": False},
    ],
    ids=["adam", "sgd-invscaling", "sgd-momentum"],
)
def test_the_epoch_loop_matches_scikit_learns_own_fit(small_train: Any, changes: Any) -> None:
    """One partial_fit per epoch keeps the optimizer state and the schedule: same weights as fit.

    Without shuffling, so both see the batches in the same order (fit reshuffles its previous
    permutation, partial_fit a fresh range: equally random, not equal).
    """
    from sklearn.neural_network import MLPClassifier

    config = TrainConfig(
        hidden_layers=(16,),
        epochs=3,
        validation_fraction=0.0,
        seed=5,
        shuffle=False,
        **changes,
    )
    ours = fit(small_train, config)
    reference = MLPClassifier(**config.mlp_params())
    with catch_convergence() as convergence:
        reference.fit(scale_pixels(small_train.images), small_train.labels)
    assert convergence, "three epochs are expected to stop short of convergence"
    assert ours.epochs == 3 and len(ours.history) == 3
    assert [r.train_loss for r in ours.history] == pytest.approx(reference.loss_curve_, rel=1e-5)
    for mine, theirs in zip(ours.model.coefs_, reference.coefs_, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6)
    assert ours.converged is False
    assert ours.stop_reason == "max_iter reached"


def test_the_invscaling_schedule_lowers_the_rate_every_epoch(small_train: Any) -> None:
    config = TrainConfig(
        hidden_layers=(8,),
        solver="sgd",
        learning_rate="invscaling",
        learning_rate_init=0.1,
        epochs=2,
    )
    result = fit(small_train, config)
    # invscaling: rate = init / (t + 1) ** power_t with t the number of samples seen
    seen = result.train_size * 2
    assert result.model._optimizer.learning_rate == pytest.approx(0.1 / (seen + 1) ** 0.5)


def test_history_records_validation_figures_per_epoch(small_train: Any) -> None:
    config = TrainConfig(hidden_layers=(16,), epochs=4)
    result = fit(small_train, config)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.validation_size == 150 and result.train_size == 1350
    x_val, y_val = _validation_part(small_train, config)
    final = result.history[-1]
    probabilities = result.model.predict_proba(x_val)
    assert final.val_accuracy == np.mean(np.argmax(probabilities, axis=1) == y_val)
    assert final.val_loss == pytest.approx(log_loss(y_val, probabilities))
    assert all(r.seconds > 0 for r in result.history)
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_early_stopping_stops_and_restores_the_best_weights(small_train: Any) -> None:
    # an improvement must beat tol=0.2 in accuracy, so the second epoch never counts as better
    config = TrainConfig(
        hidden_layers=(16,),
        epochs=20,
        early_stopping=True,
        patience=2,
        tol=0.2,
    )
    result = fit(small_train, config)
    assert result.epochs == 3  # epoch 1 is the best, epochs 2 and 3 are the patience
    assert result.best_epoch == 1
    assert result.restored_best is True
    assert result.converged is True
    assert "early stopping" in result.stop_reason
    x_val, y_val = _validation_part(small_train, config)
    accuracy = np.mean(result.model.predict(x_val) == y_val)
    assert accuracy == result.history[0].val_accuracy
    assert accuracy != result.history[-1].val_accuracy  # the later weights really were replaced
    assert result.val_accuracy == result.history[0].val_accuracy


def test_without_early_stopping_the_final_weights_stay(small_train: Any) -> None:
    config = TrainConfig(hidden_layers=(16,), epochs=3, tol=0.2)
    result = fit(small_train, config)
    assert result.epochs == 3 and result.restored_best is False


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_the_cosine_schedule_sets_each_epochs_rate(small_train: Any, solver: Any) -> None:
    config = TrainConfig(hidden_layers=(8,), epochs=3, solver=solver, lr_schedule="cosine")
    result = fit(small_train, config)
    optimizer = result.model._optimizer
    # after the last epoch: the floor, a hundredth of the initial rate
    assert optimizer.learning_rate_init == pytest.approx(config.learning_rate_init * 0.01)
    if solver == "sgd":
        assert optimizer.learning_rate == pytest.approx(config.learning_rate_init * 0.01)
    constant = fit(small_train, config.replace(lr_schedule="constant"))
    assert not np.allclose(constant.model.coefs_[0], result.model.coefs_[0])


def test_lbfgs_reports_its_iterations_honestly(small_train: Any) -> None:
    config = TrainConfig(hidden_layers=(8,), solver="lbfgs", epochs=15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ConvergenceWarning is caught inside, not leaked
        result = fit(small_train, config)
    assert result.unit == "iteration"
    assert result.history == []
    assert result.epochs == result.model.n_iter_ == 15
    assert result.converged is False and result.stop_reason == "max_iter reached"
    assert result.final_loss == pytest.approx(result.model.loss_)
    assert result.val_accuracy is not None and 0.5 < result.val_accuracy <= 1.0


def test_augmentation_trains_on_the_originals_plus_fresh_copies(small_train: Any) -> None:
    calls: list[tuple[int, float]] = []

    def fake_distort(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append((images.shape[0], float(rng.random())))
        return np.clip(images * 0.9, 0.0, 1.0).astype(np.float32)

    config = TrainConfig(hidden_layers=(8,), epochs=2, augment=True, augment_copies=2)
    result = fit(small_train, config, distort=fake_distort)
    assert [n for n, _ in calls] == [result.train_size] * 4  # 2 copies x 2 epochs
    assert len({draw for _, draw in calls}) == 4  # one generator, advancing: fresh copies
    # sklearn counts the samples it saw: originals plus copies, every epoch
    assert result.model.t_ == result.train_size * 3 * 2


def test_lbfgs_with_augmentation_fits_once_on_a_fixed_augmented_set(small_train: Any) -> None:
    calls: list[int] = []

    def fake_distort(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        calls.append(images.shape[0])
        return np.clip(images * 0.9, 0.0, 1.0).astype(np.float32)

    config = TrainConfig(
        hidden_layers=(8,), solver="lbfgs", epochs=5, augment=True, augment_copies=2
    )
    result = fit(small_train, config, distort=fake_distort)
    assert calls == [result.train_size] * 2  # drawn once, not per iteration
    assert result.unit == "iteration" and result.epochs == result.model.n_iter_


def test_catch_convergence_lets_other_warnings_through() -> None:
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(UserWarning, match="other"), catch_convergence() as caught:
        warnings.warn("not converged", ConvergenceWarning, stacklevel=1)
        warnings.warn("other", UserWarning, stacklevel=1)
    assert len(caught) == 1
