"""``mnist-models``: list, inspect, compare, promote, roll back, trial and prune model versions.

Runs wherever the service or the trainer is installed (onnxruntime and numpy, no scikit-learn).
Every change is one atomic write of the repository's labels.json; running servers pick it up
within their poll interval (MODEL_POLL_SECONDS) or at once on SIGHUP.

``diff`` and ``promote`` also score the versions on the held-out feedback examples of the
prediction store the service is configured with (DATABASE_URL, STORE_PATH, STORE; the SQLite file
beside the repository by default), when there is one (service.store.examples).

Exit codes: 0 done, 2 bad usage (a value out of range) or unknown version, 3 the MNIST test set
is missing or corrupt, 4 refused: the version fails the gate (the message has the figures) or the
service's validation (--force passes only the gate), 5 the repository cannot be read or written,
6 diff: the configured feedback store cannot be read (promote only warns: its gate is the MNIST
test set), 7 nothing to do in this serving state (no earlier stable version to roll back to, no
labels.json yet, a trial of the stable version). 141: standard output was closed early.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from service.command_line import (
    OneLineParser,
    after_the_change,
    folder_path,
    number_in,
    quiet_on_closed_output,
    stop_if_output_closed,
    whole_number,
)
from service.config import ConfigError, ServiceConfig
from service.errors import StoreUnavailable
from service.model import lifecycle
from service.model.repository import ModelRepository, RepositoryError, ServingState
from service.model.testset import MnistTestSet, MnistUnavailable, load_test_set

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_REFUSED = 4
EXIT_REPOSITORY = 5
EXIT_STORE = 6
EXIT_NOTHING_TO_DO = 7
#: the held-out share when no card says (service.store.examples.DEFAULT_HOLDOUT)
DEFAULT_HOLDOUT = 0.2


def build_parser() -> argparse.ArgumentParser:
    """The command line of mnist-models."""
    parser = OneLineParser(
        prog="mnist-models",
        description="Manage the versions of the MNIST model repository: which one is stable, "
        "canary or shadow. Changes reach running servers within MODEL_POLL_SECONDS.",
        epilog="exit codes: 0 done, 2 bad usage or unknown version, 3 MNIST test set missing or "
        "corrupt, 4 refused (the gate, or the version fails validation: --force passes only the "
        "gate), 5 repository unreadable or not writable, 6 feedback store unreadable (diff), "
        "7 nothing to do in this serving state (e.g. no earlier stable to roll back to), "
        "141 standard output closed early",
    )
    where = OneLineParser(add_help=False)
    for target in (parser, where):
        # accepted before or after the command; after it, only when given (SUPPRESS)
        default = None if target is parser else argparse.SUPPRESS
        target.add_argument(
            "--models-dir",
            type=folder_path,
            default=default,
            help="the model repository (default $MODEL_DIR or ./models)",
        )
        target.add_argument(
            "--data-dir",
            type=folder_path,
            default=default,
            help="folder with the MNIST test IDX .gz files (default $MNIST_DATA_DIR, else the "
            "training cache)",
        )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "list", parents=[where], help="every version: label, test accuracy, size, created, settings"
    )
    show = commands.add_parser(
        "show", parents=[where], help="one version's card in words and its report's path"
    )
    version = whole_number(1)
    show.add_argument("version", type=version)
    compare = commands.add_parser(
        "diff",
        parents=[where],
        help="two versions on the MNIST test set: agreement, disagreements, accuracy",
    )
    compare.add_argument("a", type=version)
    compare.add_argument("b", type=version)
    for name, text in (
        ("promote", "make a version stable if it passes the gate (test accuracy vs stable)"),
        ("canary", "let a version answer a share of the requests (passes the gate first)"),
        ("shadow", "run a version on a sample of the requests after stable answered"),
    ):
        command = commands.add_parser(name, parents=[where], help=text)
        command.add_argument("version", type=version)
        command.add_argument(
            "--force",
            action="store_true",
            help="pass the accuracy gate anyway (never validation)",
        )
        command.add_argument(
            "--tolerance",
            type=number_in(0.0, 1.0, what="an accuracy share"),
            default=lifecycle.DEFAULT_TOLERANCE,
            help=f"accuracy a version may lose against stable (default "
            f"{lifecycle.DEFAULT_TOLERANCE}, i.e. 0.2 points)",
        )
        if name == "canary":
            command.add_argument(
                "--percent",
                type=number_in(0.0, 100.0, low_open=True, what="a percentage"),
                required=True,
                help="share of answers, 0 < P <= 100",
            )
        if name == "shadow":
            command.add_argument(
                "--sample",
                type=number_in(0.0, 1.0, low_open=True, what="a share"),
                required=True,
                help="share of requests run, 0 < R <= 1",
            )
    commands.add_parser(
        "rollback", parents=[where], help="make the previous stable version stable again"
    )
    commands.add_parser("end-trial", parents=[where], help="stop the canary or shadow")
    prune = commands.add_parser(
        "prune",
        parents=[where],
        help="delete old candidates (never stable, the trial or the rollback target)",
    )
    prune.add_argument(
        "--keep", type=whole_number(0), required=True, help="candidates to keep, newest first"
    )
    commands.add_parser(
        "state", parents=[where], help="labels.json as JSON (what the servers follow)"
    )
    return parser


def _label(state: ServingState, version: int) -> str:
    label = state.label_of(version)
    if label == "canary" and state.trial is not None:
        return f"canary {state.trial.share * 100:g}%"
    if label == "shadow" and state.trial is not None:
        return f"shadow {state.trial.share:g}"
    if label is not None:
        return label
    if state.history and version == state.history[-1]:
        return "previous"
    if state.stable is None and version in (state.policy_versions or ()):
        return "policy"
    return "candidate"


def _settings_text(card: Mapping[str, Any]) -> str:
    """The key settings of a card's config (flag names; older cards used scikit-learn's)."""
    config = card.get("config") if isinstance(card.get("config"), Mapping) else {}
    assert isinstance(config, Mapping)

    def setting(*names: str) -> Any:
        return next((config[name] for name in names if config.get(name) is not None), None)

    layers = setting("hidden_layers", "hidden_layer_sizes")
    shape = "-".join(map(str, [784, *layers, 10])) if isinstance(layers, list) else "?"
    parts = [
        shape,
        str(setting("activation") or "?"),
        str(setting("solver") or "?"),
        f"{setting('epochs', 'max_iter') or '?'} epochs",
    ]
    if setting("augment"):
        parts.append("augmented")
    if setting("train_limit"):
        parts.append(f"{setting('train_limit')} images")
    return " ".join(parts)


def _accuracy(card: Mapping[str, Any]) -> str:
    metrics = card.get("metrics")
    value = metrics.get("test_accuracy") if isinstance(metrics, Mapping) else None
    return f"{value:.2%}" if isinstance(value, int | float) else "?"


def list_versions(repository: ModelRepository, out: TextIO) -> None:
    state = repository.read_state()
    rows = [("VERSION", "LABEL", "TEST ACC", "SIZE", "CREATED", "SETTINGS")]
    for version in repository.versions():
        try:
            card = version.read_card()
        except RepositoryError:
            card = {}
        size = card.get("size")
        rows.append(
            (
                str(version.version),
                _label(state, version.version),
                _accuracy(card),
                f"{size / 1e6:.2f} MB" if isinstance(size, int) else "?",
                str(card.get("created", "?"))[:19],
                _settings_text(card) if card else "unreadable card.json",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
            row[-1],
            file=out,
        )


def show_version(repository: ModelRepository, number: int, out: TextIO) -> None:
    try:
        version = repository.get(number)
    except RepositoryError as exc:
        raise lifecycle.UnknownVersion(str(exc)) from exc
    card = version.read_card()
    state = repository.read_state()
    metrics = card.get("metrics") if isinstance(card.get("metrics"), Mapping) else {}
    assert isinstance(metrics, Mapping)
    data = card.get("data") if isinstance(card.get("data"), Mapping) else {}
    assert isinstance(data, Mapping)
    parity = card.get("parity") if isinstance(card.get("parity"), Mapping) else {}
    assert isinstance(parity, Mapping)
    lines = [
        f"{card.get('name', repository.name)} version {number} ({_label(state, number)}), "
        f"created {card.get('created', '?')}",
        f"  model: MLP {_settings_text(card)}",
        f"  trained on {data.get('train_used', '?')} of {data.get('train_available', '?')} "
        f"training images, {data.get('validation_size', '?')} held out for validation, in "
        f"{metrics.get('train_seconds', 0):.0f} s",
        f"  test accuracy {_accuracy(card)} on {metrics.get('test_count', '?')} images, "
        f"log-loss {metrics.get('log_loss', '?')}, validation accuracy "
        f"{metrics.get('validation_accuracy', '?')}",
        f"  ONNX parity: {'passed' if parity.get('passed') else 'not passed'}, "
        f"label agreement {parity.get('label_agreement', '?')}",
        f"  model.onnx: {card.get('size', '?')} bytes, sha256 {card.get('sha256', '?')}",
        f"  reproduce: {card.get('command', '?')}",
    ]
    report = card.get("report")
    if isinstance(report, Mapping) and report:
        summary = report.get("summary") or next(iter(report.values()))
        lines.append(f"  report: {version.path / str(summary)}")
    print("\n".join(lines), file=out)


@dataclass(frozen=True)
class FeedbackScores:
    """Accuracy of some versions on the held-out feedback examples of the prediction store."""

    examples: int
    share: float
    accuracy: dict[int, float | None]  # per version; None without examples

    def describe(self, names: Mapping[int, str]) -> str:
        if not self.examples:
            return "held-out feedback: no examples yet (feedback with a kept input)"
        parts = [f"{names[v]} {a:.2%}" for v, a in self.accuracy.items() if a is not None]
        return (
            f"held-out feedback ({self.examples:,} examples, share {self.share:g}): "
            + ", ".join(parts)
        )


def feedback_store_url(settings: ServiceConfig, models_dir: Path) -> str | None:
    """The store the service would use with these settings and this repository, or None: the
    store is off, or its SQLite file does not exist yet (there is nothing to read, and reading
    must not create one). StoreUnavailable when DATABASE_URL is not a URL."""
    store = settings.store
    if not store.enabled:
        return None
    try:
        url = store.url(models_dir)
    except ConfigError as exc:  # DATABASE_URL is not a URL: the store cannot be read
        raise StoreUnavailable(str(exc)) from None
    if store.database_url:
        return url
    return url if Path(url.removeprefix("sqlite:///")).is_file() else None


def holdout_share(repository: ModelRepository, numbers: Sequence[int]) -> float:
    """The held-out share of the newest of ``numbers`` whose card has a feedback section (the
    share it was trained with, so none of its held-out examples were trained on)."""
    for number in sorted(numbers, reverse=True):
        try:
            card = repository.get(number).read_card()
        except RepositoryError:
            continue
        section = card.get("feedback")
        share = section.get("holdout_share") if isinstance(section, Mapping) else None
        if isinstance(share, int | float) and 0 < share <= 1:
            return float(share)
    return DEFAULT_HOLDOUT


def feedback_scores(
    repository: ModelRepository,
    numbers: Sequence[int],
    settings: ServiceConfig,
    url: str,
) -> FeedbackScores:
    """Each version's accuracy on the store's held-out feedback examples (one read of the
    store; the share from the cards, see holdout_share). StoreUnavailable when it cannot be read."""
    from service.store.config import usable_database_url
    from service.store.examples import load_feedback  # SQLAlchemy only when a store is set

    try:
        usable_database_url(url)  # a dialect and driver this install has (connects to nothing)
    except ConfigError as exc:  # the message holds no password
        raise StoreUnavailable(str(exc)) from None
    share = holdout_share(repository, numbers)
    _, test = load_feedback(url, share)
    accuracy: dict[int, float | None] = {}
    for number in numbers:
        if not len(test):
            accuracy[number] = None
            continue
        model = lifecycle.validated(repository, number, settings)
        labels = lifecycle.predict_labels(model, test.images)
        accuracy[number] = float(np.mean(labels == test.labels))
    return FeedbackScores(len(test), share, accuracy)


def _report_promotion_feedback(
    repository: ModelRepository,
    outcome: lifecycle.Outcome,
    number: int,
    settings: ServiceConfig,
    url: str | None,
    tolerance: float,
    out: TextIO,
    err: TextIO,
) -> None:
    """After a promotion: the held-out feedback accuracy of the new and the previous stable, and
    a warning (not a refusal: the gate is the MNIST test set) when the new one is worse."""
    if url is None:
        return
    previous = outcome.state.history[-1] if outcome.state.history else None
    numbers = [number] if previous is None or previous == number else [number, previous]
    try:
        scores = feedback_scores(repository, numbers, settings, url)
    except (StoreUnavailable, lifecycle.LifecycleError) as exc:
        print(f"mnist-models: warning: no held-out feedback figures: {exc.message}", file=err)
        return
    names = {number: f"version {number}"}
    if previous is not None:
        names[previous] = f"previous stable {previous}"
    print(scores.describe(names), file=out)
    mine = scores.accuracy.get(number)
    theirs = scores.accuracy.get(previous) if previous is not None else None
    if mine is not None and theirs is not None and theirs - mine > tolerance:
        print(
            f"mnist-models: warning: version {number} is {(theirs - mine) * 100:.2f} points less "
            f"accurate than version {previous} on the {scores.examples:,} held-out feedback "
            "examples (promoted: the gate is the MNIST test set; mnist-models rollback undoes it)",
            file=err,
        )


def _test_set(data_dir: Path | None, required: bool, err: TextIO) -> MnistTestSet | None:
    try:
        return load_test_set(data_dir)
    except MnistUnavailable as exc:
        if required:
            raise
        print(f"mnist-models: note: {exc}; the gate uses the cards' figures", file=err)
        return None


def run(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Do one command; its exit code."""
    settings = ServiceConfig.from_env(environ)
    root = args.models_dir or settings.model_dir
    repository = ModelRepository(root)
    command = args.command
    if command == "list":
        list_versions(repository, out)
        return EXIT_OK
    if command == "state":
        print(json.dumps(repository.read_state().to_json(), indent=2), file=out)
        return EXIT_OK
    if command == "show":
        show_version(repository, args.version, out)
        return EXIT_OK
    if command == "diff":
        result = lifecycle.diff(repository, args.a, args.b, settings, load_test_set(args.data_dir))
        print(
            f"versions {result.a} (A) and {result.b} (B) on {result.count:,} MNIST test images: "
            f"agreement {result.agreement:.2%} ({int(result.disagreements.sum())} disagree); "
            f"accuracy A {result.accuracy_a:.2%}, B {result.accuracy_b:.2%}",
            file=out,
        )
        print("disagreements (row: A's digit, column: B's digit):", file=out)
        print("\n".join(result.table()), file=out)
        url = feedback_store_url(settings, root)
        if url is None:
            print("held-out feedback: no prediction store (STORE=off, or none yet)", file=out)
            return EXIT_OK
        scores = feedback_scores(repository, [args.a, args.b], settings, url)
        print(scores.describe({args.a: "A", args.b: "B"}), file=out)
        return EXIT_OK
    outcome: lifecycle.Outcome
    stop_if_output_closed(out, err)  # a reader gone: 141 with nothing changed
    if command == "promote":
        outcome = lifecycle.promote(
            repository,
            args.version,
            settings,
            _test_set(args.data_dir, False, err),
            force=args.force,
            tolerance=args.tolerance,
        )
    elif command in ("canary", "shadow"):
        share = args.percent / 100.0 if command == "canary" else args.sample
        outcome = lifecycle.start_trial(
            repository,
            command,
            args.version,
            share,
            settings,
            _test_set(args.data_dir, False, err) if command == "canary" else None,
            force=args.force,
            tolerance=args.tolerance,
        )
    elif command == "rollback":
        outcome = lifecycle.rollback(repository, settings)
    elif command == "end-trial":
        outcome = lifecycle.end_trial(repository)
    elif command == "prune":
        outcome = lifecycle.prune(repository, args.keep)
    else:  # argparse only lets the commands above through
        raise AssertionError(command)
    with after_the_change():  # changed already: a closed output does not change the code
        print(outcome.message, file=out, flush=True)
        if command == "promote" and outcome.gate is not None:
            try:
                url = feedback_store_url(settings, root)
            except StoreUnavailable as exc:  # promoted already: the store's figures are a report
                print(
                    f"mnist-models: warning: no held-out feedback figures: {exc.message}",
                    file=err,
                    flush=True,
                )
                return EXIT_OK
            _report_promotion_feedback(
                repository, outcome, args.version, settings, url, args.tolerance, out, err
            )
            out.flush()
    return EXIT_OK


@quiet_on_closed_output
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnist-models``; one line on stderr and a documented code on failure."""
    args = build_parser().parse_args(argv)
    try:
        return run(args, os.environ, sys.stdout, sys.stderr)
    except BrokenPipeError:
        raise  # the reader went away: quiet_on_closed_output ends quietly
    except lifecycle.LifecycleError as exc:
        print(f"mnist-models: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except MnistUnavailable as exc:
        print(f"mnist-models: {exc}", file=sys.stderr)
        return EXIT_DATA
    except StoreUnavailable as exc:
        print(f"mnist-models: the feedback store cannot be read: {exc.message}", file=sys.stderr)
        return EXIT_STORE
    except ConfigError as exc:
        print(f"mnist-models: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (RepositoryError, OSError) as exc:
        print(f"mnist-models: repository error: {exc}", file=sys.stderr)
        return EXIT_REPOSITORY


if __name__ == "__main__":
    raise SystemExit(main())
