"""Image and batch throughput: PNG upload, V2 binary tensors, JSON batches, beside onnxruntime.

Rows: JSON single image, PNG upload (raw body), V2 binary single image (concurrency 8); JSON
batch of 256 and V2 binary batch of 256 (concurrency 2). Each row shows images/s and p50/p99
beside in-process onnxruntime for the same batch, timed in the same run. Targets: V2 binary
batch-256 >= 30,000 images/s at concurrency 2; V2 binary single req/s >= JSON single req/s.
The rows are measured in interleaved rounds; V2 single is compared with JSON single by the median
of the rounds' ratios (the two run back to back in every round; see loadgen.paired_ratio).
Usage: python bench/serve_images_bench.py [--duration 12] [--rounds 12]
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import dataclass

import loadgen
import numpy as np
from PIL import Image

BATCH = 256
TARGET_BATCH_IMAGES_PER_SECOND = 30_000
HEADER_LENGTH = "Inference-Header-Content-Length"
V2_INFER = "/v2/models/mnist/infer"


@dataclass(frozen=True)
class Case:
    """One benchmark row: a request body, its concurrency, the digits it must be answered with."""

    name: str
    body: loadgen.PostBody
    connections: int
    labels: np.ndarray


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--single-concurrency", type=int, default=8)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    return parser.parse_args(argv)


def json_body(pixels: np.ndarray) -> loadgen.PostBody:
    """/predict with JSON pixel rows (0..255, ink high)."""
    return loadgen.PostBody(
        path="/predict",
        content_type="application/json",
        body=json.dumps({"images": pixels.tolist()}).encode(),
        images=len(pixels),
    )


def png_body(pixels: np.ndarray, side: int = 280) -> loadgen.PostBody:
    """/predict with a raw PNG as a person would send it: RGB, dark ink on white, side x side."""
    digit = Image.fromarray(255 - pixels.reshape(28, 28)).resize((side, side), Image.BILINEAR)
    buffer = io.BytesIO()
    digit.convert("RGB").save(buffer, format="PNG")
    return loadgen.PostBody(
        path="/predict", content_type="image/png", body=buffer.getvalue(), images=1
    )


def v2_binary_body(pixels: np.ndarray) -> loadgen.PostBody:
    """V2 infer with a binary FP32 [N, 784] input in [0, 1] and both outputs asked for as binary."""
    tensor = (pixels / np.float32(255)).astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(pixels), 784],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [
                {"name": "label", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": True}},
            ],
        }
    ).encode()
    return loadgen.PostBody(
        path=V2_INFER,
        content_type="application/octet-stream",
        body=header + tensor,
        images=len(pixels),
        headers=((HEADER_LENGTH, str(len(header))),),
    )


def answered_digits(headers: dict[str, str], payload: bytes) -> np.ndarray:
    """The digits in a /predict JSON answer or in a V2 answer (binary or JSON outputs)."""
    length = next((v for k, v in headers.items() if k.lower() == HEADER_LENGTH.lower()), None)
    if length is None:
        answer = json.loads(payload)
        if "predictions" in answer:
            return np.array([p["digit"] for p in answer["predictions"]])
        [label] = [o for o in answer["outputs"] if o["name"] == "label"]
        return np.array(label["data"])
    header = json.loads(payload[: int(length)])
    offset = int(length)
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        if output["name"] == "label":
            return np.frombuffer(payload[offset : offset + size], dtype="<i8")
        offset += size
    raise SystemExit("no label output in the V2 answer")


def main(argv: list[str] | None = None) -> int:
    """Run every case against one service, then print the table and the targets."""
    args = parse_args(argv)
    wrk = loadgen.require_wrk()
    models_dir = args.models_dir.resolve()
    pixels, labels = loadgen.mnist_test_digits(args.data_dir, BATCH)
    single, batch = args.single_concurrency, args.batch_concurrency
    cases = [
        # the two rows the target compares stand side by side in every round
        Case("JSON single image", json_body(pixels[:1]), single, labels[:1]),
        Case("V2 binary single image", v2_binary_body(pixels[:1]), single, labels[:1]),
        Case("PNG upload 280x280 RGB", png_body(pixels[0]), single, labels[:1]),
        Case(f"JSON batch of {BATCH}", json_body(pixels), batch, labels),
        Case(f"V2 binary batch of {BATCH}", v2_binary_body(pixels), batch, labels),
    ]

    model = loadgen.latest_model(models_dir)
    scaled = (pixels / np.float32(255)).astype(np.float32)
    in_process = {1: loadgen.time_onnxruntime(model, scaled[:1])}
    in_process[BATCH] = loadgen.time_onnxruntime(model, scaled)
    print(f"machine: {loadgen.machine_note()}; model {model.relative_to(models_dir)}")

    with (
        loadgen.scratch_dir() as scratch,
        loadgen.gunicorn_server(
            loadgen.SERVICE_APP, {"MODEL_DIR": str(models_dir)}, scratch, "/v2/health/ready"
        ) as service,
    ):
        for case in cases:
            digits = answered_digits(*loadgen.post(service.url, case.body))
            accuracy = float((digits == case.labels).mean())
            if accuracy < 0.9:
                raise SystemExit(f"{case.name}: only {accuracy:.0%} right digits; not measuring")
        load_cases = [
            loadgen.LoadCase(case.name, service.url, case.body, case.connections) for case in cases
        ]
        results = loadgen.measure_rounds(load_cases, args.duration, args.rounds, scratch, wrk)

    rows = []
    for case in cases:
        result, ort = results[case.name], in_process[case.body.images]
        rows.append(
            [
                case.name,
                str(case.connections),
                f"{result.requests_per_second:,.0f}",
                f"{result.images_per_second:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                f"{ort.images_per_second:,.0f}",
                f"{ort.p50_ms:.3f}",
                f"{ort.p99_ms:.3f}",
            ]
        )
    loadgen.print_table(
        f"Service over HTTP (wrk, {args.duration:g} s per row in {args.rounds} interleaved rounds)"
        " beside in-process onnxruntime (same batch, one thread)",
        ["request", "conc.", "req/s", "images/s", "p50 ms", "p99 ms",
         "ORT images/s", "ORT p50 ms", "ORT p99 ms"],
        rows,
    )  # fmt: skip

    v2_batch = results[f"V2 binary batch of {BATCH}"].images_per_second
    v2_single = results["V2 binary single image"]
    json_single = results["JSON single image"]
    single_ratio, per_round = loadgen.paired_ratio(v2_single, json_single)
    print()
    print(
        f"V2 binary batch-{BATCH} at concurrency {batch}: {v2_batch:,.0f} images/s "
        f"({'meets' if v2_batch >= TARGET_BATCH_IMAGES_PER_SECOND else 'MISSES'} the "
        f"{TARGET_BATCH_IMAGES_PER_SECOND:,} target)"
    )
    print(
        f"V2 binary single {v2_single.requests_per_second:,.0f} req/s vs JSON single "
        f"{json_single.requests_per_second:,.0f} req/s; V2 / JSON, median of the paired rounds: "
        f"{single_ratio:.2f} ({'meets' if single_ratio >= 1 else 'MISSES'} the target V2 >= JSON)"
        f"; per round: {' '.join(f'{r:.2f}' for r in per_round)}"
    )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
