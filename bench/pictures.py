"""Pictures of digits as people send them, and things that are no digit: the test-set generator.

``render(digit, condition, strength, rng)`` draws one MNIST test digit (uint8 [784], ink high)
as a photo or scan under one condition (shading, a dark desk around the sheet, ruled paper, ink
only in the alpha channel, a marker, blur, ...) at strength 1, 2 or 3, all three chosen so that
a person still reads the digit at once. ``non_digit(kind, rng)`` draws printed letters and
symbols in the DejaVu fonts, scribbles, noise and textures. ``encode`` gives the PNG or JPEG
bytes. The picture benchmark (picture_bench.py) and the tests (a small fixed slice) use these.
Importing this module does nothing; it needs numpy, Pillow and OpenCV.
"""

from __future__ import annotations

import io
import math
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIDE = 280
STRENGTHS = (1, 2, 3)
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
)
#: letters that a person would not mistake for a digit (O, l, I, S, Z, B, g, q look like digits)
LETTERS = "ACEFHKMNPRTUVWXYaefhkmnrtuvwxy"
#: symbols; the single strokes (| / \\ ! ( ) [ ] { }) are left out: centred in a box they are a 1
SYMBOLS = "#%&@*+=?$€£¥§¶~<>^"
NON_DIGIT_KINDS = ("letter", "symbol", "word", "scribble", "noise", "texture", "blank_photo")


@dataclass(frozen=True)
class Picture:
    """One rendered picture: the image and what it shows (a digit, or -1 for no digit)."""

    image: Image.Image
    label: int


def _ink_field(digit: np.ndarray, side: int) -> np.ndarray:
    """float32 [side, side] ink 0..1 of the MNIST digit, enlarged bilinearly."""
    image = Image.fromarray(np.asarray(digit, np.uint8).reshape(28, 28))
    return np.asarray(image.resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255.0


def _on_paper(ink: np.ndarray, paper: np.ndarray | float, pen: float) -> np.ndarray:
    return np.clip(paper * (1.0 - ink) + pen * ink, 0, 255).astype(np.uint8)


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8))


def _sensor_noise(values: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(values + rng.normal(0, sigma, values.shape), 0, 255)


def plain(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Dark ink on white paper, the digit filling the picture as it fills MNIST's field."""
    return _gray(_on_paper(_ink_field(digit, SIDE), 250.0, 30.0))


def shading(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Light falling off across the sheet: paper from 250 to 190/160/130 in a random direction."""
    ink = _ink_field(digit, SIDE)
    low = 250.0 - 40.0 * strength
    angle = rng.uniform(0, 2 * math.pi)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] / (SIDE - 1) - 0.5
    ramp = (np.cos(angle) * cols + np.sin(angle) * rows) / math.sqrt(0.5) + 0.5
    paper = 250.0 + (low - 250.0) * np.clip(ramp, 0, 1)
    return _gray(_sensor_noise(_on_paper(ink, paper, 30.0), rng, 3))


def shadow(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A soft-edged shadow (a hand, a phone) over part of the sheet, 25/40/55% darker."""
    ink = _ink_field(digit, SIDE)
    depth = 0.1 + 0.15 * strength
    angle = rng.uniform(0, math.pi)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE] - SIDE / 2
    offset = rng.uniform(-SIDE / 5, SIDE / 5)
    distance = np.cos(angle) * cols + np.sin(angle) * rows - offset
    cover = 1.0 / (1.0 + np.exp(-distance / 12.0))
    paper = 245.0 * (1.0 - depth * cover)
    return _gray(_sensor_noise(_on_paper(ink, paper, 30.0 * (1 - depth * cover)), rng, 3))


def dark_surround(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A sheet on a dark desk: the sheet fills 85/72/60% of the picture, off-centre."""
    sheet_side = int(SIDE * (0.98 - 0.13 * strength))
    ink = _ink_field(digit, int(sheet_side * 0.8))
    desk = rng.uniform(25, 70) + rng.normal(0, 6, (SIDE, SIDE))
    canvas = desk.copy()
    top = int(rng.integers(0, SIDE - sheet_side + 1))
    left = int(rng.integers(0, SIDE - sheet_side + 1))
    sheet = np.full((sheet_side, sheet_side), rng.uniform(215, 245))
    margin = (sheet_side - ink.shape[0]) // 2
    sheet[margin : margin + ink.shape[0], margin : margin + ink.shape[0]] = _on_paper(
        ink, sheet[margin : margin + ink.shape[0], margin : margin + ink.shape[0]], 30.0
    )
    canvas[top : top + sheet_side, left : left + sheet_side] = sheet
    return _gray(_sensor_noise(canvas, rng, 3))


def stray_marks(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A pen dot away from the digit and specks of dust: 1 dot and 5/15/30 specks."""
    side = int(SIDE * 0.6)
    ink = _ink_field(digit, side)
    canvas = np.zeros((SIDE, SIDE), np.float32)
    top, left = int(rng.integers(0, SIDE - side)), int(rng.integers(0, SIDE - side))
    canvas[top : top + side, left : left + side] = ink
    image = _gray(_on_paper(canvas, 248.0, 30.0))
    draw = ImageDraw.Draw(image)
    for _ in range(60):  # a pen dot at least a third of the digit's size away from it
        x, y = rng.integers(8, SIDE - 8, 2)
        gap = max(left - x, x - (left + side), top - y, y - (top + side))
        if gap > side / 3:
            radius = int(rng.integers(4, 8))
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=35)
            break
    for _ in range(5 + [0, 0, 10, 25][strength]):
        x, y = rng.integers(0, SIDE, 2)
        radius = float(rng.uniform(0.5, 2.0))
        grey = int(rng.integers(40, 140))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=grey)
    return image


def _ruled(digit: np.ndarray, strength: int, rng: np.random.Generator, grid: bool) -> Image.Image:
    ink = _ink_field(digit, SIDE)
    paper = np.full((SIDE, SIDE, 3), 248.0)
    spacing = int(rng.integers(22, 36)) if grid else int(rng.integers(36, 56))
    line_colour = np.array([150.0, 170.0, 215.0]) - 25.0 * strength  # blue-grey rules
    offset = int(rng.integers(0, spacing))
    width = 1 + (strength >= 3)
    for start in range(offset, SIDE, spacing):
        paper[start : start + width, :] = line_colour
        if grid:
            paper[:, start : start + width] = line_colour
    pen = np.array([30.0, 30.0, 60.0])
    pixels = paper * (1 - ink[..., None]) + pen * ink[..., None]
    return Image.fromarray(_sensor_noise(pixels, rng, 2).astype(np.uint8), "RGB")


def ruled_paper(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A ruled exercise-book sheet: blue-grey rules every 36-56 px, darker with strength."""
    return _ruled(digit, strength, rng, grid=False)


def grid_paper(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Squared paper: rules both ways every 22-36 px, darker with strength."""
    return _ruled(digit, strength, rng, grid=True)


def alpha_white(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """White strokes carried only by the alpha channel on a transparent background (PNG)."""
    ink = _ink_field(digit, SIDE)
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def alpha_black(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Black strokes on a transparent background whose hidden colour is black too (PNG)."""
    ink = _ink_field(digit, SIDE)
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def coloured_ink(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Red, blue or green pens on white, cream or pale-blue paper."""
    ink = _ink_field(digit, SIDE)[..., None]
    pens = [(200, 30, 30), (30, 60, 190), (20, 140, 60), (230, 120, 0)]
    papers = [(250, 250, 250), (250, 240, 205), (225, 235, 250)]
    pen = np.array(pens[int(rng.integers(len(pens)))], np.float32)
    paper = np.array(papers[strength - 1], np.float32)
    return Image.fromarray(np.clip(paper * (1 - ink) + pen * ink, 0, 255).astype(np.uint8), "RGB")


def faint_pencil(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Graphite on paper: the strokes only 110/80/60 grey levels darker, grainy."""
    ink = _ink_field(digit, SIDE)
    contrast = [0, 110.0, 80.0, 60.0][strength]
    grain = np.clip(rng.normal(1.0, 0.15, ink.shape), 0.5, 1.3)
    values = 242.0 - contrast * np.clip(ink * grain, 0, 1)
    return _gray(_sensor_noise(values, rng, 2.5))


def jpeg_noise(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Sensor noise (sigma 8/14/20) that the JPEG encoding then adds its blocks to."""
    ink = _ink_field(digit, SIDE)
    return _gray(_sensor_noise(_on_paper(ink, 235.0, 40.0), rng, 2.0 + 6.0 * strength))


def blur(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Out of focus or shaken: a Gaussian blur of 3/5/7 px at 280 px (strokes are ~25 px)."""
    image = plain(digit, strength, rng)
    return image.filter(ImageFilter.GaussianBlur(1 + 2 * strength))


def small_in_large(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A phone photo of 1200x900 with the digit 240/160/110 px tall somewhere on the sheet."""
    width, height = 1200, 900
    side = [0, 300, 200, 140][strength]
    ink = _ink_field(digit, side)
    rows, cols = np.mgrid[0:height, 0:width]
    paper = 235.0 - 25.0 * cols / width - 15.0 * rows / height
    canvas = np.zeros((height, width), np.float32)
    top = int(rng.integers(height // 8, height - side - height // 8))
    left = int(rng.integers(width // 8, width - side - width // 8))
    canvas[top : top + side, left : left + side] = ink
    return _gray(_sensor_noise(_on_paper(canvas, paper, 35.0), rng, 3))


def phone_photo(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A whole 12-megapixel phone photo of a page (4000x3000) with the digit 200/140/100 px tall
    (a twentieth to a thirtieth of the frame) somewhere on it, in light falling off."""
    width, height = 4000, 3000
    side = [0, 280, 196, 140][strength]
    ink = _ink_field(digit, side)
    paper = np.linspace(225.0, 185.0, width, dtype=np.float32)[np.newaxis, :]
    paper = paper - np.linspace(0.0, 20.0, height, dtype=np.float32)[:, np.newaxis]
    canvas = np.zeros((height, width), np.float32)
    top = int(rng.integers(height // 8, height - side - height // 8))
    left = int(rng.integers(width // 8, width - side - width // 8))
    canvas[top : top + side, left : left + side] = ink
    values = paper * (1.0 - canvas) + 40.0 * canvas
    return _gray(np.clip(values + rng.normal(0, 2.0, (1, width)).astype(np.float32), 0, 255))


def underexposed(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A photo taken in dim light: paper at 60/30/22 grey levels, ink at a sixth of that."""
    paper = [0, 60.0, 30.0, 22.0][strength]
    return _gray(_on_paper(_ink_field(digit, SIDE), paper, paper / 6))


def marker(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A felt marker: the strokes grown by 6/10/14 px at 280 px (MNIST's are ~25 px wide)."""
    ink = _ink_field(digit, SIDE)
    radius = 2 + 4 * strength
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return _gray(_on_paper(cv2.dilate(ink, kernel), 248.0, 20.0))


def thin_pen(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """A fine pen: the strokes' middle lines (scikit-image's skeleton) drawn 9/5/3 px wide."""
    from skimage.morphology import skeletonize

    ink = _ink_field(digit, SIDE)
    skeleton = skeletonize(ink > 0.5).astype(np.uint8)
    width = [0, 9, 5, 3][strength]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width, width))
    pen = cv2.GaussianBlur(cv2.dilate(skeleton, kernel).astype(np.float32), (3, 3), 0)
    return _gray(_on_paper(pen, 248.0, 25.0))


def rotation(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """The sheet (or the camera) turned by 5/10/15 degrees either way."""
    angle = float(5 * strength * rng.choice([-1, 1]))
    image = plain(digit, strength, rng)
    return image.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=250)


def chalk(digit: np.ndarray, strength: int, rng: np.random.Generator) -> Image.Image:
    """Light strokes on a dark board (a blackboard, a screen in dark mode)."""
    ink = _ink_field(digit, SIDE)
    board = rng.uniform(20, 70)
    return _gray(_sensor_noise(_on_paper(ink, board, 235.0 - 20 * strength), rng, 4))


CONDITIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], Image.Image]] = {
    "plain": plain,
    "shading": shading,
    "shadow": shadow,
    "dark_surround": dark_surround,
    "stray_marks": stray_marks,
    "ruled_paper": ruled_paper,
    "grid_paper": grid_paper,
    "alpha_white": alpha_white,
    "alpha_black": alpha_black,
    "coloured_ink": coloured_ink,
    "faint_pencil": faint_pencil,
    "jpeg_noise": jpeg_noise,
    "blur": blur,
    "small_in_large": small_in_large,
    "phone_photo": phone_photo,
    "underexposed": underexposed,
    "marker": marker,
    "thin_pen": thin_pen,
    "rotation": rotation,
    "chalk": chalk,
}
#: conditions whose picture needs transparency: PNG only
ALPHA_CONDITIONS = frozenset({"alpha_white", "alpha_black"})


def formats_for(condition: str) -> tuple[str, ...]:
    """The encodings a condition is sent as."""
    return ("PNG",) if condition in ALPHA_CONDITIONS else ("PNG", "JPEG")


def render(
    digit: np.ndarray, condition: str, strength: int, rng: np.random.Generator
) -> Image.Image:
    """One MNIST digit (uint8 [784], ink high) as a picture under ``condition`` at ``strength``."""
    return CONDITIONS[condition](digit, strength, rng)


def encode(image: Image.Image, fmt: str, quality: int = 85) -> bytes:
    """PNG or JPEG bytes; JPEG flattens transparency onto white first."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        if image.mode in ("RGBA", "LA"):
            paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(paper, image.convert("RGBA"))
        image.convert("RGB" if image.mode != "L" else "L").save(buffer, "JPEG", quality=quality)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


# -- no digit at all -------------------------------------------------------------------------------


def _font(rng: np.random.Generator, size: int) -> ImageFont.FreeTypeFont:
    name = FONTS[int(rng.integers(len(FONTS)))]
    return ImageFont.truetype(str(FONT_DIR / name), size)


def _printed(text: str, rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (SIDE, SIDE), int(rng.integers(225, 255)))
    font = _font(rng, int(rng.integers(110, 200)) if len(text) == 1 else int(rng.integers(60, 90)))
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((0, 0), text, font=font)
    x = (SIDE - (box[2] - box[0])) / 2 - box[0] + rng.uniform(-15, 15)
    y = (SIDE - (box[3] - box[1])) / 2 - box[1] + rng.uniform(-15, 15)
    draw.text((x, y), text, fill=int(rng.integers(0, 60)), font=font)
    return image


def _scribble(rng: np.random.Generator) -> Image.Image:
    image = Image.new("L", (SIDE, SIDE), 248)
    draw = ImageDraw.Draw(image)
    points = [tuple(rng.uniform(30, SIDE - 30, 2)) for _ in range(int(rng.integers(8, 20)))]
    draw.line(points, fill=30, width=int(rng.integers(10, 26)), joint="curve")
    return image


def _noise(rng: np.random.Generator) -> Image.Image:
    scale = int(rng.choice([1, 4, 10, 28]))
    coarse = rng.integers(0, 256, (SIDE // scale + 1, SIDE // scale + 1)).astype(np.uint8)
    return Image.fromarray(coarse).resize((SIDE, SIDE), Image.Resampling.NEAREST)


def _texture(rng: np.random.Generator) -> Image.Image:
    rows, cols = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:  # stripes
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(12, 40)
        phase = (np.cos(angle) * cols + np.sin(angle) * rows) / period * 2 * math.pi
        values = 128 + 110 * np.sign(np.sin(phase))
    elif kind == 1:  # checkerboard
        period = int(rng.integers(15, 60))
        values = 40 + 180 * (((rows // period) + (cols // period)) % 2)
    elif kind == 2:  # wood-like rings
        cx, cy = rng.uniform(-SIDE, 2 * SIDE, 2)
        values = 128 + 100 * np.sin(np.hypot(cols - cx, rows - cy) / rng.uniform(4, 12))
    else:  # blotches
        blobs = rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32)
        values = cv2.GaussianBlur(blobs, (0, 0), rng.uniform(6, 20))
        values = 128 + 127 * values / (np.abs(values).max() + 1e-6)
    return _gray(np.clip(values, 0, 255))


def _blank_photo(rng: np.random.Generator) -> Image.Image:
    """A photo of an empty sheet on a desk: an edge, shading and noise, but nothing written."""
    desk = np.full((SIDE, SIDE), rng.uniform(30, 80))
    left, top = rng.integers(20, 120, 2)
    desk[top:, left:] = rng.uniform(200, 245)
    cols = np.arange(SIDE)[None, :]
    desk = desk * (1 - 0.25 * cols / SIDE)
    return _gray(_sensor_noise(desk, rng, 5))


def non_digit(kind: str, rng: np.random.Generator) -> Image.Image:
    """A picture that shows no digit: a printed letter, symbol or word, scribble, noise, texture."""
    if kind == "letter":
        return _printed(LETTERS[int(rng.integers(len(LETTERS)))], rng)
    if kind == "symbol":
        return _printed(SYMBOLS[int(rng.integers(len(SYMBOLS)))], rng)
    if kind == "word":
        word = "".join(rng.choice(list(string.ascii_lowercase), int(rng.integers(3, 6))))
        return _printed(word, rng)
    if kind == "scribble":
        return _scribble(rng)
    if kind == "noise":
        return _noise(rng)
    if kind == "texture":
        return _texture(rng)
    if kind == "blank_photo":
        return _blank_photo(rng)
    raise ValueError(f"unknown kind {kind!r}; one of {NON_DIGIT_KINDS}")


def non_digits(count: int, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """``count`` non-digit pictures, the kinds in turn, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [
        (kind, non_digit(kind, rng))
        for kind in (NON_DIGIT_KINDS[i % len(NON_DIGIT_KINDS)] for i in range(count))
    ]
