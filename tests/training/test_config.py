"""TrainConfig, the TOML run file and the CLI flags: precedence and clear errors before training."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from training.cli import build_parser, config_from_args, main
from training.config import (
    BY_NAME,
    RENAMED,
    SETTINGS,
    ConfigError,
    TrainConfig,
    from_mapping,
    parse_layers,
    validate,
)
from training.pipeline import EXIT_USAGE


def _config(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(argv))


def test_mlp_params_are_exactly_the_mlpclassifier_keyword_arguments() -> None:
    from sklearn.neural_network import MLPClassifier

    params = TrainConfig().mlp_params()
    assert set(params) == {s.sklearn for s in SETTINGS if s.sklearn}
    assert set(params) == set(MLPClassifier().get_params()) - {"warm_start", "verbose", "max_fun"}
    MLPClassifier(**params)._validate_params()


def test_every_knob_has_a_flag() -> None:
    argv = shlex.split(
        "--hidden-layers 64,32 --activation tanh --solver sgd --alpha 0.001 --batch-size 64 "
        "--learning-rate invscaling --learning-rate-init 0.05 --power-t 0.3 --momentum 0.8 "
        "--no-nesterov --beta-1 0.8 --beta-2 0.99 --epsilon 1e-7 --early-stopping "
        "--validation-fraction 0.2 --patience 4 --tol 0.001 --epochs 7 --no-shuffle --seed 3 "
        "--train-limit 1000 --augment --augment-copies 2 --threads 2 --min-accuracy 0.9 "
        "--data-dir /d --models-dir /m --progress json"
    )
    # beta_1, beta_2, epsilon are adam's: the sgd run would ignore them, so it is refused ...
    with pytest.raises(ConfigError, match="--beta-1: scikit-learn's sgd ignores it"):
        _config(argv)
    # ... and accepted when not checked against the solver (the sweep crosses solvers)
    config = config_from_args(build_parser().parse_args(argv), strict_solver=False)
    assert config == TrainConfig(
        hidden_layers=(64, 32),
        activation="tanh",
        solver="sgd",
        alpha=0.001,
        batch_size=64,
        learning_rate="invscaling",
        learning_rate_init=0.05,
        power_t=0.3,
        momentum=0.8,
        nesterov=False,
        beta_1=0.8,
        beta_2=0.99,
        epsilon=1e-7,
        early_stopping=True,
        validation_fraction=0.2,
        patience=4,
        tol=0.001,
        epochs=7,
        shuffle=False,
        seed=3,
        train_limit=1000,
        augment=True,
        augment_copies=2,
        threads=2,
        min_accuracy=0.9,
        data_dir=Path("/d"),
        models_dir=Path("/m"),
        progress="json",
    )


def test_no_flags_give_the_defaults() -> None:
    assert _config([]) == TrainConfig()


def test_the_file_sets_values_and_flags_override_it(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        'hidden_layers = [256, 128]\nactivation = "tanh"\nsolver = "sgd"\nepochs = 9\n'
        'models_dir = "out"\nearly_stopping = true\nbatch-size = 64\n'
    )
    config = _config(["--config", str(run_file), "--activation", "logistic", "--epochs", "4"])
    assert config.hidden_layers == (256, 128)
    assert config.batch_size == 64  # the flag's spelling works as a key too
    assert config.solver == "sgd"
    assert config.early_stopping is True
    assert config.models_dir == Path("out")
    assert config.activation == "logistic"  # the flag wins
    assert config.epochs == 4


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_an_old_scikit_learn_key_names_the_new_one(tmp_path: Path, old: Any) -> None:
    run_file = tmp_path / "run.toml"
    value = {"hidden_layer_sizes": "[64]", "nesterovs_momentum": "false"}.get(old, "3")
    run_file.write_text(f"{old} = {value}\n")
    new = BY_NAME[RENAMED[old]]
    with pytest.raises(ConfigError) as caught:
        _config(["--config", str(run_file)])
    assert f"{old!r} is scikit-learn's name; the key is now {new.name!r}" in str(caught.value)
    assert new.flag in str(caught.value)


def test_a_typo_in_a_file_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text("activaton = 'relu'\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'activaton'.*'activation'"):
        _config(["--config", str(run_file)])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("activation = 'sigmoid'", "activation"),
        ("solver = 'rmsprop'", "solver"),
        ("epochs = 'ten'", "--epochs"),
        ("alpha = -1.0", "--alpha"),
        ("beta_1 = 1.5", "--beta-1"),
        ("learning_rate_init = 0.0", "--learning-rate-init"),
        ("hidden_layers = [64, 0]", "--hidden-layers"),
        ("validation_fraction = 1.0", "--validation-fraction"),
        ("early_stopping = 'yes'", "--early-stopping"),
        ("min_accuracy = 2.0", "--min-accuracy"),
        ("batch_size = -3", "--batch-size"),
        ("patience = 0", "--patience"),
        ("threads = 0", "--threads"),
    ],
)
def test_an_impossible_value_in_the_file_is_named(tmp_path: Path, text: Any, key: Any) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        _config(["--config", str(run_file)])


def test_scikit_learn_validates_what_it_validates() -> None:
    with pytest.raises(ConfigError, match="momentum"):
        validate(TrainConfig(momentum=1.5))
    with pytest.raises(ConfigError, match="--patience"):
        TrainConfig(patience=0)


def test_broken_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("activation = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        _config(["--config", str(tmp_path / "absent.toml")])


def test_early_stopping_needs_a_validation_split() -> None:
    with pytest.raises(ConfigError, match="--validation-fraction"):
        TrainConfig(early_stopping=True, validation_fraction=0.0)


def test_parse_layers() -> None:
    assert parse_layers("512,256") == (512, 256)
    assert parse_layers("512, 256") == (512, 256)
    for bad in ("", "a,b", "64,-1", "64,,32", "1_000", "+64", "\u0663\u0662"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_from_mapping_accepts_every_setting_by_its_name() -> None:
    assert from_mapping(TrainConfig().to_dict()) == TrainConfig()


def test_every_setting_is_one_row_of_the_table_and_shows_in_help() -> None:
    help_text = " ".join(build_parser().format_help().split())
    for setting in SETTINGS:
        assert setting.flag in help_text
        # the help says the default and (for numbers) the range, from the same row
        assert " ".join(setting.describe().split()) in help_text, setting.name
    assert [s.name for s in SETTINGS] == list(TrainConfig().to_dict())
    for setting in SETTINGS:
        assert getattr(TrainConfig(), setting.name) == setting.default


@pytest.mark.parametrize(
    ("argv", "flag", "fix"),
    [
        ("--solver lbfgs --early-stopping", "--early-stopping", "--solver adam"),
        ("--solver adam --momentum 0.5", "--momentum", "--solver sgd"),
        ("--solver sgd --beta-2 0.9", "--beta-2", "--solver adam"),
        ("--solver lbfgs --batch-size 64", "--batch-size", "--solver adam"),
    ],
)
def test_a_setting_the_solver_ignores_is_refused(
    argv: Any, flag: Any, fix: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv.split(), "--data-dir", "/nonexistent"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mnist-train: configuration error: {flag}: ") and fix in err


def test_the_solver_ignoring_a_default_is_fine() -> None:
    assert _config(["--solver", "lbfgs", "--no-early-stopping"]).solver == "lbfgs"


def test_the_cli_fails_before_loading_any_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_file = tmp_path / "run.toml"
    run_file.write_text("alpah = 0.1\n")
    # the data dir does not exist: a data error would be exit 3, so 2 proves the check came first
    code = main(["--config", str(run_file), "--data-dir", str(tmp_path / "none")])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'alpah'" in err and "did you mean 'alpha'" in err
    assert "loading MNIST" not in err


def test_a_bad_flag_value_exits_2_with_one_line_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--solver", "rmsprop"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--solver" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--hidden-layers", "64,x"])
    err = capsys.readouterr().err
    assert "--hidden-layers" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["--beta-2", "1.0"])
    assert "--beta-2: 1.0 is out of range [0, 1)" in capsys.readouterr().err
    # an integer is written in ASCII digits: int()'s other spellings are refused
    for spelling in ("1_0", "+3", "\u0663"):
        with pytest.raises(SystemExit) as caught:
            main(["--epochs", spelling])
        assert caught.value.code == 2
        err = capsys.readouterr().err
        assert "--epochs" in err and len(err.strip().splitlines()) == 1


def test_the_cosine_schedule_falls_from_the_initial_rate_to_a_hundredth() -> None:
    config = TrainConfig(lr_schedule="cosine", epochs=10, learning_rate_init=0.002)
    rates = [config.learning_rate_after(epoch) for epoch in range(1, 11)]
    assert rates == sorted(rates, reverse=True)
    assert rates[4] == pytest.approx(0.001)  # half way: half the rate
    assert rates[-1] == pytest.approx(0.002 * 0.01)
    assert TrainConfig(epochs=10).learning_rate_after(9) == 0.001  # constant
    with pytest.raises(ConfigError, match="--lr-schedule cosine: sgd already follows"):
        TrainConfig(solver="sgd", learning_rate="invscaling", lr_schedule="cosine")


def test_the_augmentation_strengths_are_settings() -> None:
    config = _config(["--augment", "--augment-rotation", "8", "--elastic-alpha", "0"])
    distortion = config.distortion()
    assert distortion.max_rotation == 8.0 and distortion.elastic_alpha == 0.0
    assert distortion.max_shift == TrainConfig().augment_shift
    with pytest.raises(SystemExit):
        _config(["--elastic-sigma", "0"])  # range > 0


def test_the_default_recipe_reads_as_the_committed_models_shape() -> None:
    recipe = Path(__file__).resolve().parents[2] / "training" / "recipes" / "default.toml"
    config = _config(["--config", str(recipe)])
    # the serving cost per image is the weights' size: 784-800-10 (docs/training-study.md)
    assert config.hidden_layers == (800,) and config.solver == "adam"
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "mnist-train --config training/recipes/default.toml" in readme


FLOAT_SETTINGS = [setting for setting in SETTINGS if setting.type is float]


@pytest.mark.parametrize("setting", FLOAT_SETTINGS, ids=lambda setting: setting.name)
@pytest.mark.parametrize("text", ["inf", "-inf", "nan"])
def test_every_float_setting_must_be_finite(
    setting: Any, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(FLOAT_SETTINGS) >= 10  # alpha, learning_rate_init, tol, min_accuracy, ...
    with pytest.raises(SystemExit) as ended:  # argparse's usage error
        main([f"{setting.flag}={text}"])
    assert ended.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{setting.flag}: must be a finite number, got {float(text)!r}" in err
    assert "out of range" not in err
    run_file = tmp_path / "run.toml"
    run_file.write_text(f"{setting.name} = {text}\n")
    assert main(["--config", str(run_file)]) == EXIT_USAGE
    assert f"{setting.flag}: must be a finite number" in capsys.readouterr().err
