"""Turn a real PNG or JPEG of a digit into the MNIST-like 28x28 float32 input the model expects.

The steps follow how MNIST itself was made (LeCun et al.): grayscale, ink high, crop to the ink,
fit into a 20x20 box keeping the aspect ratio (antialiased), then translate so the centre of mass
sits at the centre of the 28x28 field. Only numpy and Pillow are used, so the serving image stays
slim.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage
from service.model.contract import IMAGE_SIDE, N_PIXELS

#: the digit is scaled to fit this box inside the 28x28 field, as in MNIST
DIGIT_BOX = 20
#: large photos are reduced to this longest side before analysis; a digit needs far less
WORKING_SIDE = 512
#: an image whose ink and background differ by less than this (of 255) shows no digit
MIN_CONTRAST = 32.0
EXIF_ORIENTATION = 0x0112

# Magic numbers of formats people commonly send by mistake, for a message that names them.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
)

# Everything Pillow raises for broken or hostile input; anything else is our bug and must surface.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised, not warned, where warnings are errors (pytest)
)


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may be: encoded size, decoded pixel count and formats."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    formats: tuple[str, ...] = ("PNG", "JPEG")


def preprocess_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode a PNG/JPEG of one digit into float32 [784] in [0, 1], ink high; else InvalidImage."""
    image = _decode(data, limits)
    gray = _grayscale(image)
    ink = _ink_high(gray)
    return _mnist_field(_remove_background(ink)).reshape(N_PIXELS)


def encode_png_base64(pixels: np.ndarray) -> str:
    """Encode a float32 [784] image in [0, 1] as a base64 (not data-URL) 28x28 grayscale PNG."""
    values = np.asarray(pixels, dtype=np.float32)
    if values.size != N_PIXELS:
        raise ValueError(f"expected {N_PIXELS} pixels, got {values.size}")
    raw = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(raw.reshape(IMAGE_SIDE, IMAGE_SIDE)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Open within the limits, checking the pixel count from the header before any decoding."""
    if not data:
        raise InvalidImage("the image is empty")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    accepted = " or ".join(limits.formats)
    try:
        # formats= keeps every other decoder (and its attack surface) out of reach
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{_describe_unaccepted(data)}; send {accepted}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own header check fired first (far beyond our limit)
        raise InvalidImage(
            f"the image claims too many pixels; the limit is {limits.max_pixels} pixels"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"the image cannot be decoded ({_reason(exc)})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is {width}x{height} pixels; it has no pixels")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )
    try:
        if image.format == "JPEG":
            # let libjpeg decode at 1/2..1/8 scale: a phone photo then costs a fraction
            image.draft(image.mode, (min(width, WORKING_SIDE), min(height, WORKING_SIDE)))
        image.load()
        # photos carry their rotation in EXIF; apply it so the digit stands upright (only then:
        # exif_transpose copies the whole image even when there is nothing to turn)
        oriented: Image.Image = image
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            oriented = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"the image cannot be decoded ({_reason(exc)})") from exc
    if max(oriented.size) > WORKING_SIDE:
        oriented = _reduced(oriented)
    return oriented


def _reduced(image: Image.Image) -> Image.Image:
    """The image shrunk (antialiased) so its longest side is WORKING_SIDE."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # keeps all 16 bits, and "I" can be resampled
    elif image.mode not in ("L", "RGB", "RGBA", "LA", "F", "I"):
        image = image.convert("RGBA")
    scale = WORKING_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap: shrink by whole factors first (fast), then resample the rest exactly
    return image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def _grayscale(image: Image.Image) -> np.ndarray:
    """Float32 luminance in 0..255; transparency composited on white, 16-bit scaled not clipped."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs come as I;16 or I; their full scale is 65535, never clip to 8 bits
        full_scale = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
        return (np.clip(values, 0, None) * (255.0 / full_scale)).astype(np.float32)
    if mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 255)
    if mode == "L" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.float32)
    if mode in ("1", "RGB", "CMYK", "YCbCr") and "transparency" not in image.info:
        return np.asarray(image.convert("L"), dtype=np.float32)
    # RGBA, LA, PA, P (maybe with a transparent index), L/RGB with tRNS: composite on white,
    # because a transparent background means "paper", whatever colour the hidden pixels have
    rgba = image.convert("RGBA")
    paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(paper, rgba).convert("L"), dtype=np.float32)


def _ink_high(gray: np.ndarray) -> np.ndarray:
    """Invert a dark-on-light image so ink is high, judging the background by the border."""
    low, high = float(gray.min()), float(gray.max())
    if high - low < MIN_CONTRAST:
        raise InvalidImage("the image shows no digit: it is blank (no ink)")
    band = max(1, min(gray.shape) // 20)
    border = np.concatenate(
        [
            gray[:band].ravel(),
            gray[-band:].ravel(),
            gray[:, :band].ravel(),
            gray[:, -band:].ravel(),
        ]
    )
    # the border is mostly background: light border -> dark ink on light paper -> invert
    if float(np.median(border)) > (low + high) / 2:
        return 255.0 - gray
    return gray


def _otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold: the level that best separates background from ink."""
    histogram = np.bincount(
        np.rint(np.clip(values, 0, 255)).astype(np.uint8).ravel(), minlength=256
    )
    weights = histogram.astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    below = np.cumsum(weights)
    below_sum = np.cumsum(weights * levels)
    total, total_sum = below[-1], below_sum[-1]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_below = below_sum / below
        mean_above = (total_sum - below_sum) / above
        between = below * above * (mean_below - mean_above) ** 2
    between = np.nan_to_num(between[:-1], nan=0.0)
    # empty levels between two peaks tie; the middle of the tie is the fairest split
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return (float(best[0]) + float(best[-1])) / 2 + 0.5


def _remove_background(ink: np.ndarray) -> np.ndarray:
    """Ink scaled to 0..1 with the paper (and its uneven shading) set to 0."""
    threshold = _otsu_threshold(ink)
    strokes = ink > threshold
    if not strokes.any():
        raise InvalidImage("the image shows no digit: no ink found")
    background = float(np.median(ink[~strokes])) if (~strokes).any() else 0.0
    foreground = float(np.percentile(ink[strokes], 90))
    if foreground - background < MIN_CONTRAST:
        raise InvalidImage("the image shows no digit: the ink is too faint")
    # keep the antialiased rim just outside the strokes; shading far from strokes is paper
    scaled = np.clip((ink - background) / (foreground - background), 0.0, 1.0)
    weighted: np.ndarray = scaled * _dilated(strokes, radius=max(1, min(ink.shape) // 64))
    return weighted


def _dilated(mask: np.ndarray, radius: int) -> np.ndarray:
    """The mask grown by ``radius`` pixels (a square), as a separable running maximum."""
    grown = mask.copy()
    for axis in (0, 1):
        source = grown.copy()
        length = source.shape[axis]
        for shift in range(1, min(radius, length - 1) + 1):
            ahead = [slice(None), slice(None)]
            behind = [slice(None), slice(None)]
            ahead[axis], behind[axis] = slice(shift, None), slice(None, -shift)
            grown[tuple(behind)] |= source[tuple(ahead)]
            grown[tuple(ahead)] |= source[tuple(behind)]
    return grown


def _mnist_field(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit into 20x20 keeping the aspect, centre by mass in 28x28."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    patch = np.asarray(
        Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS), dtype=np.float32
    )
    patch = np.clip(patch, 0.0, 1.0)  # Lanczos rings slightly below 0 and above 1
    mass = float(patch.sum())
    if mass <= 0.0:
        raise InvalidImage("the image shows no digit: no ink left after scaling")
    # MNIST's centres of mass sit at index 14.0 (measured on the test set)
    centre_row = float((patch.sum(axis=1) * np.arange(patch.shape[0])).sum()) / mass
    centre_col = float((patch.sum(axis=0) * np.arange(patch.shape[1])).sum()) / mass
    top = _clamped(round(IMAGE_SIDE / 2 - centre_row), IMAGE_SIDE - patch.shape[0])
    left = _clamped(round(IMAGE_SIDE / 2 - centre_col), IMAGE_SIDE - patch.shape[1])
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    field[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return field


def _clamped(offset: int, largest: int) -> int:
    """An offset kept inside the field, so an off-balance digit is not cut."""
    return min(max(offset, 0), largest)


def _describe_unaccepted(data: bytes) -> str:
    """Name a rejected format when it is a known one, so the caller knows what was wrong."""
    head = data[:16].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return f"{name} images are not accepted"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP images are not accepted"
    return "the data is not a PNG or JPEG image"


def _reason(exc: BaseException) -> str:
    """A short, safe description of a decoder failure."""
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
