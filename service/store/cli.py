"""``mnist-store``: delete a request's records, apply retention, migrate the prediction store.

Reads the service's own settings (DATABASE_URL, STORE_PATH, MODEL_DIR, STORE_*). Exit codes:
0 done, 2 bad usage or settings (DATABASE_URL naming no database or driver this install has),
3 the store cannot be reached, 4 nothing found to delete, 5 the store is off (STORE=off),
141 standard output closed early. Failures are one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from service.command_line import OneLineParser, quiet_on_closed_output
from service.config import ConfigError, ServiceConfig
from service.errors import StoreUnavailable
from service.store.config import usable_database_url
from service.store.database import PredictionStore

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_STORE_OFF = 5
EXIT_CODES = (
    "exit codes: 0 done, 2 bad usage or settings, 3 the store cannot be reached, 4 nothing "
    "found to delete, 5 the store is off (STORE=off), 141 standard output closed early"
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
    commands.add_parser("migrate", help="bring the schema to the newest migration")
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
    store = PredictionStore.open(url)
    try:
        if args.command == "delete":
            predictions, feedback = store.delete_request(args.request_id)
            if not predictions and not feedback:
                print(f"mnist-store: no records of request id {args.request_id!r}", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(f"deleted {predictions} prediction and {feedback} feedback records")
        elif args.command == "purge":
            settings = config.store
            counts = store.purge(
                datetime.now(UTC),
                timedelta(seconds=settings.input_retention_seconds),
                timedelta(days=settings.retention_days),
                settings.retention_rows,
            )
            print(
                f"{counts.inputs_erased} inputs erased, {counts.expired} expired and "
                f"{counts.over_limit} surplus records deleted"
            )
        else:
            store.migrate()
            print(f"schema at revision {store.schema_revision()}")
    except StoreUnavailable as exc:
        print(f"mnist-store: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        store.close()
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
