"""ServiceConfig.from_env: defaults, parsing, and a clear error naming any bad variable."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from service.command_line import integer_text
from service.config import ConfigError, ServiceConfig
from service.model.contract import MAX_BATCH_SIZE


def test_defaults_with_an_empty_environment() -> None:
    config = ServiceConfig.from_env({})
    assert config == ServiceConfig()
    assert config.model_dir == Path("models")
    assert config.model_version is None
    assert config.poll_seconds == 2.0
    assert config.intra_op_threads == 1
    assert config.max_batch == MAX_BATCH_SIZE
    assert config.max_body_bytes >= config.max_image_bytes


def test_every_variable_is_read() -> None:
    config = ServiceConfig.from_env(
        {
            "MODEL_DIR": "/srv/models",
            "MODEL_VERSION": "3",
            "MODEL_POLL_SECONDS": "0.5",
            "ORT_INTRA_OP_THREADS": "2",
            "MAX_BATCH": "64",
            "MAX_BODY_BYTES": "1000000",
            "MAX_IMAGE_BYTES": "50000",
            "MAX_IMAGE_PIXELS": "1000000",
        }
    )
    assert config == ServiceConfig(
        model_dir=Path("/srv/models"),
        model_version=3,
        poll_seconds=0.5,
        intra_op_threads=2,
        max_batch=64,
        max_body_bytes=1_000_000,
        max_image_bytes=50_000,
        max_image_pixels=1_000_000,
    )


def test_blank_values_mean_the_default() -> None:
    assert ServiceConfig.from_env({"MODEL_VERSION": " ", "MODEL_DIR": ""}) == ServiceConfig()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL_VERSION", "latest"),
        ("MODEL_VERSION", "0"),
        ("MODEL_VERSION", "-2"),
        ("MODEL_POLL_SECONDS", "soon"),
        ("MODEL_POLL_SECONDS", "0"),
        ("MODEL_POLL_SECONDS", "nan"),
        ("MODEL_POLL_SECONDS", "inf"),
        ("ORT_INTRA_OP_THREADS", "1.5"),
        ("ORT_INTRA_OP_THREADS", "1000"),
        ("MAX_BATCH", "0"),
        ("MAX_BATCH", "1_000"),
        ("MAX_BATCH", "+3"),
        ("MAX_BATCH", "\u0663"),
        ("MAX_BATCH", str(MAX_BATCH_SIZE + 1)),
        ("MAX_BODY_BYTES", "16MB"),
        ("MAX_IMAGE_BYTES", "-1"),
        ("MAX_IMAGE_PIXELS", "many"),
        ("MAX_REQUEST_PIXELS", "0"),
        ("MIN_CONFIDENCE", "2"),
        ("API_TOKENS", ", "),
        ("API_TOKENS", ",,"),
    ],
)
def test_an_invalid_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        ServiceConfig.from_env({name: value})


def test_the_config_is_frozen() -> None:
    config = ServiceConfig()
    with pytest.raises(FrozenInstanceError):
        config.max_batch = 3  # type: ignore[misc]


def test_a_bad_setting_says_what_it_must_be() -> None:
    with pytest.raises(ConfigError, match="expected a number from 0 to 1"):
        ServiceConfig.from_env({"MIN_CONFIDENCE": "2"})
    with pytest.raises(ConfigError, match="holds no token"):
        ServiceConfig.from_env({"API_TOKENS": " , "})
    assert ServiceConfig.from_env({"API_TOKENS": " a, ,b "}).api_tokens == {"a", "b"}


@pytest.mark.parametrize(
    ("text", "value"), [("0", 0), ("42", 42), ("007", 7), ("-3", -3), ("9" * 4000, 10**4000 - 1)]
)
def test_an_integer_is_ascii_digits(text: str, value: int) -> None:
    assert integer_text(text) == value


@pytest.mark.parametrize(
    "text", ["", "-", "1_000", "+3", "\u0663", "1 0", "1.0", "0x10", "9" * 4001]
)
def test_other_spellings_int_takes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        integer_text(text)
