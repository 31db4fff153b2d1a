"""``mnist-train sweep``: the activation x solver study, run in parallel with joblib.

Every combination of ``--activations`` x ``--solvers`` x ``--seeds`` is one ordinary pipeline run
(``training.pipeline.train_run``) on the same flags as a single run. Workers return plain data
(metrics, history, seconds; the ONNX bytes, card and report only when ``--publish-best`` needs
them), never pickled models. The sweep writes ``results.csv`` / ``results.md`` (per combination:
test accuracy mean and spread over seeds, epochs, seconds), ``runs.csv`` (every run) and
``loss_curves.png``. ``--dask-scheduler ADDRESS`` runs the same jobs on a Dask cluster through
joblib's ``dask`` backend. A run the data or the solver cannot support (a diverging solver, too
few digits for lbfgs) is recorded as failed, with its reason, and the others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import itertools
import math
import os
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, get_args

from service.command_line import integer_text, say, stop_if_output_closed
from training.config import Activation, ConfigError, Solver, TrainConfig, validate
from training.fit import floating_point_summary

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RUNS_CSV = "runs.csv"
LOSS_CURVES_PNG = "loss_curves.png"
#: loss_curves.png is LOSS_FIGSIZE * DPI pixels (1000 x 600)
DPI = 100
LOSS_FIGSIZE = (10.0, 6.0)

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_NOT_PUBLISHED = 4
EXIT_CLUSTER = 5
EXIT_WRITE = 6
EXIT_CODES = (
    "exit codes: 0 done (runs that failed, e.g. a diverging solver, are recorded as failed in "
    "the tables), 1 unexpected error (a bug), 2 bad usage or configuration (an --out that is "
    "not a writable folder), or every run failed, 3 MNIST files missing or corrupt, "
    "4 --publish-best: the best run not published, 5 the Dask cluster cannot be used, 6 --out "
    "could not be written at the end, or --publish-best: the model repository cannot be "
    "written, 141 standard output closed early"
)
#: how long to wait for a Dask scheduler before giving up (--dask-timeout)
CONNECT_SECONDS = 10.0


class ClusterError(Exception):
    """The Dask cluster named by --dask-scheduler cannot be used; the message says why."""


@dataclass(frozen=True)
class SweepPlan:
    """What to sweep: the base run and the lists crossed over it."""

    base: TrainConfig
    activations: tuple[str, ...] = get_args(Activation)
    solvers: tuple[str, ...] = get_args(Solver)
    seeds: tuple[int, ...] = (0,)

    def configs(self) -> list[TrainConfig]:
        """One checked TrainConfig per activation x solver x seed, in that order."""
        return [
            validate(
                self.base.replace(activation=activation, solver=solver, seed=seed, progress="none")
            )
            for activation, solver, seed in itertools.product(
                self.activations, self.solvers, self.seeds
            )
        ]


@dataclass
class RunResult:
    """One finished run as plain data; ``artifacts`` only when the run may be published."""

    activation: str
    solver: str
    seed: int
    test_accuracy: float
    log_loss: float
    validation_accuracy: float | None
    epochs: int
    epoch_unit: str
    train_seconds: float
    seconds: float
    loss_curve: list[float]
    final_loss: float | None  # lbfgs has no per-epoch curve, only this
    stop_reason: str
    parity_passed: bool
    worker: str  # host:pid that trained it (a Dask cluster spreads runs over machines)
    artifacts: dict[str, Any] | None = field(default=None, repr=False)
    #: why the run failed (the figures above are then NaN, 0 or empty); None: it finished
    failure: str | None = None
    #: numpy's floating-point errors during the run, by kind (training.fit.FloatingPointErrors)
    floating_point_errors: dict[str, int] = field(default_factory=dict)

    @property
    def combination(self) -> tuple[str, str]:
        return (self.activation, self.solver)

    @property
    def finished(self) -> bool:
        return self.failure is None

    def outcome(self) -> str:
        """How the run ended, in words (the sweep's progress line)."""
        if self.failure is not None:
            return f"failed: {self.failure}"
        text = (
            f"test accuracy {self.test_accuracy:.4f}, {self.epochs} {self.epoch_unit}s, "
            f"{self.train_seconds:.1f}s"
        )
        if self.floating_point_errors:
            text += (
                f" (floating-point errors: {floating_point_summary(self.floating_point_errors)})"
            )
        return text

    @classmethod
    def failed(cls, config: TrainConfig, reason: str, seconds: float) -> RunResult:
        """A run the data or the solver could not support: no figures, only the reason."""
        return cls(
            activation=config.activation,
            solver=config.solver,
            seed=config.seed,
            test_accuracy=math.nan,
            log_loss=math.nan,
            validation_accuracy=None,
            epochs=0,
            epoch_unit="iteration" if config.solver == "lbfgs" else "epoch",
            train_seconds=0.0,
            seconds=seconds,
            loss_curve=[],
            final_loss=None,
            stop_reason="failed",
            parity_passed=False,
            worker=f"{socket.gethostname()}:{os.getpid()}",
            failure=reason,
        )


@functools.lru_cache(maxsize=2)
def _load_data(data_dir: Path | None) -> Any:
    # once per worker process (loky and dask reuse their workers); the loader checks the MD5s
    from training.data import load_mnist

    return load_mnist(data_dir, log=io.StringIO())


def run_one(config: TrainConfig, keep_artifacts: bool = False) -> RunResult:
    """Train, evaluate, export and verify one configuration (a joblib task; no publish)."""
    from training.pipeline import train_run

    data = _load_data(config.data_dir)
    started = time.perf_counter()
    try:
        # runs are the parallel unit: one BLAS thread each, so N jobs do not fight over the cores
        trained = train_run(config.replace(threads=1), data)
    except ConfigError as exc:  # settings the data or the solver cannot support: this run only
        return RunResult.failed(config, str(exc), time.perf_counter() - started)
    card = trained.card
    metrics = card.metrics
    artifacts = None
    if keep_artifacts:
        artifacts = {
            "onnx_bytes": trained.onnx_bytes,
            "card": trained.card,
            "report_files": trained.report_files,
            "selftest_bytes": trained.selftest_bytes,
            "history": trained.history,
            "metrics": trained.metrics,
            "seconds": trained.seconds,
        }
    return RunResult(
        activation=config.activation,
        solver=config.solver,
        seed=config.seed,
        test_accuracy=metrics.test_accuracy,
        log_loss=metrics.log_loss,
        validation_accuracy=metrics.validation_accuracy,
        epochs=metrics.epochs,
        epoch_unit=metrics.epoch_unit,
        train_seconds=metrics.train_seconds,
        seconds=time.perf_counter() - started,
        loss_curve=list(card.loss_curve),
        final_loss=metrics.final_loss,
        stop_reason=card.training.stop_reason,
        parity_passed=card.parity.passed,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        artifacts=artifacts,
        floating_point_errors=dict(card.training.floating_point_errors or {}),
    )


def run_sweep(
    configs: Sequence[TrainConfig],
    *,
    jobs: int = 1,
    backend: str | None = None,
    keep_artifacts: bool = False,
    log: TextIO | None = None,
) -> list[RunResult]:
    """Run every config with joblib (``backend`` None = loky); results in the configs' order."""
    from joblib import Parallel, delayed, parallel_config

    log = log or sys.stderr
    order: dict[tuple[str, str, int], int] = {
        (c.activation, c.solver, c.seed): i for i, c in enumerate(configs)
    }
    results: list[RunResult] = []
    with parallel_config(backend=backend) if backend else contextlib.nullcontext():
        tasks = (delayed(run_one)(config, keep_artifacts) for config in configs)
        for result in Parallel(n_jobs=jobs, return_as="generator_unordered")(tasks):
            results.append(result)
            print(
                f"[{len(results)}/{len(configs)}] {result.activation}/{result.solver} seed "
                f"{result.seed}: {result.outcome()}",
                file=log,
                flush=True,
            )
    return sorted(results, key=lambda r: order[(r.activation, r.solver, r.seed)])


def _mean(values: Iterable[float]) -> float | None:
    """The mean, or None for no values (a combination whose every run failed)."""
    values = list(values)
    return statistics.fmean(values) if values else None


def summarise(results: Iterable[RunResult]) -> list[dict[str, Any]]:
    """Per activation x solver: finished and failed runs, validation accuracy mean (the ranking),
    test accuracy mean/std/min/max, mean epochs and seconds; best validation first. The figures
    are over the finished runs (None when every run of the combination failed)."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.combination, []).append(result)
    rows = []
    for (activation, solver), tried in groups.items():
        runs = [r for r in tried if r.finished]
        accuracies = [r.test_accuracy for r in runs]
        validation = [r.validation_accuracy for r in runs if r.validation_accuracy is not None]
        rows.append(
            {
                "activation": activation,
                "solver": solver,
                "runs": len(runs),
                "failed": len(tried) - len(runs),
                "seeds": " ".join(str(r.seed) for r in runs),
                "val_accuracy_mean": _mean(validation),
                "accuracy_mean": _mean(accuracies),
                # sample standard deviation over seeds; one seed has no spread
                "accuracy_std": statistics.stdev(accuracies)
                if len(runs) > 1
                else (0.0 if runs else None),
                "accuracy_min": min(accuracies, default=None),
                "accuracy_max": max(accuracies, default=None),
                "log_loss_mean": _mean(r.log_loss for r in runs),
                "epochs_mean": _mean(r.epochs for r in runs),
                "epoch_unit": tried[0].epoch_unit,
                "train_seconds_mean": _mean(r.train_seconds for r in runs),
            }
        )
    # ranked on validation accuracy (the test figures are reported, never used to rank); a
    # combination whose every run failed comes last
    return sorted(
        rows,
        key=lambda row: (
            row["runs"] == 0,
            -(row["val_accuracy_mean"] or 0.0),
            row["activation"],
            row["solver"],
        ),
    )


def choose_best(results: Sequence[RunResult]) -> tuple[RunResult, str]:
    """The run to publish: the best validation accuracy (never the test set's, which would make
    the published test figure an optimistic estimate); failed runs are not candidates. ConfigError
    when a run has no validation split, or no run finished."""
    results = [r for r in results if r.finished]
    if not results:
        raise ConfigError("every run failed: there is no run to publish")
    if not all(r.validation_accuracy is not None for r in results):
        raise ConfigError(
            "--publish-best chooses on the validation split: set --validation-fraction above 0"
        )
    best = max(results, key=lambda r: float(r.validation_accuracy or 0.0))
    return best, "validation accuracy"


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _run_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        finished = r.finished
        rows.append(
            {
                "activation": r.activation,
                "solver": r.solver,
                "seed": r.seed,
                "test_accuracy": r.test_accuracy if finished else "",
                "log_loss": r.log_loss if finished else "",
                "validation_accuracy": ""
                if r.validation_accuracy is None
                else r.validation_accuracy,
                "epochs": r.epochs if finished else "",
                "epoch_unit": r.epoch_unit,
                "train_seconds": round(r.train_seconds, 3) if finished else "",
                "parity_passed": r.parity_passed if finished else "",
                "stop_reason": r.stop_reason,
                "failure": r.failure or "",
                "floating_point_errors": floating_point_summary(r.floating_point_errors),
                "worker": r.worker,
            }
        )
    return rows


def _figure(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def results_markdown(
    summary: Sequence[dict[str, Any]], results: Sequence[RunResult], base: TrainConfig, command: str
) -> str:
    """The comparison table (best first) and every run, as Markdown."""
    layers = ",".join(str(n) for n in base.hidden_layers)
    lines = [
        "# Activation x solver sweep",
        "",
        f"Command: `{command}`",
        "",
        f"Hidden layers {layers}, max {base.epochs} epochs, batch size {base.batch_size}, "
        f"alpha {base.alpha}, train limit {base.train_limit or 'all'}, augment {base.augment}; "
        f"{len(results)} runs. Test accuracy on the 10,000 MNIST test images; spread is the sample "
        "standard deviation over seeds. lbfgs counts iterations, not epochs.",
        "",
        "Ranked by validation accuracy; the test figures are reported, not used to choose.",
        "",
        "| activation | solver | runs | validation accuracy | test accuracy mean | spread (std) | "
        "min | max | epochs | train seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary:
        runs = f"{row['runs']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        lines.append(
            f"| {row['activation']} | {row['solver']} | {runs} | "
            f"{_figure(row['val_accuracy_mean'])} | {_figure(row['accuracy_mean'])} | "
            f"{_figure(row['accuracy_std'])} | {_figure(row['accuracy_min'])} | "
            f"{_figure(row['accuracy_max'])} | {_figure(row['epochs_mean'], '.1f')} | "
            f"{_figure(row['train_seconds_mean'], '.1f')} |"
        )
    lines += [
        "",
        "![training loss curves](loss_curves.png)",
        "",
        "## Every run",
        "",
        "| activation | solver | seed | test accuracy | log-loss | epochs | train seconds | "
        "stopped because |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.failure is not None:
            lines.append(
                f"| {r.activation} | {r.solver} | {r.seed} | failed | | | | "
                f"{r.failure.replace('|', '/')} |"
            )
            continue
        lines.append(
            f"| {r.activation} | {r.solver} | {r.seed} | {r.test_accuracy:.4f} | "
            f"{r.log_loss:.4f} | {r.epochs} | {r.train_seconds:.1f} | {r.stop_reason} |"
        )
    return "\n".join(lines) + "\n"


def loss_curves_png(results: Sequence[RunResult]) -> bytes:
    """One plot overlaying every run's training loss (colour per combination, style per seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=LOSS_FIGSIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colours: dict[tuple[str, str], Any] = {}
    styles = ("-", "--", ":", "-.")
    seeds = sorted({r.seed for r in results})
    from matplotlib import colormaps

    # 4 activations x 3 solvers need 12 distinct colours; the default cycle has 10
    palette = [colormaps["tab20"](i) for i in range(20)]
    plotted = False
    for r in results:
        curve = [v for v in r.loss_curve if math.isfinite(v) and v > 0]
        if curve:
            xs, marker = list(range(1, len(curve) + 1)), None
        elif r.final_loss is not None and math.isfinite(r.final_loss) and r.final_loss > 0:
            # lbfgs reports no curve, only where it ended: one marker at its last iteration
            xs, curve, marker = [r.epochs], [r.final_loss], "x"
        else:
            continue
        first = r.combination not in colours
        colour = colours.setdefault(r.combination, palette[len(colours) % len(palette)])
        axes.plot(
            xs,
            curve,
            color=colour,
            marker=marker,
            markersize=9,
            linestyle=styles[seeds.index(r.seed) % len(styles)],
            label=(f"{r.activation}/{r.solver}" + (" (final loss)" if marker else ""))
            if first
            else None,
        )
        plotted = True
    if plotted:
        axes.set_yscale("log")  # losses of good and bad combinations differ by decades
        axes.legend(title="activation/solver", fontsize=8, ncol=2)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch (lbfgs: iteration)")
    axes.set_ylabel("training loss (log scale)")
    axes.grid(True, which="both", alpha=0.3)
    title = "Training loss per run"
    if len(seeds) > 1:
        title += f" (line style = seed: {', '.join(map(str, seeds))})"
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def write_outputs(
    out: Path, results: Sequence[RunResult], base: TrainConfig, command: str
) -> dict[str, Path]:
    """Write results.csv, results.md, runs.csv and loss_curves.png into ``out`` (atomically)."""
    from service.model.repository import write_atomically

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    files = {
        RESULTS_CSV: _csv_text(summary).encode(),
        RUNS_CSV: _csv_text(_run_rows(results)).encode(),
        RESULTS_MD: results_markdown(summary, results, base, command).encode(),
        LOSS_CURVES_PNG: loss_curves_png(results),
    }
    written = {}
    for name, data in files.items():
        write_atomically(out / name, data)
        written[name] = out / name
    return written


def _list_of(kind: str, choices: Sequence[str]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(part.strip() for part in text.split(",") if part.strip())
        bad = [item for item in items if item not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(
                f"{kind}: expected a comma-separated subset of {','.join(choices)}, got {text!r}"
            )
        return tuple(dict.fromkeys(items))  # keep order, drop repeats

    parse.__name__ = kind
    return parse


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(integer_text(part.strip()) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds: expected comma-separated integers like 0,1, got {text!r}"
        ) from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return tuple(dict.fromkeys(seeds))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mnist-train sweep``: the sweep's own flags plus every single-run flag."""
    from service.command_line import OneLineParser, folder_path, number_in
    from training.cli import add_train_arguments

    parser = OneLineParser(
        prog="mnist-train sweep",
        description="Train every activation x solver x seed combination in parallel and compare "
        "them: results.csv/.md, runs.csv and loss_curves.png in --out. Publishes nothing unless "
        "--publish-best.",
        epilog=EXIT_CODES,
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--activations",
        type=_list_of("activations", get_args(Activation)),
        default=get_args(Activation),
        help="comma-separated activations (default all: identity,logistic,tanh,relu)",
    )
    sweep.add_argument(
        "--solvers",
        type=_list_of("solvers", get_args(Solver)),
        default=get_args(Solver),
        help="comma-separated solvers (default all: lbfgs,sgd,adam)",
    )
    sweep.add_argument(
        "--seeds", type=_seeds, default=(0,), help="comma-separated seeds (default 0)"
    )
    sweep.add_argument(
        "--out", type=folder_path, required=True, help="folder for the table, run list and plot"
    )
    sweep.add_argument(
        "--jobs",
        type=integer_text,
        default=1,
        help="runs in parallel (joblib n_jobs; -1 = one per core or Dask worker thread; default 1)",
    )
    sweep.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run on this Dask cluster (e.g. tcp://10.0.0.5:8786) through joblib's dask backend; "
        "workers need this package and the MNIST files (--data-dir on a shared path, or online)",
    )
    sweep.add_argument(
        "--dask-timeout",
        type=number_in(0.0, low_open=True, what="seconds"),
        default=CONNECT_SECONDS,
        metavar="SECONDS",
        help=f"seconds to wait for the Dask scheduler (default {CONNECT_SECONDS:g})",
    )
    sweep.add_argument(
        "--publish-best",
        action="store_true",
        help="publish the best run (by validation accuracy, else test accuracy) into "
        "--models-dir, through the same quality gate as a single run",
    )
    add_train_arguments(parser)
    for action in parser._actions:
        # the sweep crosses these itself (--activations, --solvers, --seeds) and runs silently
        if action.dest in ("activation", "solver", "seed", "progress"):
            action.help = argparse.SUPPRESS
    return parser


def output_problem(out: Path) -> str | None:
    """Why the sweep could not write its table into ``out`` (one line naming it), or None when
    ``out`` is a writable folder or could be made in one. Checked before any run (a sweep takes
    minutes); creates nothing (the folder is made when the table is written)."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a folder"
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"--out {out}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: {existing} cannot be written (permissions)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnist-train sweep``; returns the exit code (one line on failure)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return _main(parser, args, args_list)
    except (KeyboardInterrupt, BrokenPipeError):
        raise  # mnist-train's entry point ends these with their own line and code
    except Exception as exc:  # the promise is one line, never a traceback: a bug says so
        if os.environ.get("MNIST_TRAIN_TRACEBACK"):
            raise
        print(
            f"mnist-train sweep: unexpected error, please report it: {type(exc).__name__}: {exc} "
            "(MNIST_TRAIN_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, args_list: list[str]) -> int:
    from training.cli import config_from_args
    from training.data import DataError
    from training.pipeline import RepositoryWriteError, check_writable

    for single, plural in (
        ("activation", "activations"),
        ("solver", "solvers"),
        ("seed", "seeds"),
    ):
        if getattr(args, single, None) is not None:
            parser.error(f"a sweep takes --{plural}, not the single-run --{single.split('_')[0]}")
    if args.jobs == 0:
        parser.error("--jobs must not be 0")
    try:
        base = config_from_args(args, strict_solver=False)
        plan = SweepPlan(
            base=base, activations=args.activations, solvers=args.solvers, seeds=args.seeds
        )
        configs = plan.configs()
        if args.publish_best and base.validation_fraction <= 0:
            raise ConfigError(
                "--publish-best chooses on the validation split: set --validation-fraction above 0"
            )
    except ConfigError as exc:
        print(f"mnist-train sweep: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = output_problem(args.out)
    if problem is not None:
        print(f"mnist-train sweep: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.publish_best:
        try:  # before the runs, as a single run checks it before training
            check_writable(base.models_dir)
        except RepositoryWriteError as exc:
            print(f"mnist-train sweep: {exc}; nothing ran", file=sys.stderr)
            return EXIT_WRITE
    command = shlex.join(["mnist-train", "sweep", *args_list])
    print(
        f"sweep: {len(configs)} runs ({len(plan.activations)} activations x {len(plan.solvers)} "
        f"solvers x {len(plan.seeds)} seeds), {args.jobs} at a time"
        + (f" on the Dask cluster {args.dask_scheduler}" if args.dask_scheduler else ""),
        file=sys.stderr,
        flush=True,
    )
    try:
        results = _run(configs, args)
    except DataError as exc:
        print(f"mnist-train sweep: data error: {exc}", file=sys.stderr)
        return EXIT_DATA
    except ClusterError as exc:
        print(f"mnist-train sweep: {exc}", file=sys.stderr)
        return EXIT_CLUSTER
    try:
        written = write_outputs(args.out, results, base, command)
    except OSError as exc:  # a disk that filled up, a folder removed during the sweep
        print(
            f"mnist-train sweep: cannot write the results into {args.out}: {exc}", file=sys.stderr
        )
        return EXIT_WRITE
    print(f"wrote {', '.join(str(p) for p in written.values())}", file=sys.stderr)
    print((args.out / RESULTS_MD).read_text(encoding="utf-8").split("\n![")[0])
    failed = [r for r in results if not r.finished]
    if len(failed) == len(results):
        print(
            f"mnist-train sweep: every run failed (first: {failed[0].activation}/"
            f"{failed[0].solver} seed {failed[0].seed}: {failed[0].failure}); nothing to compare"
            + ("; nothing was published" if args.publish_best else ""),
            file=sys.stderr,
        )
        return EXIT_USAGE
    if failed:
        print(
            f"mnist-train sweep: note: {len(failed)} of {len(results)} runs failed, recorded in "
            f"{args.out / RUNS_CSV} (first: {failed[0].activation}/{failed[0].solver} seed "
            f"{failed[0].seed}: {failed[0].failure})",
            file=sys.stderr,
        )
    if args.publish_best:
        return _publish_best(results, base)
    return EXIT_OK


def _run(configs: Sequence[TrainConfig], args: argparse.Namespace) -> list[RunResult]:
    if not args.dask_scheduler:
        return run_sweep(configs, jobs=args.jobs, keep_artifacts=args.publish_best)
    try:
        from distributed import Client
    except ImportError as exc:
        raise ClusterError(
            "--dask-scheduler needs dask.distributed: pip install 'dask[distributed]'"
        ) from exc
    try:
        client = Client(args.dask_scheduler, timeout=args.dask_timeout)
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler {args.dask_scheduler}: {exc}") from exc
    # the Client registers itself as the default, which joblib's dask backend then uses
    with client:
        return run_sweep(configs, jobs=args.jobs, backend="dask", keep_artifacts=args.publish_best)


def _publish_best(results: Sequence[RunResult], base: TrainConfig) -> int:
    from training.pipeline import QualityGateError, RepositoryWriteError, TrainedRun, publish_run
    from training.verify import ParityError

    best, criterion = choose_best(results)
    if best.artifacts is None:
        raise RuntimeError("the sweep ran without keeping artifacts; cannot publish")
    trained = TrainedRun(**best.artifacts)
    stop_if_output_closed()  # a reader gone: 141 with nothing published (service.command_line)
    try:
        version = publish_run(trained, base.models_dir, base.min_accuracy)
    except (QualityGateError, ParityError) as exc:
        print(f"mnist-train sweep: best run not published: {exc}", file=sys.stderr)
        return EXIT_NOT_PUBLISHED
    except RepositoryWriteError as exc:
        print(f"mnist-train sweep: best run not published: {exc}", file=sys.stderr)
        return EXIT_WRITE
    say(  # published: a closed output no longer changes the exit code
        f"published the best run by {criterion} ({best.activation}/{best.solver} seed "
        f"{best.seed}, test accuracy {best.test_accuracy:.4f}) as {version.path}",
        file=sys.stderr,
    )
    return EXIT_OK
