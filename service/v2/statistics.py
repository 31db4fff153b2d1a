"""Triton's statistics extension (``GET /v2/models/<m>[/versions/<v>]/stats``) plus an agreement
block for shadow and canary trials, from the Prometheus figures of every worker.

Shape (Triton, protocol/extension_statistics.md): ``{"model_stats": [{"name", "version",
"last_inference", "inference_count", "execution_count", "inference_stats": {"success": {"count",
"ns"}, "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit",
"cache_miss"}, "batch_stats": []}]}``. ``last_inference`` is when the version last ran, in
milliseconds since the epoch (0: never). This service times only the model run, so ``success``
and ``compute_infer`` hold the onnxruntime time and the other durations are 0; the counts
include the runs a version made for a trial. Each entry adds ``agreement``: one block per trial
the version took part in (as stable or as trial), with the images both versions ran, how many
agreed, the rate, the disagreement matrix (stable digit x trial digit) and each side's mean
onnxruntime time per run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Samples = Mapping[str, list[tuple[dict[str, str], float]]]

_DURATIONS = ("fail", "queue", "compute_input", "compute_output", "cache_hit", "cache_miss")


def _matching(samples: Samples, name: str, labels: Mapping[str, str]) -> Iterable[float]:
    return (
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


def _sum(samples: Samples, name: str, **labels: str) -> float:
    return sum(_matching(samples, name, labels))


def _max(samples: Samples, name: str, **labels: str) -> float:
    """The largest matching sample (0 when there is none)."""
    return max(_matching(samples, name, labels), default=0.0)


def _runs(samples: Samples, version: int) -> tuple[int, int]:
    """(onnxruntime runs, their total nanoseconds) of one version."""
    count = _sum(samples, "mnist_inference_duration_seconds_count", version=str(version))
    seconds = _sum(samples, "mnist_inference_duration_seconds_sum", version=str(version))
    return int(count), int(seconds * 1e9)


def version_stats(name: str, version: int, samples: Samples) -> dict[str, Any]:
    """One ``model_stats`` entry for ``version``."""
    runs, ns = _runs(samples, version)
    images = int(_sum(samples, "mnist_inferences_total", version=str(version)))
    last = _max(samples, "mnist_last_inference_timestamp_seconds", version=str(version))
    stats: dict[str, Any] = {"success": {"count": runs, "ns": ns}}
    stats.update({key: {"count": 0, "ns": 0} for key in _DURATIONS})
    stats["compute_infer"] = {"count": runs, "ns": ns}
    return {
        "name": name,
        "version": str(version),
        "last_inference": int(last * 1000),
        "inference_count": images,
        "execution_count": runs,
        "inference_stats": stats,
        "batch_stats": [],
        "agreement": agreement_blocks(version, samples),
    }


def _mean_ms(samples: Samples, version: int) -> float | None:
    runs, ns = _runs(samples, version)
    return round(ns / runs / 1e6, 4) if runs else None


def agreement_blocks(version: int, samples: Samples) -> list[dict[str, Any]]:
    """The trials ``version`` took part in, as stable or as trial."""
    trials: dict[tuple[str, str, str], dict[str, float]] = {}
    for labels, value in samples.get("mnist_trial_comparisons_total", []):
        key = (labels["mode"], labels["stable_version"], labels["trial_version"])
        if str(version) in key[1:]:
            trials.setdefault(key, {}).setdefault(labels["outcome"], 0.0)
            trials[key][labels["outcome"]] += value
    blocks = []
    for (mode, stable, trial), outcomes in sorted(trials.items()):
        agreed, disagreed = int(outcomes.get("agree", 0)), int(outcomes.get("disagree", 0))
        compared = agreed + disagreed
        blocks.append(
            {
                "mode": mode,
                "stable_version": stable,
                "trial_version": trial,
                "compared": compared,
                "agreed": agreed,
                "agreement_rate": round(agreed / compared, 6) if compared else None,
                "disagreements": list(_disagreements(samples, mode, stable, trial)),
                "mean_inference_ms": {
                    "stable": _mean_ms(samples, int(stable)),
                    "trial": _mean_ms(samples, int(trial)),
                },
            }
        )
    return blocks


def _disagreements(
    samples: Samples, mode: str, stable: str, trial: str
) -> Iterable[dict[str, int]]:
    for labels, value in sorted(
        samples.get("mnist_trial_disagreements_total", []),
        key=lambda item: (item[0].get("stable_digit", ""), item[0].get("trial_digit", "")),
    ):
        if (labels["mode"], labels["stable_version"], labels["trial_version"]) == (
            mode,
            stable,
            trial,
        ) and value:
            yield {
                "stable_digit": int(labels["stable_digit"]),
                "trial_digit": int(labels["trial_digit"]),
                "count": int(value),
            }


def model_statistics(name: str, versions: Iterable[int], samples: Samples) -> dict[str, Any]:
    """Triton's statistics response for ``versions`` of model ``name``."""
    return {"model_stats": [version_stats(name, v, samples) for v in versions]}
