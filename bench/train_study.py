"""Fit one configuration on the training split and report validation figures only (no test set).

    .venv/bin/python bench/train_study.py --hidden-layers 256 --batch-size 256 --epochs 60 \\
        --augment --lr-schedule cosine --data-dir ../shared/data/mnist > run.jsonl

Every study knob is chosen on these figures: the run fits on the training images minus the
seeded, stratified validation split (``--validation-fraction``, default 0.1) with the same code
as ``mnist-train`` (training.fit), prints one JSON line per epoch (validation accuracy and loss,
wall and CPU seconds) and a last line with the final and best validation accuracy. The MNIST test
images are never looked at here: they are read once, by ``mnist-train``, for the card of the one
configuration chosen. The flags are mnist-train's own (training.config); BLAS runs on
``--threads`` threads. CPU seconds are printed beside wall seconds because the machine is shared.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from training.cli import build_parser, config_from_args
from training.config import ConfigError
from training.data import load_mnist
from training.fit import EpochRecord, fit


class _Lines:
    """A training.progress.Reporter printing one JSON line per epoch on stdout."""

    def __init__(self, started_cpu: float) -> None:
        self.started_cpu = started_cpu

    def step(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def start(self, total: int | None, description: str) -> None:
        print(description, file=sys.stderr, flush=True)

    def epoch(self, record: EpochRecord) -> None:
        line = {
            "epoch": record.epoch,
            "val_accuracy": record.val_accuracy,
            "val_loss": record.val_loss,
            "train_loss": record.train_loss,
            "seconds": round(record.seconds, 2),
            "cpu_seconds": round(time.process_time() - self.started_cpu, 1),
        }
        print(json.dumps(line), flush=True)

    def close(self, summary: str) -> None:
        print(summary, file=sys.stderr, flush=True)

    def abort(self) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Parse mnist-train's flags, fit, print the validation figures; the exit code."""
    from threadpoolctl import threadpool_limits

    parser = build_parser()
    parser.prog = "train_study.py"
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"train_study.py: {exc}", file=sys.stderr)
        return 2
    if config.validation_fraction <= 0:
        print("train_study.py: choosing needs a validation split (--validation-fraction > 0)")
        return 2
    train = load_mnist(config.data_dir).train.head(config.train_limit)
    started, started_cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=config.threads):
        result = fit(train, config, _Lines(started_cpu))
    history = [r.val_accuracy for r in result.history if r.val_accuracy is not None]
    summary = {
        "final": True,
        "config": config.to_dict(),
        "val_accuracy": result.val_accuracy,
        "best_val_accuracy": max(history) if history else None,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - started_cpu, 1),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
