"""The store's database: SQLite or PostgreSQL through SQLAlchemy Core, one schema for both.

``PredictionStore`` is the only code that speaks SQL. Every method runs in its own short
transaction and raises ``StoreUnavailable`` when the database cannot be reached or refuses the
write (read-only file, server down); the callers decide what that means (the writer drops and
counts, ``POST /feedback`` answers 503).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import NullPool, QueuePool

from service.errors import (
    AmbiguousRequestId,
    DuplicateFeedback,
    InvalidInput,
    StoreUnavailable,
    UnknownPrediction,
)
from service.model.contract import N_CLASSES
from service.model.drift import SCALAR_STATISTICS
from service.store.schema import KEPT_CORRECTED, feedback, predictions

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: one lock id for every service that migrates the same PostgreSQL database
_MIGRATION_LOCK = 0x6D6E697374  # "mnist"
_MIGRATION_ATTEMPTS = 4
_MIGRATION_THREAD_LOCK = threading.Lock()
#: statistics columns of a prediction record: the drift monitor's per-image statistics
STATISTIC_COLUMNS = SCALAR_STATISTICS
#: the columns a prediction record is written with, in the order of ``write_prediction_tuples``
#: and ``write_prediction_columns``
PREDICTION_COLUMNS: tuple[str, ...] = (
    "request_id",
    "item",
    "created_at",
    "model_version",
    "route",
    "digit",
    "confidence",
    "accepted",
    "reject_reason",
    *STATISTIC_COLUMNS,
    "input",
    "input_kept",
)
_CREATED_AT = PREDICTION_COLUMNS.index("created_at")
#: PostgreSQL: after a batch repeated a stored request id, insert row by row this long
COPY_PAUSE_SECONDS = 60.0
#: a record repeating a stored (request id, image) with all of these equal is the same answer
#: to the same image (a retry: HAProxy's ``retry-on``, a client's), not a reused request id
SAME_ANSWER_COLUMNS: tuple[str, ...] = ("model_version", "digit", *STATISTIC_COLUMNS)
T = TypeVar("T")


@dataclass(frozen=True)
class FeedbackItem:
    """A person's label for one image of an answered request."""

    request_id: str
    label: int
    item: int = 0


@dataclass(frozen=True)
class FeedbackOutcome:
    """What the store recorded for one FeedbackItem."""

    request_id: str
    item: int
    label: int
    model_version: int
    predicted_digit: int
    correct: bool
    input_kept: bool
    #: the answer's reject decision (None: recorded before decisions were)
    accepted: bool | None = None
    reject_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "index": self.item,
            "label": self.label,
            "model_version": self.model_version,
            "predicted_digit": self.predicted_digit,
            "correct": self.correct,
            "input_kept": self.input_kept,
            "accepted": self.accepted,
            "reject_reason": self.reject_reason,
        }


@dataclass(frozen=True)
class VersionFigures:
    """Feedback figures of one model version: all time, and over its last ``window`` records."""

    version: int
    feedback_total: int
    window: int
    correct: int
    #: per true digit: (feedback records in the window with that label, of them answered right)
    per_class: tuple[tuple[int, int], ...]
    #: feedback records in the window whose answer the reject option accepted, of them right
    accepted_window: int = 0
    accepted_correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.window if self.window else None

    @property
    def accepted_accuracy(self) -> float | None:
        """Live accuracy among the answers the service stood by (``"accepted": true``)."""
        return self.accepted_correct / self.accepted_window if self.accepted_window else None

    def recall(self) -> dict[int, float]:
        """Recall per digit that has feedback in the window."""
        return {d: right / total for d, (total, right) in enumerate(self.per_class) if total}

    def to_json(self) -> dict[str, Any]:
        return {
            "feedback_total": self.feedback_total,
            "window": self.window,
            "correct": self.correct,
            "live_accuracy": self.accuracy,
            "accepted_window": self.accepted_window,
            "accepted_live_accuracy": self.accepted_accuracy,
            "recall": {str(digit): value for digit, value in self.recall().items()},
        }


@dataclass(frozen=True)
class PredictionFigures:
    """The answers of one version over its last ``window`` stored predictions."""

    version: int
    window: int
    digits: tuple[int, ...]  # count per predicted digit
    mean_confidence: float | None
    rejected: int
    with_reject_option: int

    def to_json(self) -> dict[str, Any]:
        total = max(self.window, 1)
        return {
            "window": self.window,
            "digit_distribution": {str(d): n / total for d, n in enumerate(self.digits)},
            "mean_confidence": self.mean_confidence,
            "rejection_rate": (
                self.rejected / self.with_reject_option if self.with_reject_option else None
            ),
        }


@dataclass(frozen=True)
class LabelledExample:
    """A kept input and the label a person gave it (for training)."""

    request_id: str
    item: int
    created_at: datetime
    pixels: bytes  # 784 bytes, uint8, ink high
    label: int
    predicted_digit: int
    model_version: int


@dataclass
class PurgeCounts:
    """Rows the retention rules touched in one purge."""

    inputs_erased: int = 0
    expired: int = 0
    over_limit: int = 0
    details: dict[str, int] = field(default_factory=dict)


def create_engine(url: str) -> Engine:
    """An engine with short timeouts: a dead database fails fast instead of hanging a thread."""
    if url.startswith("sqlite"):
        # a connection per transaction (opening a SQLite file takes microseconds): a file made
        # read-only, moved or restored is seen at the next write, not hidden by a pooled handle
        # (the writer thread's inserts keep one open instead: create_sqlite_writer_engine)
        # busy timeout: workers take turns writing; waiting is the writer thread's, not a request's
        engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": 5.0})
        _set_sqlite_pragmas(engine)
        return engine
    return sa.create_engine(
        url,
        pool_size=2,
        max_overflow=4,
        pool_pre_ping=True,
        pool_timeout=2.0,
        connect_args={"connect_timeout": 2, "options": "-c statement_timeout=5000"},
    )


def _set_sqlite_pragmas(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers (scrapes, /feedback) never wait for the writer threads
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        except Exception:  # a read-only file cannot switch; reads still work
            log.debug("SQLite pragmas not applied", exc_info=True)
        finally:
            cursor.close()


def create_sqlite_writer_engine(url: str | sa.URL) -> Engine | None:
    """The SQLite engine of the writer thread's inserts: one connection kept open from flush to
    flush (None for a database that is not a file: the inserts use ``create_engine``'s).

    Closing the last connection of a WAL database checkpoints the WAL into the file and deletes
    it, and opening one sets the pragmas again: with a connection per flush (``NullPool``) that
    was most of the writer's CPU per record. The file is still seen afresh when it changes: at
    each checkout the connection is dropped and a new one opened when the file's identity,
    change time, size or writability differ from what they were when the connection was last
    given back (a file made read-only, moved, replaced or deleted; a sibling worker's
    checkpoint too, which costs one reopen). An idle connection holds no lock (WAL): readers,
    ``POST /feedback`` and ``mnist-store`` in other processes are not blocked by it. A
    connection inherited through ``fork`` is forgotten unclosed, as SQLAlchemy's pooling guide
    advises, and the child opens its own."""
    url = sa.make_url(url)
    path = url.database
    if not path or path == ":memory:" or url.query.get("uri"):
        return None
    engine = sa.create_engine(
        url,
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=1,  # flush() from another thread (shutdown) while the thread writes
        pool_timeout=5.0,
        connect_args={"timeout": 5.0, "check_same_thread": False},
    )
    _set_sqlite_pragmas(engine)

    @sa.event.listens_for(engine, "connect")
    def _remember_process(_dbapi_connection: Any, record: Any) -> None:
        record.info[_PROCESS] = os.getpid()

    @sa.event.listens_for(engine, "checkout")
    def _same_file(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get(_PROCESS) != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise DisconnectionError("a connection of the parent process")
        if _FILE in record.info and record.info[_FILE] != _file_state(path):
            raise DisconnectionError("the database file changed since the last write")

    @sa.event.listens_for(engine, "checkin")
    def _note_file(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[_FILE] = _file_state(path)

    return engine


_PROCESS = "mnist_process"
_FILE = "mnist_file_state"


def _file_state(path: str) -> tuple[int, ...] | None:
    """What tells a SQLite file's replacement or a change of its mode from outside: device,
    inode, change time (ns), size and whether this process may write it (None: no such file)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    writable = os.access(path, os.W_OK)
    return (found.st_dev, found.st_ino, found.st_ctime_ns, found.st_size, writable)


def create_copy_engine(url: str | sa.URL) -> Engine:
    """The PostgreSQL engine of the writer thread's COPYs: one pooled connection in autocommit
    (a COPY is its own transaction: no BEGIN and COMMIT round trips), pinged before each use as
    ``create_engine``'s are (a server restarted meanwhile costs no batch), and with
    ``synchronous_commit`` off: a COPY's commit does not wait for the disk, so a crash of the
    server may lose the last fraction of a second of prediction records (never feedback, which
    goes through ``create_engine``'s connections)."""
    return sa.create_engine(
        url,
        pool_size=1,
        max_overflow=1,
        pool_pre_ping=True,
        pool_timeout=2.0,
        isolation_level="AUTOCOMMIT",
        connect_args={
            "connect_timeout": 2,
            "options": "-c statement_timeout=5000 -c synchronous_commit=off",
        },
    )


class PredictionStore:
    """Predictions and feedback in one database (SQLite file or PostgreSQL server)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._schema_ready = False
        self._copy_after = 0.0  # PostgreSQL: COPY again from this time.monotonic()
        # PostgreSQL: the writer thread's own connection (nothing connects before its first COPY)
        self._copy_engine = (
            create_copy_engine(engine.url) if engine.dialect.name == "postgresql" else None
        )
        # SQLite: the writer thread's inserts keep their connection open (None: not a file)
        self._writer_engine = (
            create_sqlite_writer_engine(engine.url) if engine.dialect.name == "sqlite" else None
        )

    @classmethod
    def open(cls, url: str) -> PredictionStore:
        """A store on ``url`` (nothing is connected until the first call)."""
        return cls(create_engine(url))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()
        for own in (self._copy_engine, self._writer_engine):
            if own is not None:
                own.dispose()

    def _run(
        self,
        work: Callable[[Connection], T],
        *,
        migrating: bool = False,
        engine: Engine | None = None,
    ) -> T:
        if not (self._schema_ready or migrating):
            self.migrate()  # the first use in a process brings the schema up to date
        try:
            with (engine or self.engine).begin() as connection:
                return work(connection)
        except (AmbiguousRequestId, DuplicateFeedback, UnknownPrediction, InvalidInput):
            raise
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the prediction store failed: {_reason(exc)}") from exc

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic); safe to run from many processes."""
        from alembic import command
        from alembic.config import Config

        def upgrade(connection: Connection) -> None:
            if connection.dialect.name == "postgresql":
                # the second of two workers migrating at once waits, then finds nothing to do
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK}
                )
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        # Alembic keeps its context in module globals: one migration per process at a time
        with _MIGRATION_THREAD_LOCK:
            if self._schema_ready:
                return
            for attempt in range(_MIGRATION_ATTEMPTS):
                try:
                    self._run(upgrade, migrating=True)
                    break
                except StoreUnavailable:
                    # SQLite has no advisory lock: two workers starting together race, and
                    # the loser finds the schema made once the winner commits
                    if attempt == _MIGRATION_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            self._schema_ready = True

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None before the first migration)."""

        def read(connection: Connection) -> str | None:
            if not sa.inspect(connection).has_table("alembic_version"):
                return None
            value = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            return None if value is None else str(value)

        return self._run(read, migrating=True)

    # -- predictions -----------------------------------------------------------------------------

    def write_predictions(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert prediction records (one mapping per row, a missing nullable column is NULL) in
        one transaction; a repeated (request id, image) keeps the first record, and marks it
        ``reused`` unless the repeat is the same answer (``SAME_ANSWER_COLUMNS``). Returns how
        many rows were offered."""
        return self.write_prediction_tuples(
            [tuple(row.get(name) for name in PREDICTION_COLUMNS) for row in rows]
        )

    def write_prediction_tuples(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """``write_predictions`` for rows given as tuples in ``PREDICTION_COLUMNS`` order (no
        mapping per row). ``created_at`` is an aware datetime; ``input`` bytes (784, uint8) or
        None."""
        if not rows:
            return 0
        return self.write_prediction_columns([list(column) for column in zip(*rows, strict=True)])

    def write_prediction_columns(self, columns: Sequence[Sequence[Any]]) -> int:
        """``write_predictions`` for records given column by column, in ``PREDICTION_COLUMNS``
        order, all of one length (what the writer thread builds: every value of a column made
        for the whole batch at once). ``created_at`` holds aware datetimes; ``input`` bytes
        (784, uint8) or None. Returns how many rows were offered.

        PostgreSQL: one binary ``COPY`` per batch (``_copy_predictions``); should the batch
        repeat a stored (request id, image), the COPY fails whole and the batch, and those of
        the next ``COPY_PAUSE_SECONDS``, go in as on SQLite.
        SQLite: one DB-API ``executemany`` of ``INSERT ... ON CONFLICT DO UPDATE`` (the stored
        row keeps its values; it is marked ``reused`` when the repeat answered otherwise,
        ``_insert_statement``): SQLAlchemy's
        per-row parameter processing is skipped; the values are already of the driver's types,
        except ``created_at``, which goes through the dialect's own bind processor (SQLite
        stores it as text) once per datetime object (the images of one request share one)."""
        if len(columns) != len(PREDICTION_COLUMNS):
            raise ValueError(f"{len(columns)} columns, not the {len(PREDICTION_COLUMNS)} written")
        if not columns[0]:
            return 0
        if self._copy_engine is not None and time.monotonic() >= self._copy_after:
            try:
                rows = zip(*columns, strict=True)
                self._run(functools.partial(_copy_predictions, rows=rows), engine=self._copy_engine)
                return len(columns[0])
            except IntegrityError:  # a repeated (request id, image): insert row by row below
                # a client that keeps reusing its ids costs one failed COPY (and one line in
                # the server's log) per COPY_PAUSE_SECONDS, not per batch
                self._copy_after = time.monotonic() + COPY_PAUSE_SECONDS
                log.info(
                    "a prediction batch repeats a stored request id: inserting row by row "
                    "for %.0f s",
                    COPY_PAUSE_SECONDS,
                )
        statement = _insert_statement(self.engine.dialect)
        created = predictions.c.created_at.type.dialect_impl(self.engine.dialect).bind_processor(
            self.engine.dialect
        )
        if created is not None:
            # by identity: equal times in other zones are written differently (and the column
            # keeps every object alive while the ids are used)
            times = columns[_CREATED_AT]
            bound = {id(value): created(value) for value in {id(t): t for t in times}.values()}
            columns = [
                *columns[:_CREATED_AT],
                [bound[id(value)] for value in times],
                *columns[_CREATED_AT + 1 :],
            ]
        parameters = list(zip(*columns, strict=True))
        self._run(
            lambda connection: connection.exec_driver_sql(statement, parameters),
            engine=self._writer_engine,
        )
        return len(parameters)

    def predictions_of(self, request_id: str) -> list[dict[str, Any]]:
        """Every stored image of one request, in order (input bytes included)."""

        def read(connection: Connection) -> list[dict[str, Any]]:
            query = (
                sa.select(predictions)
                .where(predictions.c.request_id == request_id)
                .order_by(predictions.c.item)
            )
            return [dict(row._mapping) for row in connection.execute(query)]

        return self._run(read)

    # -- feedback --------------------------------------------------------------------------------

    def add_feedback(
        self, items: Sequence[FeedbackItem], now: datetime | None = None
    ) -> list[FeedbackOutcome]:
        """Record all of ``items`` or none: UnknownPrediction names any (request id, index) the
        store has no prediction for, AmbiguousRequestId any request id more than one request
        used (a stored row of it is ``reused``: which answer the label judges is unknown),
        DuplicateFeedback any that already has feedback. A corrected answer keeps its input (if
        it is still stored)."""
        now = now or datetime.now(UTC)
        keys = [(item.request_id, item.item) for item in items]
        if len(set(keys)) != len(keys):
            raise DuplicateFeedback("the same request id and index appear twice in this feedback")

        def record(connection: Connection) -> list[FeedbackOutcome]:
            found, reused = _predictions_by_key(connection, keys)
            missing = [key for key in keys if key not in found]
            if missing:
                raise UnknownPrediction(_unknown_message(missing))
            if reused:
                raise AmbiguousRequestId(_ambiguous_message(sorted(reused)))
            taken = _feedback_keys(connection, keys)
            if taken:
                raise DuplicateFeedback(_duplicate_message(sorted(taken)))
            outcomes = []
            rows = []
            for item in items:
                prediction = found[(item.request_id, item.item)]
                correct = prediction["digit"] == item.label
                rows.append(
                    {
                        "request_id": item.request_id,
                        "item": item.item,
                        "created_at": now,
                        "model_version": prediction["model_version"],
                        "predicted_digit": prediction["digit"],
                        "label": item.label,
                        "correct": correct,
                        "accepted": prediction["accepted"],
                        "reject_reason": prediction["reject_reason"],
                    }
                )
                keeps = prediction["has_input"] and (
                    not correct or prediction["input_kept"] is not None
                )
                if keeps and not correct:
                    connection.execute(
                        predictions.update()
                        .where(predictions.c.id == prediction["id"])
                        .values(input_kept=KEPT_CORRECTED)
                    )
                outcomes.append(
                    FeedbackOutcome(
                        request_id=item.request_id,
                        item=item.item,
                        label=item.label,
                        model_version=prediction["model_version"],
                        predicted_digit=prediction["digit"],
                        correct=correct,
                        input_kept=keeps,
                        accepted=prediction["accepted"],
                        reject_reason=prediction["reject_reason"],
                    )
                )
            connection.execute(feedback.insert(), rows)
            return outcomes

        try:
            return self._run(record)
        except IntegrityError:  # another request recorded the same feedback meanwhile
            raise DuplicateFeedback(_duplicate_message(keys)) from None

    def delete_request(self, request_id: str) -> tuple[int, int]:
        """Delete every prediction and feedback record of a request: (predictions, feedback)."""

        def delete(connection: Connection) -> tuple[int, int]:
            gone_feedback = connection.execute(
                feedback.delete().where(feedback.c.request_id == request_id)
            ).rowcount
            gone_predictions = connection.execute(
                predictions.delete().where(predictions.c.request_id == request_id)
            ).rowcount
            return int(gone_predictions), int(gone_feedback)

        return self._run(delete)

    # -- retention -------------------------------------------------------------------------------

    def purge(
        self,
        now: datetime,
        input_retention: timedelta,
        retention: timedelta,
        max_rows: int,
    ) -> PurgeCounts:
        """Apply the retention rules: erase inputs nobody kept once ``input_retention`` is over;
        delete predictions without feedback older than ``retention`` or beyond ``max_rows`` (the
        newest ``max_rows`` by id stay, and so does every row with feedback).

        With nothing or little to do a purge costs about what it erases and deletes, not what
        the table holds: the erasing UPDATE reads the partial index
        ``ix_predictions_unkept_input`` (only rows still holding an unkept input), and the
        over-limit rule first proves with one probe of the primary key that no row can be over
        the limit (``_delete_over_limit``; a table past its limit is counted once)."""

        def purge(connection: Connection) -> PurgeCounts:
            counts = PurgeCounts()
            # the terms of ix_predictions_unkept_input's WHERE, as they are, so both databases'
            # planners see that the index holds every row this can match
            counts.inputs_erased = connection.execute(
                predictions.update()
                .where(
                    predictions.c.input.is_not(None),
                    predictions.c.input_kept.is_(None),
                    predictions.c.created_at < now - input_retention,
                )
                .values(input=None)
            ).rowcount
            counts.expired = connection.execute(
                predictions.delete().where(
                    predictions.c.created_at < now - retention, _WITHOUT_FEEDBACK
                )
            ).rowcount
            counts.over_limit = _delete_over_limit(connection, max_rows)
            return counts

        return self._run(purge)

    # -- figures ---------------------------------------------------------------------------------

    def feedback_figures(self, window: int) -> dict[int, VersionFigures]:
        """Per model version: feedback count, and accuracy and recall over its last ``window``.
        Feedback on a request id more than one request used (``reused``) is left out."""

        def read(connection: Connection) -> dict[int, VersionFigures]:
            unambiguous = _unambiguous(feedback.c.request_id)
            totals: dict[int, int] = {
                int(version): int(count)
                for version, count in connection.execute(
                    sa.select(feedback.c.model_version, sa.func.count())
                    .where(unambiguous)
                    .group_by(feedback.c.model_version)
                )
            }
            ranked = (
                sa.select(
                    feedback.c.model_version,
                    feedback.c.label,
                    feedback.c.correct,
                    feedback.c.accepted,
                    sa.func.row_number()
                    .over(partition_by=feedback.c.model_version, order_by=feedback.c.id.desc())
                    .label("rank"),
                )
                .where(unambiguous)
                .subquery()
            )
            recent = connection.execute(
                sa.select(
                    ranked.c.model_version,
                    ranked.c.label,
                    sa.func.count(),
                    sa.func.sum(sa.case((ranked.c.correct, 1), else_=0)),
                    sa.func.sum(sa.case((ranked.c.accepted.is_(True), 1), else_=0)),
                    sa.func.sum(
                        sa.case(
                            (sa.and_(ranked.c.accepted.is_(True), ranked.c.correct), 1), else_=0
                        )
                    ),
                )
                .where(ranked.c.rank <= window)
                .group_by(ranked.c.model_version, ranked.c.label)
            ).all()
            per_version: dict[int, list[list[int]]] = {
                int(v): [[0, 0, 0, 0] for _ in range(N_CLASSES)] for v in totals
            }
            for version, label, count, right, accepted, accepted_right in recent:
                per_version[int(version)][int(label)] = [
                    int(count),
                    int(right or 0),
                    int(accepted or 0),
                    int(accepted_right or 0),
                ]
            return {
                version: VersionFigures(
                    version=version,
                    feedback_total=int(totals[version]),
                    window=sum(c[0] for c in classes),
                    correct=sum(c[1] for c in classes),
                    per_class=tuple((c[0], c[1]) for c in classes),
                    accepted_window=sum(c[2] for c in classes),
                    accepted_correct=sum(c[3] for c in classes),
                )
                for version, classes in per_version.items()
            }

        return self._run(read)

    def prediction_figures(self, version: int, window: int) -> PredictionFigures:
        """The predicted digits, mean confidence and rejections of a version's last ``window``."""

        def read(connection: Connection) -> PredictionFigures:
            recent = (
                sa.select(predictions.c.digit, predictions.c.confidence, predictions.c.accepted)
                .where(predictions.c.model_version == version)
                .order_by(predictions.c.id.desc())
                .limit(window)
                .subquery()
            )
            rows = connection.execute(
                sa.select(
                    recent.c.digit,
                    sa.func.count(),
                    sa.func.sum(recent.c.confidence),
                    sa.func.sum(sa.case((recent.c.accepted.is_(False), 1), else_=0)),
                    sa.func.count(recent.c.accepted),
                ).group_by(recent.c.digit)
            ).all()
            digits = [0] * N_CLASSES
            confidence = 0.0
            rejected = judged = 0
            for digit, count, summed, refused, with_option in rows:
                digits[int(digit)] = int(count)
                confidence += float(summed or 0.0)
                rejected += int(refused or 0)
                judged += int(with_option or 0)
            total = sum(digits)
            return PredictionFigures(
                version=version,
                window=total,
                digits=tuple(digits),
                mean_confidence=confidence / total if total else None,
                rejected=rejected,
                with_reject_option=judged,
            )

        return self._run(read)

    def labelled_examples(self) -> list[LabelledExample]:
        """Every feedback record whose input was kept (asked for or corrected), oldest first;
        none of a request id more than one request used (``reused``: the label may be another
        answer's)."""

        def read(connection: Connection) -> list[LabelledExample]:
            query = (
                sa.select(
                    feedback.c.request_id,
                    feedback.c.item,
                    feedback.c.created_at,
                    feedback.c.label,
                    feedback.c.predicted_digit,
                    feedback.c.model_version,
                    predictions.c.input,
                )
                .join(
                    predictions,
                    sa.and_(
                        predictions.c.request_id == feedback.c.request_id,
                        predictions.c.item == feedback.c.item,
                    ),
                )
                # kept inputs only: asked for, or corrected (others wait for erasure)
                .where(predictions.c.input.is_not(None), predictions.c.input_kept.is_not(None))
                .where(_unambiguous(feedback.c.request_id))
                .order_by(feedback.c.id)
            )
            return [
                LabelledExample(
                    request_id=row.request_id,
                    item=int(row.item),
                    created_at=_aware(row.created_at),
                    pixels=bytes(row.input),
                    label=int(row.label),
                    predicted_digit=int(row.predicted_digit),
                    model_version=int(row.model_version),
                )
                for row in connection.execute(query)
            ]

        return self._run(read)


def _unambiguous(request_id: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """No stored prediction of ``request_id`` is marked ``reused`` (feedback on a reused id may
    judge the wrong answer: live figures and training leave it out). The reused ids are read
    once per query from the partial index ``ix_predictions_reused`` (few rows), not probed per
    feedback record."""
    reused = sa.select(predictions.c.request_id).where(predictions.c.reused)
    return request_id.not_in(reused)


#: a prediction nobody gave feedback on (the retention rules delete only these)
_WITHOUT_FEEDBACK = ~sa.exists().where(
    feedback.c.request_id == predictions.c.request_id,
    feedback.c.item == predictions.c.item,
)


def _delete_over_limit(connection: Connection, max_rows: int) -> int:
    """Delete the predictions without feedback that are older (by id) than the newest
    ``max_rows``; how many went. The rows with feedback count towards ``max_rows`` but stay.

    The newest ``max_rows`` rows have distinct ids no greater than ``max(id)``, so the oldest of
    them has an id of at most ``ceiling = max(id) - max_rows + 1`` (equal when their ids have no
    gap): every row over the limit is below ``ceiling``. When no row without feedback is (a probe
    of the primary key from its low end that steps over the old rows kept for their feedback),
    nothing can be deleted and the rule stops there: the usual case below the limit, whatever
    the table holds (a row that became deletable since the probe goes at the next purge).
    Otherwise the oldest row kept is found from the old end: the row after the
    ``count(*) - max_rows`` oldest (0 when there are at most ``max_rows``: then nothing is below
    it), a walk of the surplus rather than of the ``max_rows`` rows kept. The count still reads
    one index whole: SQLite adds up each page's cell count (OP_Count, about 0.03 s at 1.2
    million rows), PostgreSQL reads every entry (about 0.12 s), so a purge at the limit costs
    that (no counted b-tree or trigger-kept tally to ask). Count, boundary and delete are one
    statement, so they see one snapshot (PostgreSQL's READ COMMITTED gives each statement its
    own): a concurrent purge or delete cannot move the boundary into the rows kept."""
    ceiling = sa.select(sa.func.max(predictions.c.id)).scalar_subquery() - (max_rows - 1)
    deletable = connection.execute(
        sa.select(predictions.c.id)
        .where(predictions.c.id < ceiling, _WITHOUT_FEEDBACK)
        .order_by(predictions.c.id)
        .limit(1)
    ).first()
    if deletable is None:
        return 0
    total = sa.select(sa.func.count().label("total")).select_from(predictions).subquery()
    surplus = sa.select(
        sa.case((total.c.total > max_rows, total.c.total - max_rows), else_=0)
    ).scalar_subquery()
    oldest_kept = (
        sa.select(predictions.c.id)
        .order_by(predictions.c.id)
        .offset(surplus)
        .limit(1)
        .scalar_subquery()
    )
    return int(
        connection.execute(
            predictions.delete().where(predictions.c.id < oldest_kept, _WITHOUT_FEEDBACK)
        ).rowcount
    )


def retry_while_unknown(
    call: Callable[[], T],
    wait_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()``, retried every 50 ms while it raises UnknownPrediction, for up to
    ``wait_seconds``: the answer it needs may still be on its way to the database (writes are
    batched off the request). The last UnknownPrediction is raised after the wait."""
    deadline = clock() + wait_seconds
    while True:
        try:
            return call()
        except UnknownPrediction:
            if clock() >= deadline:
                raise
            sleep(0.05)


def wait_for_feedback(
    store: PredictionStore,
    items: Sequence[FeedbackItem],
    wait_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[FeedbackOutcome]:
    """``store.add_feedback``, retried while a prediction is unknown (``retry_while_unknown``)."""
    return retry_while_unknown(lambda: store.add_feedback(items), wait_seconds, sleep, clock)


def _postgres_type(column: sa.Column[Any]) -> str:
    """The PostgreSQL type name of a schema column, as binary COPY must be told it."""
    kind = column.type
    for generic, name in _POSTGRES_TYPES:
        if isinstance(kind, generic):
            return name
    raise TypeError(f"no PostgreSQL type for column {column.name} ({kind!r})")


#: most specific first (SmallInteger and BigInteger are Integers)
_POSTGRES_TYPES: tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...] = (
    (sa.SmallInteger, "int2"),
    (sa.BigInteger, "int8"),
    (sa.Integer, "int4"),
    (sa.Float, "float8"),
    (sa.Boolean, "bool"),
    (sa.DateTime, "timestamptz"),
    (sa.LargeBinary, "bytea"),
    (sa.String, "text"),
)


def _copy_predictions(connection: Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """``rows`` into ``predictions`` with one binary ``COPY`` (psycopg 3), on a connection of
    ``create_copy_engine`` (the COPY is its own transaction: all rows or none).

    Against ``executemany`` of one INSERT per row in a transaction, this spends about half the
    CPU per record in the writer thread and a third in the server
    (bench/store_writer_bench.py --postgres).
    COPY has no ``ON CONFLICT``: a repeated (request id, image) fails it whole with the
    database's unique violation, raised as SQLAlchemy's IntegrityError; the driver's other
    errors are raised as SQLAlchemy's (a lost server invalidates the pooled connection)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    error = connection.dialect.loaded_dbapi.Error
    cursor = driver.cursor()
    try:
        with cursor.copy(_copy_statement()) as copy:
            copy.set_types(_copy_types())
            for row in rows:
                copy.write_row(row)
    except error as exc:
        if connection.dialect.is_disconnect(exc, driver, cursor):
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            _copy_statement(), None, exc, error, dialect=connection.dialect
        ) from exc
    finally:
        cursor.close()


@functools.cache
def _copy_statement() -> str:
    names = ", ".join(f'"{name}"' for name in PREDICTION_COLUMNS)
    return f'COPY "{predictions.name}" ({names}) FROM STDIN (FORMAT BINARY)'


@functools.cache
def _copy_types() -> tuple[int, ...]:
    """The OIDs of the columns' types (built-in types: the same on every server; given as OIDs,
    psycopg does not look the names up at each COPY)."""
    import psycopg

    names = (_postgres_type(predictions.c[name]) for name in PREDICTION_COLUMNS)
    return tuple(psycopg.adapters.types[name].oid for name in names)


@functools.cache
def _insert_statement(dialect: Dialect) -> str:
    """The DB-API text of a prediction insert that keeps the stored row of a repeated (request
    id, image) and marks it ``reused`` when the repeat answered otherwise (any of
    ``SAME_ANSWER_COLUMNS`` differs): ``INSERT ... ON CONFLICT (request_id, item) DO UPDATE SET
    reused = TRUE WHERE ...`` (SQLite >= 3.24, PostgreSQL), positional placeholders in
    ``PREDICTION_COLUMNS`` order, names quoted by the dialect. Each row is its own statement
    under ``executemany``, so a request id repeated within one batch is seen too."""
    quote = dialect.identifier_preparer.quote
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    table = quote(predictions.name)
    differs = " OR ".join(
        f"{table}.{quote(name)} <> excluded.{quote(name)}" for name in SAME_ANSWER_COLUMNS
    )
    return (
        f"INSERT INTO {table} "
        f"({', '.join(quote(name) for name in PREDICTION_COLUMNS)}) "
        f"VALUES ({', '.join([mark] * len(PREDICTION_COLUMNS))}) "
        f"ON CONFLICT ({quote('request_id')}, {quote('item')}) "
        f"DO UPDATE SET {quote('reused')} = TRUE "
        f"WHERE NOT {table}.{quote('reused')} AND ({differs})"
    )


def _predictions_by_key(
    connection: Connection, keys: Iterable[tuple[str, int]]
) -> tuple[dict[tuple[str, int], dict[str, Any]], set[str]]:
    """The stored rows of ``keys`` by key, and which of their request ids any stored row marks
    ``reused`` (the whole id is ambiguous, whichever image was repeated)."""
    keys = list(keys)
    request_ids = sorted({request_id for request_id, _ in keys})
    query = sa.select(
        predictions.c.id,
        predictions.c.request_id,
        predictions.c.item,
        predictions.c.model_version,
        predictions.c.digit,
        predictions.c.accepted,
        predictions.c.reject_reason,
        predictions.c.input_kept,
        predictions.c.input.is_not(None).label("has_input"),
        predictions.c.reused,
    ).where(predictions.c.request_id.in_(request_ids))
    wanted = set(keys)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    reused: set[str] = set()
    for row in connection.execute(query):
        key = (row.request_id, int(row.item))
        if key in wanted:
            found[key] = dict(row._mapping)
        if row.reused:
            reused.add(row.request_id)
    return found, reused


def _feedback_keys(connection: Connection, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
    request_ids = sorted({request_id for request_id, _ in keys})
    rows = connection.execute(
        sa.select(feedback.c.request_id, feedback.c.item).where(
            feedback.c.request_id.in_(request_ids)
        )
    )
    return {(row.request_id, int(row.item)) for row in rows} & set(keys)


def _describe(keys: Sequence[tuple[str, int]]) -> str:
    shown = ", ".join(f"{rid!r}" + (f" image {item}" if item else "") for rid, item in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _unknown_message(keys: Sequence[tuple[str, int]]) -> str:
    return (
        f"no stored prediction for request id {_describe(keys)}: it is unknown, was deleted, or "
        "was not recorded (store off or unreachable when it was answered)"
    )


def _ambiguous_message(request_ids: Sequence[str]) -> str:
    shown = ", ".join(repr(request_id) for request_id in request_ids[:5])
    more = f" and {len(request_ids) - 5} more" if len(request_ids) > 5 else ""
    return (
        f"request id {shown}{more} was used by more than one request, so the store cannot tell "
        "which answer this feedback is about; send a unique X-Request-ID (or V2 id) with every "
        "request"
    )


def _duplicate_message(keys: Sequence[tuple[str, int]]) -> str:
    return f"feedback for request id {_describe(keys)} was already given"


def _reason(exc: SQLAlchemyError) -> str:
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything the store writes is UTC
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
