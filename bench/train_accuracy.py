"""Train the documented configurations through the pipeline; print test accuracy and seconds.

    .venv/bin/python bench/train_accuracy.py                    # the committed default model
    .venv/bin/python bench/train_accuracy.py --run augmented    # the >= 99.0% augmented run
    .venv/bin/python bench/train_accuracy.py --run all --json   # both, one JSON line each

Each run is ``training.pipeline.train_run`` (fit, evaluate, ONNX export and parity check), the same
code ``mnist-train`` runs, on the full 60,000/10,000 split; nothing is published unless
``--publish-into DIR``. The load average is printed before and after, because the machine is
shared and wall-clock seconds depend on it. Not part of the test run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

#: the configurations the docs and README cite (TrainConfig field names)
RUNS: dict[str, dict[str, Any]] = {
    # committed as models/mnist/1 (training/recipes/default.toml): >= 99.0%, 784-800-10
    "default": {
        "hidden_layers": (800,),
        "activation": "relu",
        "solver": "adam",
        "batch_size": 128,
        "learning_rate_init": 1e-3,
        "lr_schedule": "cosine",
        "epochs": 30,
        "augment": True,
        "augment_copies": 1,
        "augment_shift": 0.0,
        "augment_rotation": 0.0,
        "augment_scale": 0.0,
        "augment_shear": 0.0,
        "elastic_alpha": 34.0,
        "elastic_sigma": 4.0,
        "seed": 0,
    },
    # the goal: >= 99.0% with augmentation in at most 45 minutes of training
    "augmented": {
        "hidden_layers": (1024,),
        "activation": "relu",
        "solver": "adam",
        "batch_size": 256,
        "learning_rate_init": 5e-4,
        "epochs": 50,
        "augment": True,
        "augment_copies": 2,
        "seed": 0,
    },
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen configurations and print one figure line (or JSON line) per run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", choices=[*RUNS, "all"], default="default")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("MNIST_DATA_DIR"))
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads for training (default 1: on a shared, oversubscribed machine one "
        "thread is several times faster than OpenBLAS spinning on two)",
    )
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    parser.add_argument("--publish-into", type=Path, help="also publish each run into this repo")
    parser.add_argument("--json", action="store_true", help="print one JSON line per run")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from training.card import reproducing_command
    from training.config import TrainConfig, validate
    from training.data import load_mnist
    from training.pipeline import publish_run, train_run
    from training.progress import make_reporter

    data = load_mnist(args.data_dir, log=io.StringIO())
    names = list(RUNS) if args.run == "all" else [args.run]
    for name in names:
        config = validate(TrainConfig(**RUNS[name], progress=args.progress))
        load_before = os.getloadavg()
        started = time.perf_counter()
        with threadpool_limits(limits=args.blas_threads):
            trained = train_run(config, data, make_reporter(config.progress))
        seconds = time.perf_counter() - started
        metrics = trained.metrics
        figures = {
            "run": name,
            "test_accuracy": metrics["test_accuracy"],
            "train_seconds": round(metrics["train_seconds"], 1),
            "pipeline_seconds": round(seconds, 1),
            "epochs": metrics["epochs"],
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in os.getloadavg()],
            "cpus": os.cpu_count(),
            "blas_threads": args.blas_threads,
            "command": reproducing_command(config),
        }
        if args.publish_into:
            version = publish_run(trained, args.publish_into, config.min_accuracy)
            figures["published"] = str(version.path)
        if args.json:
            print(json.dumps(figures), flush=True)
        else:
            print(
                f"{name}: test accuracy {figures['test_accuracy']:.4f}, training "
                f"{figures['train_seconds']:.0f}s ({figures['epochs']} epochs), whole pipeline "
                f"{figures['pipeline_seconds']:.0f}s; load {figures['load_before']} -> "
                f"{figures['load_after']} on {figures['cpus']} CPUs\n  {figures['command']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
