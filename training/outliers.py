"""Things that are no digit, drawn as MNIST was made: the examples the not-a-digit
discriminator learns to tell from digits (outlier exposure: Hendrycks et al. 2019, "Deep anomaly
detection with outlier exposure").

``non_digit_fields(count, seed)`` gives float32 [N, 784] images in 0..1, ink high: printed
letters and symbols in the DejaVu fonts the picture benchmark does NOT draw with (its six fonts
are held out, so its figure is measured on fonts the discriminator never saw), thinner or
bolder; scribbles; blocky noise. Each is cropped to its ink, fitted in 20x20 and centred by mass
in 28x28, as MNIST's digits were. The letters leave out the ones a person could take for a digit
(O, l, I, S, Z, B, g, q). Pillow and numpy only; importing this module does nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
#: fonts-dejavu-core and -extra; the picture benchmark draws with the other six (bench/pictures.py)
FONTS = (
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansCondensed-BoldOblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSerifCondensed-Bold.ttf",
    "DejaVuSerifCondensed-BoldItalic.ttf",
    "DejaVuSerifCondensed-Italic.ttf",
    "DejaVuSerifCondensed.ttf",
)
LETTERS = "ACEFHKMNPRTUVWXYaefhkmnrtuvwxy"
SYMBOLS = "#%&@*+=?$€£¥§¶~<>^"
SIDE = 28
BOX = 20


def fonts_available() -> bool:
    """Whether every font above is installed (Makefile system-packages installs them)."""
    return all((FONT_DIR / name).is_file() for name in FONTS)


def mnist_field(ink: np.ndarray) -> np.ndarray | None:
    """float32 [784]: ink (float 2-D, 0..1, ink high) cropped, fitted in 20x20 keeping its
    aspect, centred by mass in 28x28; None when there is no ink."""
    from PIL import Image

    rows, cols = np.nonzero(ink > 0.05)
    if len(rows) == 0:
        return None
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(
        Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.BOX),
        dtype=np.float32,
    )
    small = np.clip(small, 0.0, 1.0)
    mass = small.sum()
    grid_r, grid_c = np.indices(small.shape)
    centre_r = float((grid_r * small).sum() / mass)
    centre_c = float((grid_c * small).sum() / mass)
    top = min(max(round(SIDE / 2 - centre_r), 0), SIDE - small.shape[0])
    left = min(max(round(SIDE / 2 - centre_c), 0), SIDE - small.shape[1])
    field = np.zeros((SIDE, SIDE), np.float32)
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return field.reshape(SIDE * SIDE)


def _printed(text: str, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    name = FONTS[int(rng.integers(len(FONTS)))]
    font = ImageFont.truetype(str(FONT_DIR / name), int(rng.integers(60, 140)))
    image = Image.new("L", (300, 300), 0)
    ImageDraw.Draw(image).text((40, 40), text, fill=255, font=font)
    weight = int(rng.integers(3))
    if weight == 1:
        image = image.filter(ImageFilter.MaxFilter(5))
    elif weight == 2:
        image = image.filter(ImageFilter.MinFilter(3))
    return np.asarray(image, np.float32) / 255.0


def _scribble(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), 0)
    points = [tuple(rng.uniform(30, 250, 2)) for _ in range(int(rng.integers(6, 20)))]
    ImageDraw.Draw(image).line(points, fill=255, width=int(rng.integers(8, 26)), joint="curve")
    return np.asarray(image, np.float32) / 255.0


def _noise(rng: np.random.Generator) -> np.ndarray:
    block = int(rng.choice([4, 8, 16, 28]))
    cells = rng.random((112 // block + 1, 112 // block + 1))
    values = np.kron(cells, np.ones((block, block)))[:112, :112]
    return np.where(values > rng.uniform(0.4, 0.8), values, 0.0).astype(np.float32)


def non_digit_fields(count: int, seed: int = 0) -> np.ndarray:
    """float32 [count, 784]: letters, symbols (two in five each), scribbles and noise."""
    rng = np.random.default_rng(seed)
    fields: list[np.ndarray] = []
    while len(fields) < count:
        turn = len(fields) % 5
        if turn < 2:
            ink = _printed(LETTERS[int(rng.integers(len(LETTERS)))], rng)
        elif turn < 4:
            ink = _printed(SYMBOLS[int(rng.integers(len(SYMBOLS)))], rng)
        else:
            ink = _scribble(rng) if rng.random() < 0.5 else _noise(rng)
        field = mnist_field(ink)
        if field is not None:
            fields.append(field)
    return np.asarray(fields, np.float32)
