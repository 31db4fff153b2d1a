"""Image and batch throughput: PNG upload, V2 tensors, JSON batches, beside onnxruntime alone.

Rows: JSON single image, V2 binary single image, PNG upload (raw body) at concurrency 8; JSON
batch of 256, V2 binary and V2 JSON FP32 batches of 256 at concurrency 2; onnxruntime alone on
the same batch of 256 in this process (one intra-op thread: the model on one core); and first, in
this process, the CPU time of preprocessing the PNG upload's 280x280 photo (decoding included,
one OpenCV thread; target: at most 2 ms p50). With
--baseline DIR, the JSON single image, the JSON batch and the PNG upload are also sent to a
second service run from that checkout (for example today's main: git worktree add /tmp/baseline
main), each paired with ours.
Rows that are compared run side by side in every round, in turn first (loadgen.rotate_groups);
each ratio is the median of the rounds' ratios. Every row records the server's CPU per request
and how it split over the worker processes. Target: V2 binary batch-256 >= 30,000 images/s.
Usage: python bench/serve_images_bench.py [--duration 12] [--rounds 12] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import loadgen
import numpy as np
from PIL import Image

BATCH = 256
TARGET_BATCH_IMAGES_PER_SECOND = 30_000
TARGET_PREPROCESSING_MS = 2.0
PREPROCESSING_RUNS = 500
HEADER_LENGTH = "Inference-Header-Content-Length"
V2_INFER = "/v2/models/mnist/infer"


@dataclass(frozen=True)
class Case:
    """One benchmark row: a request body, its concurrency, the digits it must be answered with."""

    name: str
    body: loadgen.PostBody
    connections: int
    labels: np.ndarray


def _baseline(name: str) -> str:
    """The row of ``name`` served by the --baseline checkout."""
    return f"{name}, baseline"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--single-concurrency", type=int, default=8)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of another version (git worktree add DIR COMMIT): its JSON batch row "
        "runs beside ours, paired",
    )
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


def time_preprocessing(bodies: list[bytes], runs: int = PREPROCESSING_RUNS) -> tuple[float, float]:
    """(p50, p90) CPU milliseconds of ``service.images.preprocess_image`` on these pictures, in
    turn, in this process with one OpenCV thread (process_time: other jobs' load counts less)."""
    import time

    from service import images  # only this row needs OpenCV in the benchmark's process

    images.use_one_thread()
    for body in bodies:
        images.preprocess_image(body)
    costs = []
    for run in range(runs):
        started = time.process_time()
        images.preprocess_image(bodies[run % len(bodies)])
        costs.append(1000 * (time.process_time() - started))
    cuts = np.percentile(costs, [50, 90])
    return float(cuts[0]), float(cuts[1])


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


def v2_json_body(pixels: np.ndarray) -> loadgen.PostBody:
    """V2 infer with a JSON FP32 [N, 784] input in [0, 1] (flat "data"), JSON outputs."""
    scaled = (pixels / np.float32(255)).astype(np.float32)
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": [len(pixels), 784],
                "datatype": "FP32",
                "data": scaled.ravel().tolist(),
            }
        ]
    }
    return loadgen.PostBody(
        path=V2_INFER,
        content_type="application/json",
        body=json.dumps(request).encode(),
        images=len(pixels),
    )


def main(argv: list[str] | None = None) -> int:
    """Run every case, interleaved, then print the table and the paired ratios."""
    args = parse_args(argv)
    wrk = loadgen.require_wrk()
    models_dir = args.models_dir.resolve()
    pixels, labels = loadgen.mnist_test_digits(args.data_dir, BATCH)
    single, batch = args.single_concurrency, args.batch_concurrency
    json_batch = f"JSON batch of {BATCH}"
    json_single, png_upload = "JSON single image", "PNG upload 280x280 RGB"
    compared = (json_single, json_batch, png_upload)  # the rows --baseline runs on both
    v2_batch = f"V2 binary batch of {BATCH}"
    ort_batch = f"onnxruntime alone, batch of {BATCH}"
    # groups of rows compared with each other; each group is rotated round by round
    groups: list[list[Case]] = [
        [
            Case(json_single, json_body(pixels[:1]), single, labels[:1]),
            Case("V2 binary single image", v2_binary_body(pixels[:1]), single, labels[:1]),
        ],
        [Case(json_batch, json_body(pixels), batch, labels)],
        [
            Case(v2_batch, v2_binary_body(pixels), batch, labels),
            Case(f"V2 JSON FP32 batch of {BATCH}", v2_json_body(pixels), batch, labels),
        ],
        [Case(png_upload, png_body(pixels[0]), single, labels[:1])],
    ]
    if args.baseline is not None:
        for group in groups:
            group.extend(
                replace(case, name=_baseline(case.name))
                for case in list(group)
                if case.name in compared
            )

    model = loadgen.latest_model(models_dir)
    scaled = (pixels / np.float32(255)).astype(np.float32)
    in_process = {1: loadgen.time_onnxruntime(model, scaled[:1])}
    in_process[BATCH] = loadgen.time_onnxruntime(model, scaled)
    print(f"machine: {loadgen.machine_note()}; model {model.relative_to(models_dir)}")
    p50, p90 = time_preprocessing([png_body(digit).body for digit in pixels[:10]])
    print(
        f"preprocessing a 280x280 RGB PNG photo in process (decoding included, one thread): "
        f"CPU p50 {p50:.2f} ms, p90 {p90:.2f} ms "
        f"({'meets' if p50 <= TARGET_PREPROCESSING_MS else 'MISSES'} the "
        f"{TARGET_PREPROCESSING_MS:g} ms target)"
    )

    env = {"MODEL_DIR": str(models_dir)}
    with loadgen.scratch_dir() as scratch, contextlib.ExitStack() as stack:
        service = stack.enter_context(
            loadgen.gunicorn_server(loadgen.SERVICE_APP, env, scratch, "/v2/health/ready")
        )
        servers = {case.name: service for group in groups for case in group}
        if args.baseline is not None:
            baseline = stack.enter_context(
                loadgen.gunicorn_server(
                    loadgen.SERVICE_APP, env, scratch, "/v2/health/ready", args.baseline
                )
            )
            servers.update({_baseline(name): baseline for name in compared})
        for group in groups:
            for case in group:
                url = servers[case.name].url
                digits = answered_digits(*loadgen.post(url, case.body))
                accuracy = float((digits == case.labels).mean())
                if accuracy < 0.9:
                    raise SystemExit(
                        f"{case.name}: only {accuracy:.0%} right digits; not measuring"
                    )
        cases: list[loadgen.Case] = []
        sizes = []
        for group in groups:
            for case in group:
                server = servers[case.name]
                cases.append(
                    loadgen.LoadCase(case.name, server.url, case.body, case.connections, server.pid)
                )
            if group is groups[2]:  # the model alone, beside the V2 binary batch
                cases.append(loadgen.OnnxCase(ort_batch, model, scaled))
            sizes.append(len(group) + (group is groups[2]))
        results = loadgen.measure_rounds(
            cases, args.duration, args.rounds, scratch, wrk, arrange=loadgen.rotate_groups(sizes)
        )

    rows = []
    for case in cases:
        result = results[case.name]
        ort = in_process[result.images_per_request]
        connections = str(case.connections) if isinstance(case, loadgen.LoadCase) else "-"
        rows.append(
            [
                case.name,
                connections,
                f"{result.requests_per_second:,.0f}",
                f"{result.images_per_second:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                *loadgen.cpu_cells(result),
                f"{ort.images_per_second:,.0f}",
            ]
        )
    loadgen.print_table(
        f"Service over HTTP (wrk, {args.duration:g} s per row in {args.rounds} interleaved rounds)"
        " beside in-process onnxruntime (same batch, one thread)",
        ["request", "conc.", "req/s", "images/s", "p50 ms", "p99 ms", *loadgen.CPU_HEADER,
         "ORT images/s (before)"],
        rows,
    )  # fmt: skip

    pairs = [
        ("V2 binary single / JSON single", "V2 binary single image", "JSON single image"),
        ("V2 binary batch / onnxruntime alone", v2_batch, ort_batch),
    ]
    if args.baseline is not None:
        pairs.extend(
            (f"{name} / baseline ({args.baseline})", name, _baseline(name)) for name in compared
        )
    ratio_rows = []
    for label, ours, theirs in pairs:
        ratio, per_round = loadgen.paired_ratio(results[ours], results[theirs])
        if ours == v2_batch:  # compare images/s: the model alone counts calls, not requests
            ratio, per_round = loadgen.paired_ratio(results[ours], results[theirs], images=True)
        ratio_rows.append([label, f"{ratio:.2f}", " ".join(f"{r:.2f}" for r in per_round)])
    loadgen.print_table(
        "Ratios, median of the paired rounds", ["ratio", "median", "per round"], ratio_rows
    )
    v2_images = results[v2_batch].images_per_second
    print(
        f"\nV2 binary batch-{BATCH} at concurrency {batch}: {v2_images:,.0f} images/s "
        f"({'meets' if v2_images >= TARGET_BATCH_IMAGES_PER_SECOND else 'MISSES'} the "
        f"{TARGET_BATCH_IMAGES_PER_SECOND:,} target)"
    )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
