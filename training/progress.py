"""How a run reports itself: a live tqdm bar, JSON lines for machines, or nothing.

Epoch records go to the bar (stderr) or, one JSON object per line, to stdout; step messages
("loading data", "exporting") always go to stderr, so stdout in JSON mode holds only the epochs.
"""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from training.config import Progress

if TYPE_CHECKING:
    from tqdm import tqdm

    from training.fit import EpochRecord


class Reporter(Protocol):
    """Receives the run's progress; implementations decide where it shows."""

    def step(self, message: str) -> None:
        """A long step starts (loading, exporting, verifying)."""

    def start(self, total: int | None, description: str) -> None:
        """Training starts; ``total`` epochs at most (None when the solver has no epochs)."""

    def epoch(self, record: EpochRecord) -> None:
        """One epoch finished."""

    def close(self, summary: str) -> None:
        """Training finished; ``summary`` says how it ended."""

    def abort(self) -> None:
        """The run is ending on an error: clear whatever is live (the bar), print nothing."""


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def epoch_json(record: EpochRecord) -> dict[str, Any]:
    """One epoch as a JSON-ready dict (non-finite numbers become null, so the line stays JSON)."""
    return {
        "event": "epoch",
        "epoch": record.epoch,
        "train_loss": _finite(record.train_loss),
        "val_loss": _finite(record.val_loss),
        "val_accuracy": _finite(record.val_accuracy),
        "seconds": record.seconds,
    }


class SilentReporter:
    """Reports nothing at all."""

    def step(self, message: str) -> None:
        pass

    def start(self, total: int | None, description: str) -> None:
        pass

    def epoch(self, record: EpochRecord) -> None:
        pass

    def close(self, summary: str) -> None:
        pass

    def abort(self) -> None:
        pass


class JsonLinesReporter:
    """One JSON line per epoch on ``out`` (stdout); steps and the summary as text on ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def step(self, message: str) -> None:
        print(message, file=self.err, flush=True)

    def start(self, total: int | None, description: str) -> None:
        print(description, file=self.err, flush=True)

    def epoch(self, record: EpochRecord) -> None:
        print(json.dumps(epoch_json(record), allow_nan=False), file=self.out, flush=True)

    def close(self, summary: str) -> None:
        print(summary, file=self.err, flush=True)

    def abort(self) -> None:
        pass


class BarReporter:
    """A tqdm bar on ``err`` advancing per epoch: losses, validation accuracy, s/epoch."""

    def __init__(self, err: TextIO | None = None) -> None:
        self.err = err or sys.stderr
        self._bar: tqdm[Any] | None = None

    def step(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message, file=self.err)
        else:
            print(message, file=self.err, flush=True)

    def start(self, total: int | None, description: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, desc=description, unit="epoch", file=self.err, dynamic_ncols=True
        )

    def epoch(self, record: EpochRecord) -> None:
        if self._bar is None:
            self.start(None, "training")
        assert self._bar is not None
        postfix = {"loss": f"{record.train_loss:.4f}"}
        if record.val_loss is not None:
            postfix["val_loss"] = f"{record.val_loss:.4f}"
        if record.val_accuracy is not None:
            postfix["val_acc"] = f"{record.val_accuracy:.4f}"
        postfix["s/epoch"] = f"{record.seconds:.1f}"
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(1)

    def close(self, summary: str) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(summary, file=self.err, flush=True)

    def abort(self) -> None:
        if self._bar is not None:
            self._bar.leave = False  # close() then clears the bar's line
            self._bar.close()
            self._bar = None


def make_reporter(kind: Progress) -> Reporter:
    """The reporter for ``--progress``."""
    if kind == "json":
        return JsonLinesReporter()
    if kind == "none":
        return SilentReporter()
    return BarReporter()
