"""The service's configuration: read once from the environment into a frozen dataclass."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from service.command_line import integer_text
from service.model.contract import MAX_BATCH_SIZE

if TYPE_CHECKING:
    from service.store.config import StoreConfig

T = TypeVar("T")

#: JSON of a full batch of 1024 images of 784 numbers is about 3 MiB; base64 PNGs are larger
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: a 25 Mpx photo is the largest decoded; a decompression bomb is refused before decoding
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
#: all images of one request together: about a second of PNG decoding on this machine
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
#: the largest sensible MLP here, 784-1024-1024-10 in float32, is 7.5 MB of ONNX; a few MB above
DEFAULT_MAX_MODEL_BYTES = 12 * 1024 * 1024

#: upper bounds, checked at start (a larger value would overflow a timer, a date or an array at
#: run time, long after the start said it was fine): a day between polls, 2 GiB, 2**31 pixels
MAX_POLL_SECONDS = 86_400.0
MAX_BYTES = 2**31
MAX_PIXELS = 2**31
#: model versions are folder names; more than this is a typo
MAX_MODEL_VERSION = 10**9


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot run with."""


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to know, from MODEL_DIR to the request limits."""

    model_dir: Path = Path("models")
    model_version: int | None = None
    poll_seconds: float = 2.0
    intra_op_threads: int = 1
    max_batch: int = MAX_BATCH_SIZE
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    #: the bearer token of the admin routes (promote, rollback, trials, repository); None: off
    admin_token: str | None = field(default=None, repr=False)
    #: bearer tokens accepted on the inference routes; empty: inference is open
    api_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    #: the MNIST IDX files for the promote gate over HTTP (MNIST_DATA_DIR); None: the cards' figures
    mnist_data_dir: Path | None = None
    #: overrides the reject threshold of the model's card (Chow's rule); None: the card's
    min_confidence: float | None = None
    #: the prediction and feedback store (STORE, DATABASE_URL, STORE_PATH, STORE_*, windows)
    store: StoreConfig = field(default_factory=lambda: _store_config({}))

    def __post_init__(self) -> None:
        if self.model_version is not None and not 1 <= self.model_version <= MAX_MODEL_VERSION:
            raise ConfigError(
                f"MODEL_VERSION must be a whole number from 1 to {MAX_MODEL_VERSION}, "
                f"not {self.model_version}"
            )
        if not (math.isfinite(self.poll_seconds) and 0 < self.poll_seconds <= MAX_POLL_SECONDS):
            raise ConfigError(
                f"MODEL_POLL_SECONDS must be > 0, up to {MAX_POLL_SECONDS:g}, "
                f"not {self.poll_seconds}"
            )
        if not 1 <= self.intra_op_threads <= 64:
            raise ConfigError(
                f"ORT_INTRA_OP_THREADS must be between 1 and 64, not {self.intra_op_threads}"
            )
        if not 1 <= self.max_batch <= MAX_BATCH_SIZE:
            raise ConfigError(
                f"MAX_BATCH must be between 1 and {MAX_BATCH_SIZE} (the model's max_batch_size), "
                f"not {self.max_batch}"
            )
        for name, value, highest in (
            ("MAX_BODY_BYTES", self.max_body_bytes, MAX_BYTES),
            ("MAX_IMAGE_BYTES", self.max_image_bytes, MAX_BYTES),
            ("MAX_IMAGE_PIXELS", self.max_image_pixels, MAX_PIXELS),
            ("MAX_REQUEST_PIXELS", self.max_request_pixels, MAX_PIXELS),
            ("MAX_MODEL_BYTES", self.max_model_bytes, MAX_BYTES),
        ):
            if not 1 <= value <= highest:
                raise ConfigError(f"{name} must be a whole number from 1 to {highest}, not {value}")
        if self.min_confidence is not None and not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"MIN_CONFIDENCE must be between 0 and 1, not {self.min_confidence}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ServiceConfig:
        """The configuration from environment variables; ConfigError names any bad one."""
        defaults = cls()
        version = _read(environ, "MODEL_VERSION", _positive_int, None)
        return cls(
            model_dir=Path(environ.get("MODEL_DIR", "").strip() or defaults.model_dir),
            model_version=version,
            poll_seconds=_read(environ, "MODEL_POLL_SECONDS", float, defaults.poll_seconds),
            intra_op_threads=_read(
                environ, "ORT_INTRA_OP_THREADS", _positive_int, defaults.intra_op_threads
            ),
            max_batch=_read(environ, "MAX_BATCH", _positive_int, defaults.max_batch),
            max_body_bytes=_read(environ, "MAX_BODY_BYTES", _positive_int, defaults.max_body_bytes),
            max_image_bytes=_read(
                environ, "MAX_IMAGE_BYTES", _positive_int, defaults.max_image_bytes
            ),
            max_image_pixels=_read(
                environ, "MAX_IMAGE_PIXELS", _positive_int, defaults.max_image_pixels
            ),
            max_request_pixels=_read(
                environ, "MAX_REQUEST_PIXELS", _positive_int, defaults.max_request_pixels
            ),
            max_model_bytes=_read(
                environ, "MAX_MODEL_BYTES", _positive_int, defaults.max_model_bytes
            ),
            admin_token=_admin_token(environ),
            api_tokens=_api_tokens(environ),
            mnist_data_dir=Path(environ["MNIST_DATA_DIR"])
            if environ.get("MNIST_DATA_DIR")
            else None,
            min_confidence=_read(environ, "MIN_CONFIDENCE", _probability, None),
            store=_store_config(environ),
        )


#: what a bearer token may hold: visible ASCII (0x21-0x7E). An HTTP header carries Latin-1 at
#: most, and RFC 6750's b64token (letters, digits and ``-._~+/``, then ``=``) is a subset: a token
#: outside this set could never be presented, and every request would be refused
TOKEN_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))


def _check_token(name: str, token: str, position: str = "") -> None:
    """ConfigError naming ``name`` when ``token`` holds a character no client can send; the
    message never shows the token."""
    for index, character in enumerate(token, 1):
        if character not in TOKEN_CHARACTERS:
            raise ConfigError(
                f"{name}: {position}character {index} of the token is {_shown(character)}; "
                "a bearer token is visible ASCII only (letters, digits, -._~+/= and the like)"
            )


def _shown(character: str) -> str:
    return "a space" if character.isspace() else f"U+{ord(character):04X}, not ASCII"


def _admin_token(environ: Mapping[str, str]) -> str | None:
    """ADMIN_TOKEN, stripped; None (admin routes off, 403) when unset or blank."""
    token = environ.get("ADMIN_TOKEN", "").strip()
    if not token:
        return None
    _check_token("ADMIN_TOKEN", token)
    return token


def _api_tokens(environ: Mapping[str, str]) -> frozenset[str]:
    """The tokens of API_TOKENS (comma-separated); ConfigError when it is set but holds none
    (empty, only spaces or commas), which would otherwise leave inference open while the
    operator thinks it is closed, and when a token holds a character no client can send."""
    if "API_TOKENS" not in environ:
        return frozenset()
    text = environ["API_TOKENS"]
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise ConfigError(
            f"API_TOKENS={text!r} holds no token: set comma-separated tokens, or unset it "
            "for open inference"
        )
    for number, token in enumerate(tokens, 1):
        _check_token("API_TOKENS", token, f"token {number}, ")
    return frozenset(tokens)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ValueError("not in 0..1")
    return value


def _store_config(environ: Mapping[str, str]) -> StoreConfig:
    from service.store.config import StoreConfig  # it imports ConfigError from here

    return StoreConfig.from_env(environ)


def _positive_int(text: str) -> int:
    value = integer_text(text)
    if value < 1:
        raise ValueError("not positive")
    return value


#: what a setting read by each parser must be, for the message of a bad one
_EXPECTED: dict[Callable[[str], Any], str] = {
    _positive_int: "a positive integer",
    _probability: "a number from 0 to 1",
}


def _read(environ: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return parse(text)
    except ValueError:
        expected = _EXPECTED.get(parse, "a number")
        raise ConfigError(f"{name}={text!r} is not valid: expected {expected}") from None
