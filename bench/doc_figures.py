"""Re-make docs/photo-preprocessing.png: four photos of MNIST test digits and what the model saw.

Usage: python bench/doc_figures.py [--data-dir DIR] [--out docs/photo-preprocessing.png]

Each photo is drawn by pictures.py (the picture benchmark's generator: a sheet on a dark desk, a
shadow, squared paper, stray dots), sent through JPEG at quality 85 as a phone would, and read by
``service.images.preprocess_image``, the function ``POST /predict`` runs; the lower row is its
28x28 output (what ``?return_input=true`` returns), enlarged without smoothing. In process, no
server; needs numpy, Pillow, OpenCV and MNIST (``MNIST_DATA_DIR``, else ../shared/data/mnist).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import loadgen
import numpy as np
import pictures
from PIL import Image, ImageDraw, ImageFont

from service.images import preprocess_image

#: (index into the MNIST test set, condition, strength, seed): one column each
PANELS = (
    (1, "dark_surround", 2, 3),
    (4, "shadow", 3, 1),
    (7, "grid_paper", 2, 2),
    (0, "stray_marks", 3, 4),
)
TILE, GAP, LABEL = 200, 10, 20
FONT = pictures.FONT_DIR / "DejaVuSans.ttf"


def figure(digits: np.ndarray) -> Image.Image:
    """The two rows as one RGB image: photos sent (decoded JPEG) above the 28x28 inputs."""
    width = GAP + len(PANELS) * (TILE + GAP)
    sheet = Image.new("RGB", (width, 2 * (LABEL + TILE) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.truetype(str(FONT), 11)
    draw.text((GAP, 4), "photo sent (JPEG)", fill="black", font=font)
    draw.text(
        (GAP, LABEL + TILE + 4),
        "what the model saw (28x28, ?return_input=true)",
        fill="black",
        font=font,
    )
    for column, (index, condition, strength, seed) in enumerate(PANELS):
        picture = pictures.render(digits[index], condition, strength, np.random.default_rng(seed))
        sent = pictures.encode(picture, "JPEG")
        seen = preprocess_image(sent).reshape(28, 28)
        x = GAP + column * (TILE + GAP)
        with Image.open(io.BytesIO(sent)) as photo:
            sheet.paste(
                photo.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS), (x, LABEL)
            )
        field = Image.fromarray(np.rint(seen * 255).astype(np.uint8))
        sheet.paste(
            field.resize((TILE, TILE), Image.Resampling.NEAREST).convert("RGB"),
            (x, 2 * LABEL + TILE),
        )
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=loadgen.default_data_dir())
    parser.add_argument(
        "--out", type=Path, default=loadgen.REPO_ROOT / "docs" / "photo-preprocessing.png"
    )
    args = parser.parse_args(argv)
    digits, _ = loadgen.mnist_test_digits(args.data_dir, 10)
    figure(digits).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        args.out, optimize=True
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
