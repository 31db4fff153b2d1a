"""``mnist-store``: delete a request's records, apply retention, migrate the prediction store.

Reads the service's own settings (DATABASE_URL, STORE_PATH, MODEL_DIR, STORE_*). Exit codes:
0 done, 2 bad usage or settings (DATABASE_URL naming no database or driver this install has),
3 the store cannot be reached, 4 nothing found to delete, 5 the store is off (STORE=off),
6 no store there (the SQLite file does not exist: delete and purge create nothing; migrate
creates a new store and says where, but only in a folder that exists, and never beside a
model folder that does not: the default store's place, beside MODEL_DIR, is then unknown),
141 standard output or error closed early, nothing changed. Failures are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.command_line import OneLineParser, quiet_on_closed_output, say, stop_if_output_closed
from service.config import ConfigError, ServiceConfig
from service.errors import StoreUnavailable
from service.store.config import DEFAULT_SQLITE_NAME, sqlite_file, usable_database_url
from service.store.database import PredictionStore

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_STORE_OFF = 5
EXIT_NO_STORE = 6
EXIT_CODES = (
    "exit codes: 0 done, 2 bad usage or settings, 3 the store cannot be reached, 4 nothing "
    "found to delete, 5 the store is off (STORE=off), 6 no store at that path (the SQLite file "
    "does not exist; delete and purge create nothing, migrate creates it, but not beside a "
    "MODEL_DIR that does not exist nor in a missing folder), 141 standard output or error "
    "closed early (nothing changed)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="mnist-store",
        description="Maintain the prediction and feedback store (the service's settings apply).",
        epilog=EXIT_CODES,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    delete = commands.add_parser("delete", help="delete every record of one request id")
    delete.add_argument("request_id")
    commands.add_parser("purge", help="apply the retention rules now")
    commands.add_parser(
        "migrate",
        help="bring the schema to the newest migration (a missing SQLite file is created, "
        "and the command says where; beside MODEL_DIR only when that folder exists)",
    )
    return parser


@quiet_on_closed_output
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnist-store``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = ServiceConfig.from_env(os.environ)
        if not config.store.enabled:
            print(
                f"mnist-store: the store is off (STORE=off): nothing to {args.command}",
                file=sys.stderr,
            )
            return EXIT_STORE_OFF
        url = config.store.url(config.model_dir)
        if config.store.database_url:
            url = usable_database_url(config.store.database_url)
    except ConfigError as exc:
        print(f"mnist-store: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = sqlite_file(url)
    new_store = path is not None and not path.exists()
    if path is not None and new_store:
        if args.command != "migrate":
            print(
                f"mnist-store: {_no_store(path, config)}; nothing to {args.command}",
                file=sys.stderr,
            )
            return EXIT_NO_STORE
        refusal = _no_place_for_a_store(path, config)
        if refusal is not None:
            print(f"mnist-store: {refusal}; nothing created", file=sys.stderr)
            return EXIT_NO_STORE
    stop_if_output_closed()  # nothing is changed for a reader that went away (141)
    store = PredictionStore.open(url)
    try:
        if args.command == "delete":
            predictions, feedback = store.delete_request(args.request_id)
            if not predictions and not feedback:
                print(f"mnist-store: no records of request id {args.request_id!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            say(f"deleted {predictions} prediction and {feedback} feedback records")
        elif args.command == "purge":
            settings = config.store
            counts = store.purge(
                datetime.now(UTC),
                timedelta(seconds=settings.input_retention_seconds),
                timedelta(days=settings.retention_days),
                settings.retention_rows,
            )
            say(
                f"{counts.inputs_erased} inputs erased, {counts.expired} expired and "
                f"{counts.over_limit} surplus records deleted"
            )
        else:
            store.migrate()
            created = f"created a new store at {path}; " if new_store else ""
            say(f"{created}schema at revision {store.schema_revision()}")
    except StoreUnavailable as exc:
        print(f"mnist-store: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        store.close()
    return EXIT_OK


def _beside_the_models(config: ServiceConfig) -> bool:
    """The SQLite file is the default one, beside the model folder (no DATABASE_URL or
    STORE_PATH)."""
    return not config.store.database_url and config.store.sqlite_path is None


def _no_place_for_a_store(path: Path, config: ServiceConfig) -> str | None:
    """Why a new SQLite file must not be made at ``path`` (None: it may). The default file goes
    beside the model folder: with no such folder (MODEL_DIR wrong, or run from another folder)
    the place is a guess, and the service would not start there anyway. A configured file's
    folder must exist (SQLite creates no folder)."""
    if _beside_the_models(config) and not config.model_dir.is_dir():
        return (
            f"no model folder at {config.model_dir.absolute()} (MODEL_DIR={config.model_dir}), "
            f"beside which the default store {DEFAULT_SQLITE_NAME} would go; set MODEL_DIR to "
            f"the model folder, or STORE_PATH=/path/to/{DEFAULT_SQLITE_NAME} (or DATABASE_URL)"
        )
    if not path.parent.is_dir():
        source = "DATABASE_URL" if config.store.database_url else "STORE_PATH"
        return f"no folder {path.parent} for a new store at {path} (from {source})"
    return None


def _no_store(path: Path, config: ServiceConfig) -> str:
    """Where the missing SQLite file was looked for, and how to point at the right one."""
    if config.store.database_url:
        source = "DATABASE_URL"
    elif config.store.sqlite_path is not None:
        source = "STORE_PATH"
    elif not config.model_dir.is_dir():
        source = f"{DEFAULT_SQLITE_NAME} beside MODEL_DIR={config.model_dir}, no such folder"
    else:
        source = f"{DEFAULT_SQLITE_NAME} beside MODEL_DIR={config.model_dir}"
    create = (
        ", or create an empty one with mnist-store migrate"
        if _no_place_for_a_store(path, config) is None
        else ""
    )
    return (
        f"no prediction store at {path} (from {source}); point at the store with "
        f"STORE_PATH=/path/to/{DEFAULT_SQLITE_NAME} (or DATABASE_URL, or MODEL_DIR: the default "
        f"file is beside the model folder){create}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
