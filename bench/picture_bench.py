"""Picture benchmark: MNIST test digits as photos and scans, and non-digits, over HTTP.

Starts the service (gunicorn, the models folder given) and sends, as multipart uploads to
/predict:
* the first ``--digits`` MNIST test digits rendered under every condition of pictures.py at
  strengths 1-3, as PNG and JPEG; it prints the accuracy per condition beside the accuracy of the
  same digits sent as raw JSON pixels (targets: each condition within 2 points, all >= 97%);
* ``--non-digits`` pictures of letters, symbols, words, scribbles, noise, textures and empty
  sheets: the share rejected (not accepted, or refused as showing no digit; target >= 90%);
* the whole MNIST test set as JSON pixels: the share rejected, the share called not_a_digit and
  the error among accepted digits (targets: <= 2% rejected, <= 1% not_a_digit, <= 0.25% error).
Usage: python bench/picture_bench.py [--digits 300] [--non-digits 700] [--models-dir models]
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import loadgen
import numpy as np
import pictures

BATCH = 64
#: well under the service's default body limit (16 MiB)
MAX_REQUEST_BYTES = 6 * 1024 * 1024
ALLOWED_DROP = 0.02
TARGET_ALL = 0.97
TARGET_NON_DIGITS = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=loadgen.REPO_ROOT / "models")
    parser.add_argument("--data-dir", type=Path, default=loadgen.default_data_dir())
    parser.add_argument("--digits", type=int, default=300, help="MNIST test digits per cell")
    parser.add_argument("--non-digits", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def multipart(files: list[tuple[bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body with one part named "image" per file."""
    boundary = uuid.uuid4().hex
    chunks = []
    for number, (data, kind) in enumerate(files):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="p{number}"\r\nContent-Type: {kind}\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def ask_pictures(url: str, files: list[tuple[bytes, str]]) -> list[dict[str, object] | None]:
    """The prediction for each picture; None for a picture refused with a 422 (no digit)."""
    answers: list[dict[str, object] | None] = []
    chunks: list[list[tuple[bytes, str]]] = [[]]
    for file in files:  # at most BATCH pictures and MAX_REQUEST_BYTES per request
        if len(chunks[-1]) == BATCH or sum(len(d) for d, _ in chunks[-1]) > MAX_REQUEST_BYTES:
            chunks.append([])
        chunks[-1].append(file)
    for chunk in chunks:
        body, kind = multipart(chunk)
        status, payload = _post(url + "/predict", body, kind)
        if status == 200:
            answers.extend(payload["predictions"])  # type: ignore[arg-type]
            continue
        # one refused picture refuses the batch: ask one by one
        for data, one_kind in chunk:
            single, one = _post(url + "/predict", *multipart([(data, one_kind)]))
            answers.append(one["predictions"][0] if single == 200 else None)  # type: ignore[index]
    return answers


def ask_pixels(url: str, pixels: np.ndarray) -> list[dict[str, object]]:
    """The predictions for raw uint8 [N, 784] MNIST pixels sent as JSON."""
    answers: list[dict[str, object]] = []
    for start in range(0, len(pixels), 1000):
        body = json.dumps({"images": pixels[start : start + 1000].tolist()}).encode()
        status, payload = _post(url + "/predict", body, "application/json")
        if status != 200:
            raise SystemExit(f"JSON pixels answered {status}: {payload}")
        answers.extend(payload["predictions"])  # type: ignore[arg-type]
    return answers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pixels, labels = loadgen.mnist_test_digits(args.data_dir, 10_000)
    digits, truth = pixels[: args.digits], labels[: args.digits]
    print(f"machine: {loadgen.machine_note()}")
    with (
        loadgen.scratch_dir() as scratch,
        loadgen.gunicorn_server(
            loadgen.SERVICE_APP,
            {"MODEL_DIR": str(args.models_dir.resolve())},
            scratch,
            "/v2/health/ready",
        ) as service,
    ):
        whole = ask_pixels(service.url, pixels)
        raw_right = np.array([a["digit"] for a in whole]) == labels
        raw = float(raw_right[: args.digits].mean())

        rows, every = [], []
        by_condition: dict[str, list[float]] = defaultdict(list)
        for condition in pictures.CONDITIONS:
            for strength in pictures.STRENGTHS:
                for fmt in pictures.formats_for(condition):
                    rng = np.random.default_rng([args.seed, strength, len(fmt), len(condition)])
                    kind = f"image/{fmt.lower()}"
                    files = [
                        (pictures.encode(pictures.render(d, condition, strength, rng), fmt), kind)
                        for d in digits
                    ]
                    answers = ask_pictures(service.url, files)
                    right = [
                        a is not None and a["digit"] == t
                        for a, t in zip(answers, truth, strict=True)
                    ]
                    accuracy = float(np.mean(right))
                    by_condition[condition].append(accuracy)
                    every.extend(right)
                    rows.append([condition, str(strength), fmt, f"{100 * accuracy:.1f}"])
        loadgen.print_table(
            f"Pictures of the first {args.digits} MNIST test digits (raw JSON pixels: "
            f"{100 * raw:.1f}%)",
            ["condition", "strength", "format", "accuracy %"],
            rows,
        )
        print()
        worst = []
        for condition, values in by_condition.items():
            mean = float(np.mean(values))
            low = min(values)
            # exactly 2 points (6 of 300) is within: 299/300 - 293/300 is 0.02 plus a rounding
            mark = "ok" if raw - low <= ALLOWED_DROP + 1e-9 else "MISSES"
            worst.append(f"{condition}: mean {100 * mean:.1f}%, lowest {100 * low:.1f}% ({mark})")
        print("per condition, beside raw " + f"{100 * raw:.1f}%:\n  " + "\n  ".join(worst))
        total = float(np.mean(every))
        print(
            f"all conditions together: {100 * total:.2f}% "
            f"({'meets' if total >= TARGET_ALL else 'MISSES'} the {100 * TARGET_ALL:.0f}% target)"
        )

        accepted = np.array([a["accepted"] for a in whole])
        reasons = np.array([a["reject_reason"] or "" for a in whole])
        print(
            f"MNIST test set (10,000, JSON pixels): rejected {100 * (~accepted).mean():.2f}% "
            f"(not_a_digit {100 * (reasons == 'not_a_digit').mean():.2f}%, low_confidence "
            f"{100 * (reasons == 'low_confidence').mean():.2f}%); error among accepted "
            f"{100 * (1 - raw_right[accepted].mean()):.3f}% "
            f"(all: {100 * (1 - raw_right.mean()):.2f}%)"
        )

        made = pictures.non_digits(args.non_digits, seed=args.seed + 1)
        files = [(pictures.encode(image, "PNG"), "image/png") for _, image in made]
        answers = ask_pictures(service.url, files)
        rejected = np.array([a is None or not a["accepted"] for a in answers])
        kinds = np.array([kind for kind, _ in made])
        share = float(rejected.mean())
        per_kind = ", ".join(
            f"{kind} {100 * rejected[kinds == kind].mean():.0f}%"
            for kind in pictures.NON_DIGIT_KINDS
        )
        refused = sum(a is None for a in answers)
        print(
            f"non-digits ({len(made)}): {100 * share:.1f}% rejected ({refused} refused as showing "
            f"no digit) ({'meets' if share >= TARGET_NON_DIGITS else 'MISSES'} the 90% target); "
            f"{per_kind}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
