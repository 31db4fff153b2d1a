"""TrainConfig, the TOML run file and the CLI flags: precedence and clear errors before training."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from training.cli import build_parser, config_from_args, main
from training.config import (
    FIELD_NAMES,
    MLP_FIELDS,
    ConfigError,
    TrainConfig,
    from_mapping,
    parse_layers,
    validate,
)
from training.pipeline import EXIT_USAGE


def _config(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(argv))


def test_mlp_params_are_exactly_the_mlpclassifier_keyword_arguments():
    from sklearn.neural_network import MLPClassifier

    params = TrainConfig().mlp_params()
    assert set(params) == set(MLP_FIELDS)
    assert set(params) <= set(MLPClassifier().get_params())
    MLPClassifier(**params)._validate_params()


def test_every_knob_has_a_flag():
    argv = shlex.split(
        "--hidden-layers 64,32 --activation tanh --solver sgd --alpha 0.001 --batch-size 64 "
        "--learning-rate invscaling --learning-rate-init 0.05 --power-t 0.3 --momentum 0.8 "
        "--no-nesterov --beta-1 0.8 --beta-2 0.99 --epsilon 1e-7 --early-stopping "
        "--validation-fraction 0.2 --patience 4 --tol 0.001 --epochs 7 --no-shuffle --seed 3 "
        "--train-limit 1000 --augment --augment-copies 2 --min-accuracy 0.9 --data-dir /d "
        "--models-dir /m --progress json"
    )
    config = _config(argv)
    assert config == TrainConfig(
        hidden_layer_sizes=(64, 32),
        activation="tanh",
        solver="sgd",
        alpha=0.001,
        batch_size=64,
        learning_rate="invscaling",
        learning_rate_init=0.05,
        power_t=0.3,
        momentum=0.8,
        nesterovs_momentum=False,
        beta_1=0.8,
        beta_2=0.99,
        epsilon=1e-7,
        early_stopping=True,
        validation_fraction=0.2,
        n_iter_no_change=4,
        tol=0.001,
        max_iter=7,
        shuffle=False,
        random_state=3,
        train_limit=1000,
        augment=True,
        augment_copies=2,
        min_accuracy=0.9,
        data_dir=Path("/d"),
        models_dir=Path("/m"),
        progress="json",
    )


def test_no_flags_give_the_defaults():
    assert _config([]) == TrainConfig()


def test_the_file_sets_values_and_flags_override_it(tmp_path):
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        'hidden_layer_sizes = [256, 128]\nactivation = "tanh"\nsolver = "sgd"\nmax_iter = 9\n'
        'models_dir = "out"\nearly_stopping = true\n'
    )
    config = _config(["--config", str(run_file), "--activation", "logistic", "--epochs", "4"])
    assert config.hidden_layer_sizes == (256, 128)
    assert config.solver == "sgd"
    assert config.early_stopping is True
    assert config.models_dir == Path("out")
    assert config.activation == "logistic"  # the flag wins
    assert config.max_iter == 4


def test_a_typo_in_a_file_key_is_named_with_a_suggestion(tmp_path):
    run_file = tmp_path / "run.toml"
    run_file.write_text("activaton = 'relu'\n")
    with pytest.raises(ConfigError, match=r"unknown configuration key 'activaton'.*'activation'"):
        _config(["--config", str(run_file)])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("activation = 'sigmoid'", "activation"),
        ("solver = 'rmsprop'", "solver"),
        ("max_iter = 'ten'", "max_iter"),
        ("alpha = -1.0", "alpha"),
        ("beta_1 = 1.5", "beta_1"),
        ("learning_rate_init = 0.0", "learning_rate_init"),
        ("hidden_layer_sizes = [64, 0]", "hidden_layer_sizes"),
        ("validation_fraction = 1.0", "validation_fraction"),
        ("early_stopping = 'yes'", "early_stopping"),
        ("min_accuracy = 2.0", "min_accuracy"),
        ("batch_size = -3", "batch_size"),
    ],
)
def test_an_impossible_value_in_the_file_is_named(tmp_path, text, key):
    run_file = tmp_path / "run.toml"
    run_file.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        _config(["--config", str(run_file)])


def test_scikit_learn_validates_what_it_validates():
    with pytest.raises(ConfigError, match="momentum"):
        validate(TrainConfig(momentum=1.5))
    with pytest.raises(ConfigError, match="n_iter_no_change"):
        validate(TrainConfig(n_iter_no_change=0))


def test_broken_toml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("activation = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _config(["--config", str(bad)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        _config(["--config", str(tmp_path / "absent.toml")])


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="validation_fraction"):
        TrainConfig(early_stopping=True, validation_fraction=0.0)


def test_parse_layers():
    assert parse_layers("512,256") == (512, 256)
    for bad in ("", "a,b", "64,-1", "64,,32"):
        with pytest.raises(ConfigError):
            parse_layers(bad)


def test_from_mapping_accepts_exactly_the_field_names():
    assert from_mapping({name: getattr(TrainConfig(), name) for name in FIELD_NAMES}) == (
        TrainConfig()
    )


def test_the_cli_fails_before_loading_any_data(tmp_path, capsys):
    run_file = tmp_path / "run.toml"
    run_file.write_text("alpah = 0.1\n")
    # the data dir does not exist: a data error would be exit 3, so 2 proves the check came first
    code = main(["--config", str(run_file), "--data-dir", str(tmp_path / "none")])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'alpah'" in err and "did you mean 'alpha'" in err
    assert "loading MNIST" not in err


def test_a_bad_flag_value_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--solver", "rmsprop"])
    assert caught.value.code == 2
    assert "--solver" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--hidden-layers", "64,x"])
    assert "hidden_layer_sizes" in capsys.readouterr().err
    assert main(["--beta-2", "1.0", "--data-dir", "/nonexistent"]) == EXIT_USAGE
    assert "beta_2" in capsys.readouterr().err
