"""Time service.model.explain on a batch of digits, in process: the cost of /explain's numpy math.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python bench/explain_bench.py     # committed model, 16 digits
    .venv/bin/python bench/explain_bench.py --batch 64 --rounds 500 --model path/to/model.onnx

Prints the median, 90th percentile and best time of ``explain`` (forward pass, softmax, exact
back-propagation, saliency) over ``--rounds`` calls, and the load average, because the machine may
be shared. The images are the model's self-test digits, repeated to fill the batch. The target is
5 ms for 16 digits. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from service.model import contract
from service.model.explain import explain, read_mlp

DEFAULT_MODEL = Path("models") / contract.MODEL_NAME / "1" / contract.MODEL_FILE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="an MLP's model.onnx")
    parser.add_argument("--batch", type=int, default=16, help="images per call (default 16)")
    parser.add_argument("--rounds", type=int, default=300, help="timed calls (default 300)")
    args = parser.parse_args(argv)
    mlp = read_mlp(args.model.read_bytes())
    selftest = json.loads((args.model.parent / contract.SELFTEST_FILE).read_text())
    digits = np.asarray(selftest["images"], dtype=np.float32) * np.float32(contract.PIXEL_SCALE)
    images = np.resize(digits, (args.batch, contract.N_PIXELS))
    for _ in range(10):  # warm caches and BLAS
        explain(mlp, images)
    load_before = os.getloadavg()[0]
    timings = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        explain(mlp, images)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    sizes = "-".join(str(n) for n in (contract.N_PIXELS, *mlp.hidden_sizes, contract.N_CLASSES))
    print(f"{args.model} ({sizes}, {mlp.activation}), batch {args.batch}, {args.rounds} calls")
    print(
        f"explain: median {statistics.median(timings):.3f} ms, "
        f"p90 {timings[int(0.9 * len(timings))]:.3f} ms, best {timings[0]:.3f} ms "
        f"(load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}; "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
