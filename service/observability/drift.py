"""Live drift: a sliding window of input statistics per worker, PSI against the card's reference.

Each worker keeps, per model version, the bins of its last ``window`` inputs (service.model.drift)
and publishes the bin counts as Prometheus gauges summed over live workers; whoever answers a
scrape adds the counts of every worker and computes the population stability index of each
statistic against the reference in that version's card. So the window is the last ``window``
inputs of each worker together, and the figures are the same whichever worker answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.model.drift import STATISTICS, DriftReference, live_bins, population_stability_index

#: no PSI until the window holds this many inputs (fewer say little: PSI's noise is ~ bins / n)
MIN_WINDOW = 100

ReferenceSource = Callable[[int], DriftReference | None]


@dataclass(frozen=True)
class DriftFigures:
    """PSI per statistic for one version's live window, and their mean (the drift score)."""

    version: int
    window: int
    psi: Mapping[str, float]

    @property
    def score(self) -> float:
        return float(np.mean(list(self.psi.values())))

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "score": round(self.score, 6),
            "psi": {name: round(value, 6) for name, value in self.psi.items()},
        }


class _VersionWindow:
    """A ring of the last ``size`` inputs' bin rows and their column sums."""

    def __init__(self, reference: DriftReference, size: int) -> None:
        self.reference = reference
        self.widths = {name: len(reference.histograms[name].shares) for name in STATISTICS}
        self.size = size
        self.rows = np.zeros((size, sum(self.widths.values())), dtype=np.int64)
        self.totals = np.zeros(self.rows.shape[1], dtype=np.int64)
        self.filled = 0
        self.next = 0

    def add(self, rows: np.ndarray) -> None:
        rows = rows[-self.size :]
        count = len(rows)
        slots = (self.next + np.arange(count)) % self.size
        self.totals -= self.rows[slots].sum(axis=0)
        self.rows[slots] = rows
        self.totals += rows.sum(axis=0)
        self.next = int((self.next + count) % self.size)
        self.filled = min(self.size, self.filled + count)

    def counts(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        start = 0
        for name in STATISTICS:
            width = self.widths[name]
            out[name] = self.totals[start : start + width].tolist()
            start += width
        return out


class DriftMonitor:
    """This worker's live windows (one per model version), published as gauges."""

    def __init__(self, references: ReferenceSource, window: int) -> None:
        self.references = references
        self.window = window
        self._windows: dict[int, _VersionWindow | None] = {}
        self._lock = threading.Lock()

    def add(
        self,
        versions: np.ndarray,
        images: np.ndarray,
        labels: np.ndarray,
        confidences: np.ndarray,
        statistics: np.ndarray | None = None,
    ) -> list[int]:
        """Take answered inputs into the windows of their versions; the versions updated.
        ``statistics``: their ``image_statistics`` (float64 [N, 6]) when already computed."""
        updated = []
        for version in np.unique(versions).tolist():
            window = self._window(int(version))
            if window is None:
                continue  # the version's card has no reference: nothing to compare with
            # only the version's last ``window`` inputs stay in its ring: bin no more than those
            chosen = np.flatnonzero(versions == version)[-window.size :]
            bins = live_bins(
                window.reference,
                images[chosen],
                labels[chosen],
                confidences[chosen],
                None if statistics is None else statistics[chosen],
            )
            with self._lock:
                window.add(np.concatenate([bins[name] for name in STATISTICS], axis=1))
            updated.append(int(version))
        return updated

    def _window(self, version: int) -> _VersionWindow | None:
        if version not in self._windows:
            reference = self.references(version)
            self._windows[version] = (
                None if reference is None else _VersionWindow(reference, self.window)
            )
        return self._windows[version]

    def snapshot(self, version: int) -> tuple[int, dict[str, list[int]]] | None:
        """(inputs in the window, bin counts per statistic) of one version, or None."""
        window = self._windows.get(version)
        if window is None:
            return None
        with self._lock:
            return window.filled, window.counts()


def drift_figures(
    version: int,
    window: int,
    counts: Mapping[str, Iterable[float]],
    reference: DriftReference,
    minimum: int = MIN_WINDOW,
) -> DriftFigures | None:
    """PSI of every statistic from summed live bin counts; None while the window is too small."""
    if window < minimum:
        return None
    psi = {}
    for name in STATISTICS:
        live = list(counts.get(name, ()))
        expected = reference.histograms[name].shares
        if len(live) != len(expected) or sum(live) <= 0:
            return None  # workers disagree on the bins (a card changed): wait for fresh windows
        psi[name] = population_stability_index(expected, live)
    return DriftFigures(version=version, window=window, psi=psi)
