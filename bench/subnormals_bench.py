"""onnxruntime on a graph with subnormal weights against the same graph with them as zero.

In this process, one intra-op thread (as in a worker), on MNIST test digits: single images and
batches of 256, CPU time per call (``time.thread_time``) in paired rounds, in turn first; the
ratio per round is the subnormal graph's CPU over the served graph's. The answers of the two are
compared first (labels and probabilities to the last bit). The model is the committed one (or
``--model``); when it has no subnormal weights (training exports none since they were found), its
first layer's zero weights are made +-1e-40 again, as the committed model was first exported.
Bounded in time: about 2 x duration plus start-up.
Usage: python bench/subnormals_bench.py [--duration 8] [--rounds 8] [--model path/to/model.onnx]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import loadgen
import numpy as np

BATCHES = (1, 256)


def with_subnormal_weights(onnx_bytes: bytes) -> bytes:
    """The graph with its first layer's zero weights made subnormal (+-1e-40, alternating), as
    the committed model was exported before training wrote them as zero: L2 decay leaves the
    weights of MNIST's always-blank border pixels there."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    matmul = next(node for node in model.graph.node if node.op_type == "MatMul")
    tensor = next(t for t in model.graph.initializer if t.name in matmul.input)
    weights = numpy_helper.to_array(tensor).copy()
    zeros = weights == 0
    signs = np.where(np.arange(zeros.sum()) % 2 == 0, 1.0, -1.0).astype(weights.dtype)
    weights[zeros] = np.float32(1e-40) * signs
    tensor.CopyFrom(numpy_helper.from_array(weights, tensor.name))
    return bytes(model.SerializeToString())


def cpu_per_call(model: Any, feed: dict[str, np.ndarray], seconds: float) -> float:
    """Seconds of this thread's CPU per run, over at least ``seconds`` of wall time."""
    model.run(None, feed)
    calls, started, deadline = 0, time.thread_time(), time.perf_counter() + seconds
    while time.perf_counter() < deadline or calls < 5:
        model.run(None, feed)
        calls += 1
    return (time.thread_time() - started) / calls


def main(argv: list[str] | None = None) -> int:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.set_defaults(duration=8.0, rounds=8)
    parser.add_argument("--model", type=Path, help="an MLP's model.onnx (default: the committed)")
    args: argparse.Namespace = parser.parse_args(argv)
    path = args.model or loadgen.latest_model(args.models_dir.resolve())
    from service.model.validation import without_subnormal_weights

    before = path.read_bytes()
    served, count = without_subnormal_weights(before)
    if count == 0:
        before = with_subnormal_weights(before)
        served, count = without_subnormal_weights(before)
    print(f"machine: {loadgen.machine_note()}; model {path}: {count:,} subnormal weights")
    pixels, _ = loadgen.mnist_test_digits(args.data_dir, max(BATCHES))
    images = (pixels / np.float32(255)).astype(np.float32)
    sessions = {
        "subnormal weights": loadgen.onnx_session_of(before),
        "served (as zero)": loadgen.onnx_session_of(served),
    }
    first, second = (s.run(None, {"input": images}) for s in sessions.values())
    if not all(np.array_equal(a, b) for a, b in zip(first, second, strict=True)):
        raise SystemExit("the two graphs answer differently; not measuring")
    print(f"answers on {len(images)} test digits: identical to the last bit")

    rows, ratios = [], []
    seconds = args.duration / args.rounds / len(BATCHES) / len(sessions)
    for batch in BATCHES:
        feed = {"input": images[:batch]}
        per_round: dict[str, list[float]] = {name: [] for name in sessions}
        for number in range(args.rounds):
            names = list(sessions) if number % 2 == 0 else list(sessions)[::-1]
            for name in names:
                per_round[name].append(cpu_per_call(sessions[name], feed, seconds))
        for name, values in per_round.items():
            ms = statistics.median(values) * 1000
            rows.append([str(batch), name, f"{ms:.3f}", f"{batch / ms * 1000:,.0f}"])
        paired = [
            a / b
            for a, b in zip(
                per_round["subnormal weights"], per_round["served (as zero)"], strict=True
            )
        ]
        ratios.append(
            [str(batch), f"{statistics.median(paired):.2f}", " ".join(f"{r:.2f}" for r in paired)]
        )
    loadgen.print_table(
        "onnxruntime, one thread, CPU per call (median of rounds)",
        ["batch", "graph", "ms per call", "images/s"],
        rows,
    )
    loadgen.print_table(
        "subnormal weights / served, CPU per call (median of paired rounds)",
        ["batch", "median", "per round"],
        ratios,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
