"""One frozen TrainConfig: the MLPClassifier knobs under scikit-learn's names, plus the run's own.

It can be read from a TOML file whose top-level keys are the field names; unknown keys and wrong
types fail at once with a message naming the key. ``validate`` also runs scikit-learn's own
parameter validation, so an impossible value fails before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Activation = Literal["identity", "logistic", "tanh", "relu"]
Solver = Literal["lbfgs", "sgd", "adam"]
LearningRate = Literal["constant", "invscaling", "adaptive"]
Progress = Literal["bar", "json", "none"]

#: the fields that are MLPClassifier parameters, under their scikit-learn names
MLP_FIELDS: tuple[str, ...] = (
    "hidden_layer_sizes",
    "activation",
    "solver",
    "alpha",
    "batch_size",
    "learning_rate",
    "learning_rate_init",
    "power_t",
    "max_iter",
    "shuffle",
    "random_state",
    "tol",
    "momentum",
    "nesterovs_momentum",
    "early_stopping",
    "validation_fraction",
    "beta_1",
    "beta_2",
    "epsilon",
    "n_iter_no_change",
)

_LITERALS: dict[str, tuple[str, ...]] = {
    "activation": get_args(Activation),
    "solver": get_args(Solver),
    "learning_rate": get_args(LearningRate),
    "progress": get_args(Progress),
}
_INTS = ("max_iter", "random_state", "n_iter_no_change", "augment_copies")
_FLOATS = (
    "alpha",
    "learning_rate_init",
    "power_t",
    "tol",
    "momentum",
    "validation_fraction",
    "beta_1",
    "beta_2",
    "epsilon",
    "min_accuracy",
)
_BOOLS = ("shuffle", "nesterovs_momentum", "early_stopping", "augment")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; CLI flags and a TOML file map onto it."""

    hidden_layer_sizes: tuple[int, ...] = (100,)
    activation: Activation = "relu"
    solver: Solver = "adam"
    alpha: float = 1e-4
    batch_size: int | Literal["auto"] = "auto"
    learning_rate: LearningRate = "constant"
    learning_rate_init: float = 1e-3
    power_t: float = 0.5
    max_iter: int = 20  # epochs for sgd/adam, iterations for lbfgs
    shuffle: bool = True
    random_state: int = 0  # the seed: a run is reproducible by default
    tol: float = 1e-4
    momentum: float = 0.9
    nesterovs_momentum: bool = True
    early_stopping: bool = False
    validation_fraction: float = 0.1
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    n_iter_no_change: int = 10  # patience, in epochs
    train_limit: int | None = None
    augment: bool = False
    augment_copies: int = 1
    min_accuracy: float = 0.0
    data_dir: Path | None = None
    models_dir: Path = field(default=Path("models"))
    progress: Progress = "bar"

    def __post_init__(self) -> None:
        _check_types(self)

    def mlp_params(self) -> dict[str, Any]:
        """The keyword arguments for ``MLPClassifier`` (early stopping is the fit loop's own)."""
        return {name: getattr(self, name) for name in MLP_FIELDS}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, as written into the card."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[item.name] = value
        return out


FIELD_NAMES: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(TrainConfig))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_types(config: TrainConfig) -> None:
    for name, choices in _LITERALS.items():
        if getattr(config, name) not in choices:
            raise ConfigError(f"{name}: {getattr(config, name)!r} is not one of {list(choices)}")
    for name in _INTS:
        if not _is_int(getattr(config, name)):
            raise ConfigError(f"{name}: expected an integer, got {getattr(config, name)!r}")
    for name in _FLOATS:
        value = getattr(config, name)
        if not (_is_int(value) or isinstance(value, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
    for name in _BOOLS:
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name}: expected true or false, got {getattr(config, name)!r}")
    layers = config.hidden_layer_sizes
    if not (isinstance(layers, tuple) and layers and all(_is_int(n) and n > 0 for n in layers)):
        raise ConfigError(f"hidden_layer_sizes: expected positive integers, got {layers!r}")
    if config.batch_size != "auto" and not (_is_int(config.batch_size) and config.batch_size > 0):
        raise ConfigError(
            f"batch_size: expected a positive integer or 'auto', got {config.batch_size!r}"
        )
    if config.train_limit is not None and not (
        _is_int(config.train_limit) and config.train_limit > 0
    ):
        raise ConfigError(f"train_limit: expected a positive integer, got {config.train_limit!r}")
    if config.augment_copies < 0:
        raise ConfigError(f"augment_copies: expected 0 or more, got {config.augment_copies}")
    if not 0.0 <= config.min_accuracy <= 1.0:
        raise ConfigError(f"min_accuracy: expected a fraction in [0, 1], got {config.min_accuracy}")
    if config.early_stopping and config.validation_fraction <= 0:
        raise ConfigError("early_stopping needs a validation split: validation_fraction > 0")


def validate(config: TrainConfig) -> TrainConfig:
    """Run scikit-learn's own parameter validation on the config; ConfigError names the key."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.utils._param_validation import InvalidParameterError

    estimator = MLPClassifier(**config.mlp_params())
    try:
        # the same check fit() runs first; calling it here fails before any data is loaded
        estimator._validate_params()
    except InvalidParameterError as exc:
        raise ConfigError(str(exc)) from exc
    return config


def _coerce(name: str, value: Any) -> Any:
    """TOML values -> field values (lists become tuples, paths become Path)."""
    if name == "hidden_layer_sizes":
        if isinstance(value, str):
            return parse_layers(value)
        if isinstance(value, list):
            return tuple(value)
        if _is_int(value):
            return (value,)
    if name in ("data_dir", "models_dir"):
        if value is None and name == "data_dir":
            return None
        if not isinstance(value, str | Path):
            raise ConfigError(f"{name}: expected a path string, got {value!r}")
        return Path(value)
    return value


def parse_layers(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``; ConfigError on anything else."""
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"hidden_layer_sizes: expected comma-separated positive integers like 512,256, got "
            f"{text!r}"
        ) from None
    if not layers or any(n <= 0 for n in layers):
        raise ConfigError(f"hidden_layer_sizes: layer sizes must be positive, got {text!r}")
    return layers


def from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with ``values`` applied; unknown keys raise ConfigError."""
    unknown = [key for key in values if key not in FIELD_NAMES]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"unknown configuration key {', '.join(hints)}; known keys: {', '.join(FIELD_NAMES)}"
        )
    changes = {key: _coerce(key, value) for key, value in values.items()}
    try:
        return dataclasses.replace(base or TrainConfig(), **changes)
    except TypeError as exc:  # e.g. a comparison inside the checks on a value of the wrong type
        raise ConfigError(str(exc)) from exc


def load_toml(path: Path | str) -> dict[str, Any]:
    """The top-level table of a TOML run file; ConfigError when it cannot be read or parsed."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
