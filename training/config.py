"""Every training setting, declared once: the table behind flags, TOML keys, checks and the card.

Each field of :class:`TrainConfig` is one row of the table: its name (the TOML key; the flag is
the same name with dashes: ``batch_size`` -> ``--batch-size``), its type (the annotation), its
default, its range, its help text, the solvers that use it and the scikit-learn ``MLPClassifier``
parameter it maps to. :data:`SETTINGS` reads the rows back; ``training.cli`` builds the parser and
``--help`` from them, :func:`from_mapping` reads a TOML file with them, :func:`check_setting`
checks a value against its row, and :meth:`TrainConfig.mlp_params` gives the card's ``params``.

TOML keys that used scikit-learn's names (``max_iter``, ``random_state``, ``n_iter_no_change``,
``hidden_layer_sizes``, ``nesterovs_momentum``) fail with a message naming the new key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from service.command_line import integer_text

if TYPE_CHECKING:
    from training.augment import Distortion

Activation = Literal["identity", "logistic", "tanh", "relu"]
Solver = Literal["lbfgs", "sgd", "adam"]
LearningRate = Literal["constant", "invscaling", "adaptive"]
Schedule = Literal["constant", "cosine"]
Progress = Literal["bar", "json", "none"]

SOLVERS: tuple[Solver, ...] = get_args(Solver)
#: the solvers that train in epochs through our loop (lbfgs is one scikit-learn call)
EPOCH_SOLVERS: tuple[Solver, ...] = ("sgd", "adam")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Range:
    """A closed or half-open numeric interval; ``None`` is unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        if not math.isfinite(value):  # NaN fails every comparison; no setting means infinity
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            if self.low is None:
                return "any number"
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        low = "-inf" if self.low is None else _number(self.low)
        return f"{left}{low}, {_number(self.high)}{right}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class _Row:
    """The parts of a setting written beside its field (the rest comes from the field itself)."""

    help: str
    group: str
    sklearn: str | None = None
    range: Range | None = None
    solvers: tuple[Solver, ...] = SOLVERS
    metavar: str | None = None
    in_command: bool = True  # False for the paths and output mode: they belong to the machine


def _row(help: str, group: str, **row: Any) -> dict[str, _Row]:
    """The metadata of one TrainConfig field: the rest of its row of the table."""
    return {"setting": _Row(help=help, group=group, **row)}


_POSITIVE = Range(0, None, low_open=True)
_NON_NEGATIVE = Range(0, None)
_AT_LEAST_1 = Range(1, None)
_FRACTION = Range(0, 1)
_OPEN_FRACTION = Range(0, 1, high_open=True)

#: upper bounds that keep a run within one machine's memory and time: a setting past them is
#: refused while the configuration is read, before any data is loaded
MAX_LAYER_SIZE = 4096  # units in one hidden layer
MAX_LAYERS = 8  # hidden layers
MAX_WEIGHTS = 25_000_000  # weights of the whole network (200 MB in float64; adam keeps 3 copies)
MNIST_TRAIN_IMAGES = 60_000


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; one field per setting (the table of the module)."""

    # -- model
    hidden_layers: tuple[int, ...] = field(
        default=(100,),
        metadata=_row(
            f"hidden layer sizes, e.g. 512,256 (at most {MAX_LAYERS} layers, "
            f"{MAX_WEIGHTS:,} weights in all)",
            "model",
            sklearn="hidden_layer_sizes",
            range=Range(1, MAX_LAYER_SIZE),
            metavar="N[,N...]",
        ),
    )
    activation: Activation = field(
        default="relu", metadata=_row("hidden-layer activation", "model", sklearn="activation")
    )
    alpha: float = field(
        default=1e-4, metadata=_row("L2 penalty", "model", sklearn="alpha", range=_NON_NEGATIVE)
    )
    # -- solver
    solver: Solver = field(
        default="adam", metadata=_row("weight optimiser", "solver", sklearn="solver")
    )
    batch_size: int | Literal["auto"] = field(
        default="auto",
        metadata=_row(
            "minibatch size, or 'auto' (min(200, images))",
            "solver",
            sklearn="batch_size",
            range=Range(1, MNIST_TRAIN_IMAGES),
            solvers=EPOCH_SOLVERS,
        ),
    )
    learning_rate: LearningRate = field(
        default="constant",
        metadata=_row(
            "learning-rate schedule", "solver", sklearn="learning_rate", solvers=("sgd",)
        ),
    )
    learning_rate_init: float = field(
        default=1e-3,
        metadata=_row(
            "initial learning rate",
            "solver",
            sklearn="learning_rate_init",
            range=_POSITIVE,
            solvers=EPOCH_SOLVERS,
        ),
    )
    lr_schedule: Schedule = field(
        default="constant",
        metadata=_row(
            "learning rate over the epochs: constant, or cosine decay from --learning-rate-init "
            "to a hundredth of it by the last epoch (sgd: with --learning-rate constant)",
            "solver",
            solvers=EPOCH_SOLVERS,
        ),
    )
    power_t: float = field(
        default=0.5,
        metadata=_row(
            "exponent of the invscaling schedule",
            "solver",
            sklearn="power_t",
            range=_NON_NEGATIVE,
            solvers=("sgd",),
        ),
    )
    momentum: float = field(
        default=0.9,
        metadata=_row("momentum", "solver", sklearn="momentum", range=_FRACTION, solvers=("sgd",)),
    )
    nesterov: bool = field(
        default=True,
        metadata=_row(
            "Nesterov momentum", "solver", sklearn="nesterovs_momentum", solvers=("sgd",)
        ),
    )
    beta_1: float = field(
        default=0.9,
        metadata=_row(
            "first-moment decay",
            "solver",
            sklearn="beta_1",
            range=_OPEN_FRACTION,
            solvers=("adam",),
        ),
    )
    beta_2: float = field(
        default=0.999,
        metadata=_row(
            "second-moment decay",
            "solver",
            sklearn="beta_2",
            range=_OPEN_FRACTION,
            solvers=("adam",),
        ),
    )
    epsilon: float = field(
        default=1e-8,
        metadata=_row(
            "numerical stability term",
            "solver",
            sklearn="epsilon",
            range=_POSITIVE,
            solvers=("adam",),
        ),
    )
    epochs: int = field(
        default=20,
        metadata=_row(
            "most epochs (sgd, adam) or iterations (lbfgs)",
            "solver",
            sklearn="max_iter",
            range=Range(1, 10_000),
        ),
    )
    tol: float = field(
        default=1e-4,
        metadata=_row("improvement tolerance", "solver", sklearn="tol", range=_NON_NEGATIVE),
    )
    shuffle: bool = field(
        default=True,
        metadata=_row(
            "shuffle the images every epoch", "solver", sklearn="shuffle", solvers=EPOCH_SOLVERS
        ),
    )
    seed: int = field(
        default=0,
        metadata=_row(
            "random seed: weights, shuffling, split, distortions",
            "solver",
            sklearn="random_state",
            range=Range(0, 2**32 - 1),
        ),
    )
    # -- validation and early stopping
    early_stopping: bool = field(
        default=False,
        metadata=_row(
            "stop when validation accuracy stalls; restore the best weights",
            "validation and early stopping",
            sklearn="early_stopping",
            solvers=EPOCH_SOLVERS,
        ),
    )
    validation_fraction: float = field(
        default=0.1,
        metadata=_row(
            "share of the training images held out for validation (0 = none)",
            "validation and early stopping",
            sklearn="validation_fraction",
            range=_OPEN_FRACTION,
        ),
    )
    patience: int = field(
        default=10,
        metadata=_row(
            "epochs without improvement before stopping",
            "validation and early stopping",
            sklearn="n_iter_no_change",
            range=Range(1, 10_000),
            solvers=EPOCH_SOLVERS,
        ),
    )
    # -- data and augmentation
    train_limit: int | None = field(
        default=None,
        metadata=_row(
            "train on the first N training images only (default all 60,000)",
            "data",
            range=Range(1, MNIST_TRAIN_IMAGES),
            metavar="N",
        ),
    )
    augment: bool = field(
        default=False,
        metadata=_row(
            "train on distorted copies of the images too (fresh ones every epoch)", "data"
        ),
    )
    augment_copies: int = field(
        default=1,
        metadata=_row("distorted copies per image per epoch", "data", range=Range(0, 32)),
    )
    augment_shift: float = field(
        default=2.0,
        metadata=_row("largest shift of a distorted copy, pixels", "data", range=Range(0, 14)),
    )
    augment_rotation: float = field(
        default=12.0,
        metadata=_row("largest rotation of a distorted copy, degrees", "data", range=Range(0, 180)),
    )
    augment_scale: float = field(
        default=0.12,
        metadata=_row(
            "largest relative scaling of a distorted copy",
            "data",
            range=Range(0, 1, high_open=True),
        ),
    )
    augment_shear: float = field(
        default=0.15,
        metadata=_row(
            "largest horizontal shear factor of a distorted copy", "data", range=Range(0, 1)
        ),
    )
    elastic_alpha: float = field(
        default=34.0,
        metadata=_row(
            "elastic distortion strength (Simard et al. 2003 alpha; 0 = none)",
            "data",
            range=_NON_NEGATIVE,
        ),
    )
    elastic_sigma: float = field(
        default=4.0,
        metadata=_row(
            "elastic distortion smoothness, pixels (Simard et al. 2003 sigma)",
            "data",
            range=_POSITIVE,
        ),
    )
    # -- feedback from the prediction store
    feedback: str | None = field(
        default=None,
        metadata=_row(
            "database URL of the prediction store (postgresql://... or sqlite:///path): add its "
            "labelled examples (feedback whose 28x28 input was kept) to training",
            "feedback",
            metavar="DATABASE_URL",
            in_command=False,
        ),
    )
    feedback_weight: int = field(
        default=3,
        metadata=_row("times each feedback example counts (it is repeated)", "feedback",
                      range=Range(1, 100), in_command=False),
    )  # fmt: skip
    feedback_cap: int = field(
        default=5000,
        metadata=_row("use at most the newest N feedback examples for training", "feedback",
                      range=Range(1, 1_000_000), in_command=False),
    )  # fmt: skip
    feedback_holdout: float = field(
        default=0.2,
        metadata=_row("share of feedback examples held out as a second test set", "feedback",
                      range=_OPEN_FRACTION, in_command=False),
    )  # fmt: skip
    # -- run
    threads: int = field(
        default=1,
        metadata=_row(
            "BLAS threads while training (threadpoolctl); one is fastest on a shared machine",
            "run",
            range=Range(1, 256),
        ),
    )
    min_accuracy: float = field(
        default=0.0,
        metadata=_row(
            "quality gate: refuse to publish below this test accuracy", "run", range=_FRACTION
        ),
    )
    data_dir: Path | None = field(
        default=None,
        metadata=_row(
            "folder with the four MNIST IDX .gz files (default $MNIST_DATA_DIR, else the download "
            "cache)",
            "run",
            in_command=False,
        ),
    )
    models_dir: Path = field(
        default=Path("models"),
        metadata=_row("model repository to publish into", "run", in_command=False),
    )
    progress: Progress = field(
        default="bar",
        metadata=_row(
            "live bar, one JSON line per epoch on stdout, or nothing", "run", in_command=False
        ),
    )

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            check_setting(setting, getattr(self, setting.name))
        if self.early_stopping and self.validation_fraction <= 0:
            raise ConfigError(
                "--early-stopping needs a validation split: set --validation-fraction above 0"
            )
        if (
            self.lr_schedule != "constant"
            and self.solver == "sgd"
            and self.learning_rate != "constant"
        ):
            raise ConfigError(
                f"--lr-schedule {self.lr_schedule}: sgd already follows --learning-rate "
                f"{self.learning_rate}; use --learning-rate constant or --lr-schedule constant"
            )

    def distortion(self) -> Distortion:
        """The augmentation strengths (training.augment.Distortion)."""
        from training.augment import Distortion

        return Distortion(
            max_shift=self.augment_shift,
            max_rotation=self.augment_rotation,
            max_scale=self.augment_scale,
            max_shear=self.augment_shear,
            elastic_alpha=self.elastic_alpha,
            elastic_sigma=self.elastic_sigma,
        )

    def learning_rate_after(self, epoch: int) -> float:
        """The learning rate for the epoch after ``epoch`` (1-based) under ``lr_schedule``."""
        if self.lr_schedule == "constant":
            return self.learning_rate_init
        cosine = 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return max(self.learning_rate_init * cosine, self.learning_rate_init * 0.01)

    def mlp_params(self) -> dict[str, Any]:
        """The keyword arguments for ``MLPClassifier``, under scikit-learn's names (JSON-ready).

        These are the card's ``params``; early stopping is the fit loop's own (fit.py).
        """
        return {
            s.sklearn: _json_value(getattr(self, s.name)) for s in SETTINGS if s.sklearn is not None
        }

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting under its own name, JSON-ready (the card's ``config``); a database
        URL without its password."""
        values = {s.name: _json_value(getattr(self, s.name)) for s in SETTINGS}
        if self.feedback is not None:
            values["feedback"] = redact_url(self.feedback)
        return values


@dataclass(frozen=True)
class Setting:
    """One row of the table: a TrainConfig field and everything said about it."""

    name: str
    type: Any
    default: Any
    help: str
    group: str
    sklearn: str | None
    range: Range | None
    solvers: tuple[Solver, ...]
    metavar: str | None
    in_command: bool

    @property
    def flag(self) -> str:
        """The command-line flag: ``--`` and the name with dashes."""
        return "--" + self.name.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.type is bool

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed words of a Literal setting."""
        return get_args(self.type) if get_origin(self.type) is Literal else None

    def describe(self) -> str:
        """The help text with the default, the range and the solvers that use it."""
        default = self.default
        if isinstance(default, tuple):
            default = ",".join(str(n) for n in default)
        elif isinstance(default, bool):
            default = "on" if default else "off"
        parts = [self.help]
        if default is not None:
            parts.append(f"default {default}")
        if (
            self.range is not None
            and self.name != "hidden_layers"  # its help says the bounds
            and not (self.range.low == 1 and self.range.high is None)
        ):
            parts.append(f"range {self.range}")
        if self.solvers != SOLVERS:
            parts.append(f"{'/'.join(self.solvers)} only")
        return f"{parts[0]} ({'; '.join(parts[1:])})" if len(parts) > 1 else parts[0]


def _settings() -> tuple[Setting, ...]:
    hints = typing.get_type_hints(TrainConfig)
    rows = []
    for item in dataclasses.fields(TrainConfig):
        row: _Row = item.metadata["setting"]
        rows.append(
            Setting(
                name=item.name,
                type=hints[item.name],
                default=item.default,
                help=row.help,
                group=row.group,
                sklearn=row.sklearn,
                range=row.range,
                solvers=row.solvers,
                metavar=row.metavar,
                in_command=row.in_command,
            )
        )
    return tuple(rows)


#: the table, in declaration order (the order of ``--help``)
SETTINGS: tuple[Setting, ...] = _settings()
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
#: scikit-learn's parameter names that were TOML keys once -> the key to use now
RENAMED: dict[str, str] = {
    s.sklearn: s.name for s in SETTINGS if s.sklearn is not None and s.sklearn != s.name
}


def redact_url(url: str) -> str:
    """A database URL without its password (``postgresql://user:***@host/db``)."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not (sep and at and ":" in credentials):
        return url
    return f"{scheme}://{credentials.partition(':')[0]}:***@{location}"


def _json_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _expected(setting: Setting) -> str:
    """What a value of the setting looks like, for messages."""
    kind = setting.type
    choices = setting.choices
    if choices is not None:
        return f"one of {', '.join(choices)}"
    if kind is bool:
        return "true or false"
    if kind is int:
        return "an integer"
    if kind is float:
        return "a number"
    if setting.name == "hidden_layers":
        return "positive layer sizes like 512,256"
    if setting.name == "batch_size":
        return "a positive integer or 'auto'"
    if kind == int | None:
        return "a positive integer"
    if kind == str | None:
        return "a database URL (postgresql://... or sqlite:///path)"
    return "a path"


def check_setting(setting: Setting, value: Any) -> None:
    """ConfigError (naming the flag) unless ``value`` has the setting's type and is in range."""
    kind = setting.type
    choices = setting.choices
    ok: bool
    if choices is not None:
        ok = value in choices
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = _is_int(value)
    elif kind is float:
        ok = _is_number(value)
    elif setting.name == "hidden_layers":
        ok = isinstance(value, tuple) and bool(value) and all(_is_int(n) and n > 0 for n in value)
        if ok:
            _check_layers(setting, value)
    elif setting.name == "batch_size":
        ok = value == "auto" or _is_int(value)
    elif kind == int | None:
        ok = value is None or _is_int(value)
    elif kind in (Path, Path | None):
        ok = isinstance(value, Path) or (value is None and kind != Path)
    elif kind == str | None:  # the feedback database URL
        ok = value is None or (isinstance(value, str) and "://" in value)
    else:  # pragma: no cover - a new kind of setting needs a branch here
        raise TypeError(f"no check for the type of {setting.name}: {kind}")
    if not ok:
        raise ConfigError(f"{setting.flag}: expected {_expected(setting)}, got {value!r}")
    if kind is float and not math.isfinite(value):  # NaN and infinities: no range applies
        raise ConfigError(f"{setting.flag}: must be a finite number, got {value!r}")
    if setting.range is not None and _is_number(value) and value not in setting.range:
        raise ConfigError(f"{setting.flag}: {value!r} is out of range {setting.range}")


def _check_layers(setting: Setting, layers: tuple[int, ...]) -> None:
    """ConfigError unless every size is in the setting's range and the network is not too big."""
    too_big = [n for n in layers if setting.range is not None and n not in setting.range]
    if too_big:
        raise ConfigError(
            f"{setting.flag}: layer size {too_big[0]} is out of range {setting.range}"
        )
    if len(layers) > MAX_LAYERS:
        raise ConfigError(
            f"{setting.flag}: {len(layers)} hidden layers; at most {MAX_LAYERS} are allowed"
        )
    sizes = (28 * 28, *layers, 10)
    weights = sum(a * b for a, b in itertools.pairwise(sizes))
    if weights > MAX_WEIGHTS:
        raise ConfigError(
            f"{setting.flag}: {','.join(map(str, layers))} makes {weights:,} weights; at most "
            f"{MAX_WEIGHTS:,} are allowed (smaller or fewer layers)"
        )


def parse_layers(text: str) -> tuple[int, ...]:
    """``"512,256"`` -> ``(512, 256)``; ConfigError on anything else."""
    try:
        layers = tuple(integer_text(part.strip()) for part in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--hidden-layers: expected comma-separated positive integers like 512,256, got "
            f"{text!r}"
        ) from None
    if not layers or any(n <= 0 for n in layers):
        raise ConfigError(f"--hidden-layers: layer sizes must be positive, got {text!r}")
    _check_layers(BY_NAME["hidden_layers"], layers)
    return layers


def parse_text(setting: Setting, text: str) -> Any:
    """A command-line word -> the setting's value (checked); ConfigError names the flag."""
    kind = setting.type
    try:
        if setting.name == "hidden_layers":
            value: Any = parse_layers(text)
        elif setting.name == "batch_size":
            value = text if text == "auto" else integer_text(text.strip())
        elif kind is int or kind == int | None:
            value = integer_text(text.strip())
        elif kind is float:
            value = float(text)
        elif kind in (Path, Path | None):
            value = _path(setting, text)
        else:
            value = text
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{setting.flag}: expected {_expected(setting)}, got {text!r}") from None
    check_setting(setting, value)
    return value


def _from_toml(setting: Setting, value: Any) -> Any:
    """A TOML value -> the setting's value: lists become tuples, strings become paths."""
    if setting.name == "hidden_layers":
        if isinstance(value, str):
            return parse_layers(value)
        if isinstance(value, list):
            return tuple(value)
        if _is_int(value):
            return (value,)
    if setting.type in (Path, Path | None) and isinstance(value, str):
        return _path(setting, value)
    return value


def _path(setting: Setting, text: str) -> Path:
    """``text`` as a path; ConfigError when it is empty (Path("") would be the current folder)."""
    if not text.strip():
        raise ConfigError(
            f"{setting.flag}: expected a folder, got an empty value (write . for the current "
            "folder)"
        )
    return Path(text)


def _key_error(key: str) -> str:
    if key in RENAMED:
        new = BY_NAME[RENAMED[key]]
        return (
            f"configuration key {key!r} is scikit-learn's name; the key is now {new.name!r} "
            f"(the same name as the flag {new.flag})"
        )
    close = difflib.get_close_matches(key, list(BY_NAME), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown configuration key {key!r}{hint}; known keys: {', '.join(BY_NAME)}"


def from_mapping(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with ``values`` applied; keys may use - or _.

    Raises ConfigError for an unknown or renamed key, or a value of the wrong type or range.
    """
    changes: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in BY_NAME:
            raise ConfigError(_key_error(key))
        setting = BY_NAME[name]
        if name in spelled:  # batch-size and batch_size: which one was meant is anyone's guess
            raise ConfigError(
                f"configuration keys {spelled[name]!r} and {key!r} both set {setting.flag} "
                f"({values[spelled[name]]!r} and {value!r}); keep one of them"
            )
        spelled[name] = key
        changes[name] = _from_toml(setting, value)
        check_setting(setting, changes[name])
    return dataclasses.replace(base or TrainConfig(), **changes)


def validate(config: TrainConfig) -> TrainConfig:
    """Run scikit-learn's own parameter validation on the config; ConfigError names the flag."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.utils._param_validation import InvalidParameterError

    estimator = MLPClassifier(**config.mlp_params())
    try:
        # the same check fit() runs first; calling it here fails before any data is loaded
        estimator._validate_params()
    except InvalidParameterError as exc:
        message = str(exc)
        for setting in SETTINGS:
            if setting.sklearn and f"'{setting.sklearn}'" in message:
                message = f"{setting.flag}: {message}"
                break
        raise ConfigError(message) from exc
    return config


def ignored_settings(config: TrainConfig, given: set[str]) -> list[Setting]:
    """The settings in ``given`` (names set by a flag or the file) that ``config.solver`` ignores.

    scikit-learn would accept them and do nothing (``--momentum`` with adam, ``--early-stopping``
    with lbfgs): the run would silently differ from what was asked.
    """
    return [
        BY_NAME[name]
        for name in sorted(given, key=list(BY_NAME).index)
        if config.solver not in BY_NAME[name].solvers
        and getattr(config, name) != BY_NAME[name].default
    ]


def load_toml(path: Path | str) -> dict[str, Any]:
    """The top-level table of a TOML run file; ConfigError when it cannot be read or parsed."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid UTF-8 TOML: byte {exc.start} cannot be decoded"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
