"""The store's settings, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import ConfigError

#: the SQLite file's name when STORE_PATH is not set: beside the model folder, not inside it
DEFAULT_SQLITE_NAME = "mnist-store.sqlite3"
ON_WORDS = frozenset({"1", "true", "yes", "on"})
OFF_WORDS = frozenset({"0", "false", "no", "off"})
#: the lowest CPU priority Linux gives a thread (setpriority(2)); lower values need privileges
MAX_NICE = 19
#: the largest value of each numeric setting, checked at start: beyond them a timer, a date, an
#: SQLite integer or an array overflows at run time (10 years of inputs, 100 years of predictions,
#: an hour between writes or of waiting, 2**62 rows, a million images or window entries)
HIGHEST: dict[str, float] = {
    "STORE_INPUT_RETENTION_SECONDS": 10 * 365 * 86_400,
    "STORE_RETENTION_DAYS": 36_500,
    "STORE_FLUSH_SECONDS": 3_600,
    "FEEDBACK_WAIT_SECONDS": 3_600,
    "STORE_RETENTION_ROWS": 2**62,
    "STORE_QUEUE_IMAGES": 10**6,
    "FEEDBACK_WINDOW": 10**6,
    "DRIFT_WINDOW": 10**6,
}


class StoreConfigError(ConfigError):
    """A store setting holds a value the service cannot run with."""


@dataclass(frozen=True)
class StoreConfig:
    """Where predictions and feedback go, what is kept, and for how long.

    ``database_url`` (DATABASE_URL) wins over ``sqlite_path`` (STORE_PATH); with neither, the
    SQLite file is ``<MODEL_DIR>/../mnist-store.sqlite3``, beside the model folder, which may be
    mounted read-only.
    """

    enabled: bool = True
    database_url: str | None = None
    sqlite_path: Path | None = None
    #: keep every input (as if each request said ?store_input=true)
    store_inputs: bool = False
    #: how long every input stays so that feedback can keep it; 0: only opted-in inputs are kept
    input_retention_seconds: float = 3600.0
    #: predictions without feedback are deleted after this many days ...
    retention_days: float = 30.0
    #: ... and beyond this many rows (oldest first)
    retention_rows: int = 1_000_000
    #: images waiting to be written, per worker; beyond it records are dropped and counted
    queue_images: int = 20_000
    #: how often the writer takes what is queued and writes it in one transaction
    flush_seconds: float = 0.25
    #: the writer thread's nice value (0-19; 10 is nice(1)'s default step): with every core
    #: busy, answering goes first and the writer takes what CPU is left; 0: equal footing
    writer_nice: int = 10
    #: live accuracy and recall: the last N feedback records of each version
    feedback_window: int = 1000
    #: drift: the last N live inputs of each worker
    drift_window: int = 500
    #: how long POST /feedback waits for a just-answered prediction to reach the database
    feedback_wait_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name, value in (
            ("STORE_INPUT_RETENTION_SECONDS", self.input_retention_seconds),
            ("STORE_RETENTION_DAYS", self.retention_days),
            ("STORE_FLUSH_SECONDS", self.flush_seconds),
            ("FEEDBACK_WAIT_SECONDS", self.feedback_wait_seconds),
        ):
            if not (math.isfinite(value) and 0 <= value <= HIGHEST[name]):
                raise StoreConfigError(
                    f"{name} must be a number from 0 to {HIGHEST[name]:,}, not {value}"
                )
        if self.flush_seconds <= 0:
            raise StoreConfigError("STORE_FLUSH_SECONDS must be > 0")
        if not 0 <= self.writer_nice <= MAX_NICE:
            raise StoreConfigError(
                f"STORE_WRITER_NICE must be a whole number from 0 to {MAX_NICE}, "
                f"not {self.writer_nice}"
            )
        for name, count in (
            ("STORE_RETENTION_ROWS", self.retention_rows),
            ("STORE_QUEUE_IMAGES", self.queue_images),
            ("FEEDBACK_WINDOW", self.feedback_window),
            ("DRIFT_WINDOW", self.drift_window),
        ):
            if not 1 <= count <= HIGHEST[name]:
                raise StoreConfigError(
                    f"{name} must be a whole number from 1 to {HIGHEST[name]:,}, not {count}"
                )

    def url(self, model_dir: Path) -> str:
        """The SQLAlchemy URL of the database (psycopg 3 for PostgreSQL)."""
        if self.database_url:
            return sqlalchemy_url(self.database_url)
        path = self.sqlite_path or Path(model_dir).absolute().parent / DEFAULT_SQLITE_NAME
        return f"sqlite:///{Path(path).absolute()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StoreConfig:
        """The settings from STORE, DATABASE_URL, STORE_PATH, STORE_* and the window sizes."""
        defaults = cls()
        path = environ.get("STORE_PATH", "").strip()
        return cls(
            enabled=_switch(environ, "STORE", defaults.enabled),
            database_url=environ.get("DATABASE_URL", "").strip() or None,
            sqlite_path=Path(path) if path else None,
            store_inputs=_switch(environ, "STORE_INPUTS", defaults.store_inputs),
            input_retention_seconds=_number(
                environ, "STORE_INPUT_RETENTION_SECONDS", defaults.input_retention_seconds
            ),
            retention_days=_number(environ, "STORE_RETENTION_DAYS", defaults.retention_days),
            retention_rows=_count(environ, "STORE_RETENTION_ROWS", defaults.retention_rows),
            queue_images=_count(environ, "STORE_QUEUE_IMAGES", defaults.queue_images),
            flush_seconds=_number(environ, "STORE_FLUSH_SECONDS", defaults.flush_seconds),
            writer_nice=_count(
                environ,
                "STORE_WRITER_NICE",
                defaults.writer_nice,
                f"a whole number from 0 to {MAX_NICE}",
            ),
            feedback_window=_count(environ, "FEEDBACK_WINDOW", defaults.feedback_window),
            drift_window=_count(environ, "DRIFT_WINDOW", defaults.drift_window),
            feedback_wait_seconds=_number(
                environ, "FEEDBACK_WAIT_SECONDS", defaults.feedback_wait_seconds
            ),
        )


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names, absolute; None for other databases, in-memory SQLite and
    ``file:`` URIs (SQLite would create a missing file on the first connection)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        return None
    return Path(database).absolute()


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg 3 driver named for PostgreSQL (postgres:// and postgresql://)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreConfigError(f"DATABASE_URL {url!r} is not a URL (postgresql://... or sqlite://)")
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg://{rest}"
    return url


#: the databases the store's schema and migrations are written for (SQLAlchemy dialect names)
DIALECTS = ("postgresql", "sqlite")


def usable_database_url(url: str, name: str = "DATABASE_URL") -> str:
    """``url`` as SQLAlchemy's URL (sqlalchemy_url) once its dialect is one of DIALECTS and its
    driver is installed; StoreConfigError names ``name`` and says why otherwise. Connects to
    nothing. The message never shows the URL's password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    full = sqlalchemy_url(url)
    try:
        parsed = make_url(full)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreConfigError(
            f"{name}: not a database URL (postgresql://user:pass@host/db or sqlite:///path)"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in DIALECTS:
        raise StoreConfigError(
            f"{name}={shown!r}: the store speaks {' and '.join(DIALECTS)} only "
            "(postgresql://user:pass@host/db or sqlite:///path)"
        )
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreConfigError(
            f"{name}={shown!r}: no driver {parsed.get_driver_name()!r} installed ({exc})"
        ) from None
    return full


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    text = environ.get(name, "").strip().lower()
    if not text:
        return default
    if text in ON_WORDS:
        return True
    if text in OFF_WORDS:
        return False
    raise StoreConfigError(f"{name}={text!r} is not valid: expected on or off")


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise StoreConfigError(f"{name}={text!r} is not valid: expected a number") from None


def _count(
    environ: Mapping[str, str], name: str, default: int, expected: str = "a positive integer"
) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise StoreConfigError(f"{name}={text!r} is not valid: expected {expected}")
    return int(text)
