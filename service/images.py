"""Turn a real PNG or JPEG of a digit into the MNIST-like 28x28 float32 input the model expects.

The steps follow how MNIST itself was made (LeCun et al.): grayscale, ink high, crop to the ink,
fit into a 20x20 box keeping the aspect ratio (antialiased), then translate so the centre of mass
sits at the centre of the 28x28 field. Pillow reads the header and decodes (libspng, through
pyspng, decodes plain 8-bit PNGs); the analysis runs on uint8 arrays with OpenCV's headless build
(one thread: ``use_one_thread``), at most 200 px on the longest side, first at half that size.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import pyspng
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage
from service.model.contract import IMAGE_SIDE, N_PIXELS

#: the digit is scaled to fit this box inside the 28x28 field, as in MNIST
DIGIT_BOX = 20
#: pictures are reduced to this longest side before analysis: MNIST's digits are 20 px tall
WORKING_SIDE = 160
#: larger pictures are reduced to twice WORKING_SIDE while decoded (by whole factors first,
#: little memory); up to this side, OpenCV's area averaging reduces the analysed channels
LARGE_SIDE = 4 * WORKING_SIDE
#: the analysis size: pictures are reduced by a whole factor to at most this longest side
ANALYSIS_SIDE = 1.25 * WORKING_SIDE
#: a digit still under MIN_DIGIT_SIDE at the analysis size is read again with up to this many
#: pixels on the picture's longest side (a small digit in a large photo)
FINE_SIDE = 2.5 * WORKING_SIDE
#: a large picture whose digit is still under DIGIT_BOX pixels at FINE_SIDE (or not found) is
#: decoded again reduced to half this side, and analysed at up to ZOOM_ANALYSIS_SIDE: a digit a
#: hundredth of a phone photo's height is then read
ZOOM_SIDE = 8 * LARGE_SIDE
ZOOM_ANALYSIS_SIDE = 5 * ANALYSIS_SIDE
#: ...and the zoomed reading is kept only when its digit spans at least this many pixels there
MIN_ZOOMED_SIDE = 12
#: the key under which a reduced picture's ``info`` keeps the size it was decoded from
_REDUCED_FROM = "mnist_service_reduced_from"
#: smaller pictures are enlarged to about this side first, so strokes span several pixels
MIN_WORKING_SIDE = 96
#: the paper's brightness is estimated on a thumbnail of about this longest side
BACKGROUND_SIDE = 64
#: pictures this many times larger are read at half the analysis size first...
MIN_HALF_SIDE = 48
#: ...and kept when the digit found there is at least this tall (or wide)
MIN_DIGIT_SIDE = 40
#: the sheet is found on a thumbnail of about this side...
COARSE_SIDE = 32
#: ...and the local median (polarity, desk) taken on one of about this side
MEDIAN_SIDE = 32
#: ...with a closing as wide as this share of the thumbnail (wider than any stroke)
BACKGROUND_KERNEL = 0.25
#: a surround darker than this share of the paper's brightness is measured against the paper
DARK_SURROUND_FRACTION = 0.4
#: a dark region is a desk when it runs along the picture's edge for this share of its side
DESK_CONTACT = 0.5
#: an image whose ink and background differ by less than this (of 255) shows no digit
MIN_CONTRAST = 32
#: a picture whose lightest pixel is under this level is underexposed: brightened by up to
#: MAX_EXPOSURE_GAIN before the analysis (``_exposed``)
EXPOSED_LEVEL = 128
MAX_EXPOSURE_GAIN = 8.0
#: ...when, smoothed over 5x5 pixels, it spans at least this many grey levels (more than noise)
DIM_MIN_SPREAD = 8
#: ink (relative darkness against the local paper) below this is paper; strokes reach beyond
MIN_INK = 0.12
MIN_INK_LEVEL = 0.16
#: straight lines longer than this share of the picture are ruling, unless they are all there is
LINE_LENGTH = 0.75
LINES_ONLY_FRACTION = 0.2
#: components touching the picture's edge count this much when choosing the digit
EDGE_WEIGHT = 0.1
#: a piece with less than this share of the digit's ink is a speck
MIN_PIECE_SHARE = 0.03
#: MNIST's stroke width in pixels of the 20x20 box, 5th..95th percentile over training digits
STROKE_WIDTH_RANGE = (2.3, 4.3)
#: the polarity whose departures from the local median are this many times larger wins outright
POLARITY_MARGIN = 3.0
#: a bright region this large and this compact, with a dark surround, is a sheet of paper
SHEET_AREA = 0.2
SHEET_FILL = 0.75
#: strokes covering more of their bounding box than this may be paper read as ink: check both
#: (unless the box is a single bar at most BAR_WIDTHS stroke widths across: a "1" fills its box)
MAX_FILL = 0.8
BAR_WIDTHS = 2.0
_BYTES = np.arange(256, dtype=np.float32)
_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
_SQUARE = np.ones((3, 3), np.uint8)
#: ruled lines are at most this many pixels wide in the analysed picture
RULE_WIDTH = 4
_THICK_DOWN = np.ones((RULE_WIDTH + 1, 1), np.uint8)
_THICK_ACROSS = np.ones((1, RULE_WIDTH + 1), np.uint8)
#: reaches across a removed ruled line (up to 2 px wide, grown by a pixel each side)
_BRIDGE = np.ones((5, 5), np.uint8)
EXIF_ORIENTATION = 0x0112

#: one reading of a picture: uint8 darkness [H, W] (ink dark), its thumbnail, and the thumbnail's
#: median over a window a third of its side
_Reading = tuple[np.ndarray, np.ndarray, np.ndarray]

# Magic numbers of formats people commonly send by mistake, for a message that names them.
_KNOWN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
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
    #: GIF and TIFF: the first frame (or page)
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def use_one_thread() -> None:
    """OpenCV's own threads cost more than they save on pictures this small (call at startup)."""
    cv2.setNumThreads(1)


def preprocess_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode a picture of one digit into float32 [784] in [0, 1], ink high, as MNIST was made.

    A picture larger than LARGE_SIDE is decoded reduced (quick); when its digit comes out under
    DIGIT_BOX pixels even at FINE_SIDE, or no digit is found, it is decoded again at up to
    ZOOM_SIDE and read at ZOOM_ANALYSIS_SIDE (a small digit on a large photo of a page: its
    strokes are thinner than a pixel of the reduced picture). The zoomed reading is kept when
    it finds a digit.

    Raises InvalidImage when the bytes are no accepted image, break the limits, or show no digit.
    """
    image = _decode(data, limits)
    if not _decoded_reduced(image):
        return _reading(image)[0]
    try:
        field, digit_side = _reading(image)
    except InvalidImage as problem:
        try:
            return _zoomed_reading(image, data, limits)
        except InvalidImage:
            raise problem from None
    if digit_side >= DIGIT_BOX:  # the digit kept the detail its 20x20 box can show
        return field
    with contextlib.suppress(InvalidImage):  # no digit when zoomed: the first reading stands
        field = _zoomed_reading(image, data, limits)
    return field


def _zoomed_reading(
    image: Image.Image | np.ndarray, data: bytes, limits: ImageLimits
) -> np.ndarray:
    """The field of a large picture read at ZOOM_ANALYSIS_SIDE (Pillow's pictures decoded again
    at up to ZOOM_SIDE; libspng's arrays are whole already)."""
    whole = image if isinstance(image, np.ndarray) else _decode(data, limits, ZOOM_SIDE)
    field, digit_side = _reading(whole, ZOOM_ANALYSIS_SIDE)
    if digit_side < MIN_ZOOMED_SIDE:  # a speck of dust on a blank page, not a digit
        raise InvalidImage("the image shows no digit: only specks")
    return field


def preprocess_picture(image: Image.Image | np.ndarray) -> np.ndarray:
    """An already decoded picture (any Pillow mode, or uint8 [H, W], [H, W, 3] or [H, W, 4] with
    alpha last) as the float32 [784] MNIST-like field.

    The picture is read at half the analysis size first (a quarter of the pixels to handle) and
    again at the full analysis size only when the digit found there is under MIN_DIGIT_SIDE
    pixels: a digit that large keeps all the detail the 20x20 box can show.
    """
    return _reading(image)[0]


def _decoded_reduced(image: Image.Image | np.ndarray) -> bool:
    """Whether ``_decode`` gave this picture reduced (its longest side was over LARGE_SIDE)."""
    if isinstance(image, np.ndarray):  # libspng's PNGs come whole: ``_array_channels`` reduces
        return bool(max(image.shape[:2]) > LARGE_SIDE)
    return bool(image.info.get(_REDUCED_FROM))


def _reading(
    image: Image.Image | np.ndarray, side: float = ANALYSIS_SIDE
) -> tuple[np.ndarray, int]:
    """``preprocess_picture`` analysed at up to ``side`` pixels on the longest side (FINE_SIDE
    scaled alike), and the longest side in pixels of the digit's box where it was read."""
    fine_side = side * FINE_SIDE / ANALYSIS_SIDE
    dark, light = _exposed(*_analysis_size(*_channels(image, side), side))
    if min(dark.shape) >= 2 * MIN_HALF_SIDE:
        half_dark = _halved(dark)
        half = (half_dark, half_dark) if light is dark else (half_dark, _halved(light))
        try:
            ink, strokes, width = _digit_reading(*half)
        except InvalidImage:
            pass  # read again at the full size, which says why if it is no digit
        else:
            _, _, box_width, box_height = cv2.boundingRect(strokes)
            if max(box_width, box_height) >= MIN_DIGIT_SIDE:
                field = _mnist_field(_normalised_strokes(ink, strokes, width))
                return field.reshape(N_PIXELS), 2 * max(box_width, box_height)
    ink, strokes, width = _digit_reading(dark, light)
    _, _, box_width, box_height = cv2.boundingRect(strokes)
    if max(box_width, box_height) < MIN_DIGIT_SIDE:
        fine_dark, fine_light = _exposed(*_analysis_size(*_channels(image, fine_side), fine_side))
        if fine_dark.shape[0] > dark.shape[0]:
            # when no digit is found there, the reading at the analysis size stands
            with contextlib.suppress(InvalidImage):
                ink, strokes, width = _digit_reading(fine_dark, fine_light)
                _, _, box_width, box_height = cv2.boundingRect(strokes)
    field = _mnist_field(_normalised_strokes(ink, strokes, width))
    return field.reshape(N_PIXELS), max(box_width, box_height)


def _halved(values: np.ndarray) -> np.ndarray:
    """uint8 [H, W] halved, each 2x2 block averaged (OpenCV's quickest area averaging)."""
    height, width = values.shape
    size = (width // 2, height // 2)
    return np.asarray(cv2.resize(values[: height // 2 * 2, : width // 2 * 2], size,
                                 interpolation=cv2.INTER_AREA))  # fmt: skip


def _digit_reading(dark: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The likelier reading of the two channels: its ink (uint8 [H, W]), the digit's strokes
    (uint8 0/1 [H, W]) and their width in pixels of the 20x20 box."""
    likelier, other, decisive = _darkness(dark, light)
    if decisive:
        ink = _ink(*likelier)
        try:
            strokes = _digit_strokes(ink)
        except InvalidImage:
            decisive = False
        else:
            fill, width = _fill_and_width(strokes)
            decisive = fill <= MAX_FILL and _plausible_width(width)
    if not decisive:
        return _likelier_digit([likelier, other()])
    return ink, strokes, width


def _fill_and_width(strokes: np.ndarray) -> tuple[float, float]:
    """The share of the strokes' bounding box (uint8 0/1 mask) that they cover, and their width
    in pixels of the 20x20 box the digit will fill (``stroke_width``).

    A box at most BAR_WIDTHS stroke widths across holds a single bar (an upright "1", however
    thick): it fills its box as paper read as ink does, but it is a stroke, so its fill counts
    as 0 (paper read as ink is far wider than its own strokes would be).
    """
    _, _, width, height = cv2.boundingRect(strokes)
    area = cv2.countNonZero(strokes)
    pixels = _width(strokes, area)
    fill = 0.0 if min(width, height) <= BAR_WIDTHS * pixels else area / float(width * height)
    return fill, pixels * DIGIT_BOX / max(width, height)


def _plausible_width(width: float) -> bool:
    low, high = STROKE_WIDTH_RANGE
    return low / 2 <= width <= high * 2


def _likelier_digit(candidates: list[_Reading]) -> tuple[np.ndarray, np.ndarray, float]:
    """Of two readings of a picture (the likelier first), the first whose strokes look like a
    digit's (they fill at most MAX_FILL of their box and are plausibly wide), unless the other's
    do too and enclose them; else the one whose strokes fill less of their box: read the wrong
    way round, the "ink" is the paper.

    A digit in thick marker carries so much ink that the paper inside a loop (a 0's, a 9's)
    departs from its surroundings as much as the strokes do; read the wrong way round, that
    hole is a plausible "digit" (the paper around the strokes is then taken for a desk). The
    hole lies inside the digit's box, never the other way round: of two plausible readings,
    one whose strokes' box holds the other's is the digit.
    """
    readings = []
    plausible: tuple[np.ndarray, np.ndarray, float] | None = None
    problem: InvalidImage | None = None
    for reading in candidates:
        ink = _ink(*reading)
        try:
            strokes = _digit_strokes(ink)
        except InvalidImage as exc:
            problem = problem or exc
            continue
        fill, width = _fill_and_width(strokes)
        if fill <= MAX_FILL and _plausible_width(width):
            if plausible is None:
                plausible = ink, strokes, width
                continue
            return (ink, strokes, width) if _encloses(strokes, plausible[1]) else plausible
        readings.append((fill, ink, strokes, width))
    if plausible is not None:
        return plausible
    if not readings:
        assert problem is not None
        raise problem
    _, ink, strokes, width = min(readings, key=lambda reading: reading[0])
    return ink, strokes, width


def _encloses(outer: np.ndarray, inner: np.ndarray) -> bool:
    """Whether the bounding box of mask ``outer`` holds that of mask ``inner`` (uint8 0/1
    masks of one picture) and is larger."""
    left, top, width, height = cv2.boundingRect(outer)
    x, y, w, h = cv2.boundingRect(inner)
    inside = left <= x and top <= y and x + w <= left + width and y + h <= top + height
    return inside and width * height > w * h


def encode_png_base64(pixels: np.ndarray) -> str:
    """Encode a float32 [784] image in [0, 1] as a base64 (not data-URL) 28x28 grayscale PNG."""
    values = np.asarray(pixels, dtype=np.float32)
    if values.size != N_PIXELS:
        raise ValueError(f"expected {N_PIXELS} pixels, got {values.size}")
    raw = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(raw.reshape(IMAGE_SIDE, IMAGE_SIDE)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode(
    data: bytes, limits: ImageLimits, largest: int = LARGE_SIDE
) -> Image.Image | np.ndarray:
    """Open within the limits, checking the pixel count from the header before any decoding.
    A plain PNG (``_plain_png``) comes back as OpenCV's uint8 array, anything else as Pillow's
    image, reduced (``_reduced``) to half ``largest`` on its longest side when larger than
    ``largest`` (its ``info`` then names the size it had)."""
    if not data:
        raise InvalidImage("the image is empty")
    if len(data) > limits.max_bytes:
        raise InvalidImage(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}")
    *others, last = limits.formats
    accepted = f"{', '.join(others)} or {last}" if others else last
    try:
        # formats= keeps every other decoder (and its attack surface) out of reach
        image = Image.open(io.BytesIO(data), formats=list(limits.formats))
    except UnidentifiedImageError as exc:
        name = signature_format(data)
        if name in limits.formats:  # an accepted format whose header its decoder refused
            reason = _header_error(data, name)
            raise InvalidImage(f"the {name} image cannot be decoded ({reason})") from exc
        raise InvalidImage(f"{_describe_unaccepted(data)}; send {accepted}") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own header check fired first (far beyond our limit): its true size
        size = header_size(data, limits.formats)
        if size is not None:
            check_size(*size, limits)
        raise InvalidImage(
            f"the image claims too many pixels; the limit is {limits.max_pixels} pixels"
        ) from exc
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"the image cannot be decoded ({_reason(exc)})") from exc
    width, height = image.size
    check_size(width, height, limits)
    if image.format == "PNG":
        damage = _png_damage(data)
        if damage is not None:
            raise InvalidImage(f"the image cannot be decoded ({damage})")
    if _plain_png(image, data):
        try:
            pixels = pyspng.load(data, image.mode)
        except RuntimeError:  # bytes libspng refuses: Pillow decodes them, or names the fault
            pass
        else:
            if pixels.dtype == np.uint8 and pixels.shape[:2] == (height, width):
                return np.asarray(pixels)
    try:
        if image.format == "JPEG":
            # let libjpeg decode at 1/2..1/8 scale: a phone photo then costs a fraction
            side = largest // 2
            image.draft(image.mode, (min(width, side), min(height, side)))
        image.load()
        # photos carry their rotation in EXIF; apply it so the digit stands upright (only then:
        # exif_transpose copies the whole image even when there is nothing to turn)
        oriented: Image.Image = image
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            oriented = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"the image cannot be decoded ({_reason(exc)})") from exc
    if max(oriented.size) > largest:
        oriented = _reduced(oriented, largest // 2)
    if max(oriented.size) < max(width, height):  # reduced here, or by libjpeg's draft
        oriented.info[_REDUCED_FROM] = (width, height)
    return oriented


def _plain_png(image: Image.Image, data: bytes) -> bool:
    """Whether libspng may decode this PNG in Pillow's place: 8-bit grey, RGB or RGBA, one frame,
    no palette, no transparent colour, no EXIF (which might turn it). libspng (through pyspng)
    decodes into a numpy array in 0.6 of the time Pillow takes to decode, and Pillow's copy into
    numpy costs a third more again."""
    return (
        image.format == "PNG"
        and image.mode in ("L", "RGB", "RGBA")
        and "transparency" not in image.info
        and not getattr(image, "is_animated", False)
        and b"eXIf" not in data
    )


def _png_damage(data: bytes) -> str | None:
    """Why this PNG is damaged (a chunk that fails its CRC, a chunk cut short), or None: Pillow's
    ``verify``, about 0.13 ms for a 280x280 photo. Neither decoder checks every chunk: libspng,
    as pyspng runs it, skips the CRCs, and Pillow's decoder those of the second and later IDAT
    chunks, so damaged bytes would be read as wrong pixels without a word."""
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as exc:  # Pillow raises SyntaxError, OSError, struct.error... for damage
        return _reason(exc)
    return None


def _reduced(image: Image.Image, side: int = 2 * WORKING_SIDE) -> Image.Image:
    """The image shrunk (antialiased) so its longest side is ``side``."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # keeps all 16 bits, and "I" can be resampled
    elif image.mode not in ("L", "RGB", "RGBA", "LA", "F", "I"):
        image = image.convert("RGBA")
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap: shrink by whole factors first (fast), then resample the rest exactly
    return image.resize(size, Image.Resampling.BOX, reducing_gap=2.0)


def _channels(
    image: Image.Image | np.ndarray, largest: float = ANALYSIS_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (darkest channel, lightest channel) of the picture, each [H, W].

    Dark ink of any colour is dark in its darkest channel, light ink (chalk) light in its lightest
    one. Transparency is composited on white and on black, and the composite that shows more
    contrast is kept: ink may be carried by the colour (black on transparent) or only by the alpha
    channel (white on transparent).
    """
    if isinstance(image, np.ndarray):
        return _array_channels(image, largest)
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image.convert("I") if mode.startswith("I;16") else image, np.float64)
        values = np.where(np.isfinite(values), values, 0.0)  # NaN and infinities: no light
        gray = np.clip(values * (255.0 / _full_scale(values, mode)), 0, 255).astype(np.uint8)
        return gray, gray
    has_alpha = "A" in mode or "transparency" in image.info
    if not has_alpha:
        # reduced before the channels are compared: a quarter of the pixels or fewer to handle
        if mode in ("L", "1"):
            gray = _block_reduced(np.asarray(image if mode == "L" else image.convert("L")), largest)
            return gray, gray
        rgb = np.asarray(image if mode == "RGB" else image.convert("RGB"))
        return _darkest_lightest(_block_reduced(rgb, largest))
    return _composited(np.asarray(image.convert("RGBA")))


def _full_scale(values: np.ndarray, mode: str) -> float:
    """The value that stands for white in a picture of 16-bit or float samples (Pillow's modes
    I;16*, I, F): 1.0 for floats within 0..1 (the usual convention of float images); else the
    smallest common sample depth (8, 10, 12 or 16 bits) that holds the largest value, or that
    value itself beyond 16 bits. A 12-bit scan stored in a 16-bit PNG keeps its contrast."""
    top = float(values.max(initial=0.0))
    if mode == "F" and 0.0 < top <= 1.0:
        return 1.0
    for bits in (8, 10, 12, 16):
        if top <= 2**bits - 1:
            return float(2**bits - 1)
    return top


def _array_channels(pixels: np.ndarray, largest: float) -> tuple[np.ndarray, np.ndarray]:
    """``_channels`` of a picture OpenCV decoded: uint8 [H, W], [H, W, 3] or [H, W, 4] (alpha
    last; the colour channels' order does not matter here)."""
    if max(pixels.shape[:2]) > LARGE_SIDE:
        # as Pillow's reduction of a large picture (``_reduced``) does (when zoomed, to half
        # ZOOM_SIDE, as ``_decode(..., ZOOM_SIDE)``)
        height, width = pixels.shape[:2]
        target = ZOOM_SIDE // 2 if largest > FINE_SIDE else 2 * WORKING_SIDE
        scale = min(target / max(height, width), 1.0)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != (width, height):
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    if pixels.ndim == 2:
        gray = _block_reduced(pixels, largest)
        return gray, gray
    if pixels.shape[2] == 4:
        if cv2.minMaxLoc(pixels[..., 3])[0] < 255:
            return _composited(pixels)
        pixels = pixels[..., :3]  # opaque everywhere: the colour alone
    return _darkest_lightest(_block_reduced(np.ascontiguousarray(pixels), largest))


def _composited(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_channels`` of uint8 [H, W, 4] (alpha last): composited on white and on black, the one
    with more contrast kept."""
    rgba = pixels.astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    on_black = rgba[..., :3] * alpha
    on_white = on_black + 255.0 * (1.0 - alpha)
    chosen = max(on_white, on_black, key=lambda rgb: float(rgb.mean(axis=2).std()))
    return _darkest_lightest(np.rint(chosen).astype(np.uint8))


def _darkest_lightest(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W] darkest and lightest channel of uint8 [H, W, 3] (with OpenCV: numpy's
    reduction over the last axis is several times slower)."""
    red, green, blue = cv2.split(rgb)
    if cv2.norm(red, green, cv2.NORM_INF) == 0 and cv2.norm(green, blue, cv2.NORM_INF) == 0:
        return red, red  # grey: one channel, analysed once
    return cv2.min(cv2.min(red, green), blue), cv2.max(cv2.max(red, green), blue)


def _block_reduced(values: np.ndarray, largest: float = ANALYSIS_SIDE) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] reduced by a whole factor, so that the longest side is at most
    ``largest``: each k x k block averaged (OpenCV's fast path for area averaging; a
    fractional factor costs ten times more). The pixels beyond the last whole block are dropped."""
    height, width = values.shape[:2]
    factor = math.ceil(max(height, width) / largest)
    if factor <= 1:
        return values
    rows, cols = max(factor, height // factor * factor), max(factor, width // factor * factor)
    size = (cols // factor, rows // factor)
    return np.asarray(cv2.resize(values[:rows, :cols], size, interpolation=cv2.INTER_AREA))


def _exposed(dark: np.ndarray, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both uint8 [H, W] channels brightened when even the lightest pixel of the lightest channel
    is under EXPOSED_LEVEL (an underexposed photo): multiplied by 255 over that pixel, at most
    MAX_EXPOSURE_GAIN (three stops), as an automatic exposure would. The analysis thresholds
    (MIN_CONTRAST, the polarity margin) are grey levels of a picture exposed for paper: without
    this, a digit photographed in dim light reads as blank."""
    brightest = cv2.minMaxLoc(light)[1]
    if brightest >= EXPOSED_LEVEL or brightest <= 0:
        return dark, light
    # only a picture that shows something beyond its noise: a dim blank one (sensor noise, a few
    # levels) stays blank, as the brightened noise would pass for ink
    smooth = cv2.GaussianBlur(dark, (5, 5), 0)
    if _spread(smooth) < DIM_MIN_SPREAD and (
        light is dark or _spread(cv2.GaussianBlur(light, (5, 5), 0)) < DIM_MIN_SPREAD
    ):
        return dark, light
    gain = min(255.0 / brightest, MAX_EXPOSURE_GAIN)
    bright = cv2.convertScaleAbs(dark, alpha=gain)
    return (bright, bright) if light is dark else (bright, cv2.convertScaleAbs(light, alpha=gain))


def _analysis_size(
    dark: np.ndarray, light: np.ndarray, largest: float = ANALYSIS_SIDE
) -> tuple[np.ndarray, np.ndarray]:
    """Both channels at the analysis size: reduced by a whole factor (``_block_reduced``);
    tiny pictures enlarged (each pixel repeated) so strokes span several pixels."""
    height, width = dark.shape
    if max(height, width) > largest:
        reduced = _block_reduced(dark, largest)
        return (reduced, reduced) if light is dark else (reduced, _block_reduced(light, largest))
    if max(height, width) >= MIN_WORKING_SIDE:
        return dark, light
    factor = max(1, min(math.ceil(MIN_WORKING_SIDE / max(height, width)), 64))
    size = (width * factor, height * factor)
    # whole pixels repeated: area averaging back down to the 20x20 box then gives MNIST-sized
    # inputs back almost unchanged (a bilinear enlargement would blur them on the way)
    enlarged = cv2.resize(dark, size, interpolation=cv2.INTER_NEAREST)
    if light is dark:
        return enlarged, enlarged
    return enlarged, cv2.resize(light, size, interpolation=cv2.INTER_NEAREST)


def _local_median(small: np.ndarray) -> np.ndarray:
    """uint8, the shape of ``small``: the median over a window a third of the picture wide.

    The median is taken on a coarser thumbnail (about MEDIAN_SIDE on its longest side) and
    enlarged bilinearly: a median this wide is smooth anyway, and OpenCV's large-window median
    costs per pixel about as much as the rest of the analysis together.
    """
    coarse = _thumbnail(small, MEDIAN_SIDE)
    median = cv2.medianBlur(coarse, _odd(min(coarse.shape) / 3))
    if median.shape == small.shape:
        return median
    height, width = small.shape
    return cv2.resize(median, (width, height), interpolation=cv2.INTER_LINEAR)


def _thumbnail(values: np.ndarray, side: int = 0) -> np.ndarray:
    """The picture reduced by a whole factor, averaging k x k blocks, to about ``side`` (by
    default BACKGROUND_SIDE) on its longest side (the pixels beyond the last whole block
    dropped)."""
    height, width = values.shape
    factor = round(max(height, width) / (side or BACKGROUND_SIDE))
    if factor <= 1:
        return values
    rows, cols = max(factor, height // factor * factor), max(factor, width // factor * factor)
    size = (cols // factor, rows // factor)
    return np.asarray(cv2.resize(values[:rows, :cols], size, interpolation=cv2.INTER_AREA))


def _spread(values: np.ndarray) -> float:
    """The brightest minus the darkest value."""
    low, high, _, _ = cv2.minMaxLoc(values)
    return float(high - low)


def _scalar(value: float) -> np.ndarray:
    """A value for OpenCV's arithmetic on a one-channel image (a 1x1 array is taken as a
    scalar)."""
    return np.full((1, 1), value, dtype=np.float64)


def _odd(value: float) -> int:
    return max(3, int(value) // 2 * 2 + 1)


def _darkness(dark: np.ndarray, light: np.ndarray) -> tuple[_Reading, Callable[[], _Reading], bool]:
    """Two readings, each uint8 [H, W] with the ink dark and the paper light, with its thumbnail
    and the thumbnail's local median: the likelier, the other (made when called), and whether
    the thumbnail decided it clearly.

    A photo of a sheet on a darker desk is first cropped to the sheet (``_on_the_sheet``). The
    polarity is then decided around the strokes, not from the image border: each pixel of a
    thumbnail is compared with the median of its neighbourhood (a window a third of the picture
    wide, so paper or board dominates it), and whichever side departs more from its
    surroundings, darker or lighter, is the ink. When the call is close, or the strokes found
    fill most of their box (paper read as ink), both readings are tried (``_likelier_digit``).
    """
    if _spread(dark) < MIN_CONTRAST and _spread(light) < MIN_CONTRAST:
        raise InvalidImage("the image shows no digit: it is blank (no ink)")
    small_light = _thumbnail(light)
    dark, light, cropped = _on_the_sheet(dark, light, _thumbnail(small_light, COARSE_SIDE))
    if cropped:
        small_light = _thumbnail(light)
    small_dark = small_light if dark is light else _thumbnail(dark)
    median_dark = _local_median(small_dark)
    median_light = median_dark if small_light is small_dark else _local_median(small_light)
    margin = _scalar(MIN_CONTRAST // 2)
    # saturating uint8 arithmetic: each departure beyond the margin, summed
    dark_score = cv2.sumElems(cv2.subtract(cv2.subtract(median_dark, small_dark), margin))[0]
    light_score = cv2.sumElems(cv2.subtract(cv2.subtract(small_light, median_light), margin))[0]
    decisive = max(light_score, dark_score) >= POLARITY_MARGIN * min(light_score, dark_score)

    def dark_ink() -> _Reading:
        return dark, small_dark, median_dark

    def light_ink() -> _Reading:
        # the median of the inverted values is the inverted median
        return cv2.bitwise_not(light), cv2.bitwise_not(small_light), cv2.bitwise_not(median_light)

    if light_score > dark_score:
        return light_ink(), dark_ink, decisive
    return dark_ink(), light_ink, decisive


def _on_the_sheet(
    dark: np.ndarray, light: np.ndarray, small: np.ndarray
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Both channels cropped to the sheet of paper when the picture shows one on a darker desk
    (``small``: the thumbnail of ``light``), and whether they were.

    On a thumbnail, Otsu's threshold splits light from dark; the largest light component is a
    sheet when it covers at least SHEET_AREA of the picture, fills SHEET_FILL of its bounding box
    (a rectangle, less the strokes on it), leaves a margin on some side, and what lies around it
    is darker than 40% of its brightness (a desk, not a shadow). White strokes on black fill far
    less of their box, so they are never taken for a sheet.
    """
    _, bright = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    count, _, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=4)
    if count <= 1:
        return dark, light, False
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height, area = (int(v) for v in stats[largest])
    rows, cols = small.shape
    margin = max(1, round(0.04 * max(rows, cols)))
    framed = left >= margin or top >= margin or cols - left - width >= margin
    framed = framed or rows - top - height >= margin
    if not framed or area < SHEET_AREA * rows * cols or area < SHEET_FILL * width * height:
        return dark, light, False
    # a desk, not a shadow: what lies around the sheet is far darker than the sheet
    sheet = small[top : top + height, left : left + width]
    outside = np.ones(small.shape, dtype=bool)
    outside[top : top + height, left : left + width] = False
    if np.median(small[outside]) > DARK_SURROUND_FRACTION * np.median(sheet):
        return dark, light, False
    scale = dark.shape[0] / rows
    inset = 1  # leave the sheet's own edge (and its shadow) out
    y0, y1 = round((top + inset) * scale), round((top + height - inset) * scale)
    x0, x1 = round((left + inset) * scale), round((left + width - inset) * scale)
    if y1 - y0 < 8 or x1 - x0 < 8:
        return dark, light, False
    if dark is light:
        sheet = dark[y0:y1, x0:x1]
        return sheet, sheet, True
    return dark[y0:y1, x0:x1], light[y0:y1, x0:x1], True


def _ink(darkness: np.ndarray, small: np.ndarray, median: np.ndarray) -> np.ndarray:
    """uint8 [H, W] ink, 0..255: how much darker each pixel is than the paper around it
    (``small``: the thumbnail of ``darkness``; ``median``: its median over a third of it).

    The paper's local brightness is a morphological closing of a thumbnail (which removes every
    dark structure narrower than a quarter of the picture: the strokes), smoothed and enlarged.
    Dividing by it cancels shadows and uneven light, which scale paper and ink alike. Where the
    median of a third of the picture around a pixel is darker than 40% of the brightest paper,
    in a region reaching the picture's edge, that pixel is desk, not paper, and carries no ink.
    """
    side = _odd(max(small.shape) * BACKGROUND_KERNEL)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (side, side))  # separable: fast
    paper = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
    paper = cv2.blur(paper, (side // 2, side // 2), borderType=cv2.BORDER_REPLICATE)
    # a dark desk is not paper: its texture is measured against the paper's brightness, not its
    # own; and where the neighbourhood is mostly dark (the desk beside a sheet, which the closing
    # bridges), there is no paper to write on
    floor = max(int(cv2.minMaxLoc(paper)[1] * DARK_SURROUND_FRACTION), 1)
    # (nothing of the median under the floor: no desk, and no labelling to look for one)
    surround = _touching_edge(median < floor) if cv2.minMaxLoc(median)[0] < floor else None
    height, width = darkness.shape
    if paper.shape != darkness.shape:
        paper = cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)
    # paper darker than the floor (inside a blot of marker wider than the closing) is no paper:
    # ink is measured against the floor there, so a thick stroke does not turn hollow
    paper = cv2.max(paper, _scalar(floor))
    ink = cv2.divide(cv2.subtract(paper, darkness), paper, scale=255)
    if surround is not None and surround.any():
        paper_here = (~surround).view(np.uint8)
        ink = ink * np.asarray(
            cv2.resize(paper_here, (width, height), interpolation=cv2.INTER_NEAREST)
        )
    return ink


def _touching_edge(mask: np.ndarray) -> np.ndarray:
    """The parts of a bool mask that run along the picture's edge for at least DESK_CONTACT of
    its longest side (a desk, not a marker's stroke that reaches the edge)."""
    if not mask.any():
        return mask
    count, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=4)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    table = np.bincount(border, minlength=count) >= DESK_CONTACT * max(mask.shape)
    table[0] = False
    return np.asarray(table[labels])


def _digit_strokes(ink: np.ndarray) -> np.ndarray:
    """uint8 [H, W], 1 on the digit's strokes; ruled and grid lines, specks and stray marks left
    out."""
    smooth = cv2.GaussianBlur(ink, (3, 3), 0)
    otsu, _ = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    _, mask = cv2.threshold(smooth, max(otsu, MIN_INK * 255.0), 1, cv2.THRESH_BINARY)
    if not cv2.hasNonZero(mask):
        raise InvalidImage("the image shows no digit: no ink found")
    count, labels, stats = _components(mask)
    height, width = mask.shape
    ruled = None
    # a ruled line is a run of ink across most of the picture, so it lies in one component
    # that spans as much: without one, there is none to take out
    if (stats[1:, cv2.CC_STAT_WIDTH] >= int(width * LINE_LENGTH)).any() or (
        stats[1:, cv2.CC_STAT_HEIGHT] >= int(height * LINE_LENGTH)
    ).any():
        mask, ruled = _without_lines(mask)
        if ruled is not None:
            count, labels, stats = _components(mask)
    kept = _digit_components(stats, ink.shape)
    if len(kept) == 1:
        chosen = (labels == kept[0]).view(np.uint8)
    else:
        table = np.zeros(count, dtype=np.uint8)
        table[kept] = 1
        chosen = table[labels]
    if ruled is not None:
        # where the digit crossed a ruled line, its pieces end on either side of the removed
        # band: bring back the ink under the band next to them, so the strokes join again
        chosen |= cv2.dilate(chosen, _BRIDGE) & ruled
    if cv2.sumElems(cv2.multiply(ink, chosen))[0] < MIN_INK_LEVEL * 255.0 * cv2.countNonZero(
        chosen
    ):
        raise InvalidImage("the image shows no digit: the ink is too faint")
    return np.asarray(chosen)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a uint8 mask: their count (the background included), int32
    labels [H, W] and statistics [count, 5] (OpenCV's CC_STAT columns). Grana's block-based
    labelling (BBDT): here more than twice as quick as OpenCV's default."""
    count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
        mask, 8, cv2.CV_32S, cv2.CCL_GRANA
    )
    return count, labels, stats


def _without_lines(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The mask without straight horizontal or vertical lines that run across most of the
    picture, and the ink taken out with them (None when nothing was).

    Ruled and grid paper: an opening with a line-shaped element three quarters of the picture long
    keeps only such lines. When nothing but lines would be left (less ink than one line across
    the picture), the "line" is the digit (a one drawn from edge to edge) and stays.
    """
    height, width = mask.shape
    long_rows = cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).max() >= width * LINE_LENGTH
    long_cols = cv2.reduce(mask, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).max() >= height * LINE_LENGTH
    if not (long_rows or long_cols):
        return mask, None  # no row or column holds enough ink for a line: usual, and cheap
    across = cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, int(width * LINE_LENGTH)), 1))
    down = cv2.getStructuringElement(cv2.MORPH_RECT, (1, max(3, int(height * LINE_LENGTH))))
    rows = cv2.morphologyEx(mask, cv2.MORPH_OPEN, across)
    cols = cv2.morphologyEx(mask, cv2.MORPH_OPEN, down)
    # a rule is thin: what is thicker than RULE_WIDTH across it is a stroke (a one's long bar)
    rows = cv2.subtract(rows, cv2.morphologyEx(rows, cv2.MORPH_OPEN, _THICK_DOWN))
    cols = cv2.subtract(cols, cv2.morphologyEx(cols, cv2.MORPH_OPEN, _THICK_ACROSS))
    lines = cv2.max(rows, cols)
    if not cv2.hasNonZero(lines):
        return mask, None
    # the ink a line hides under its own width: grow the lines a pixel before taking them out
    lines = cv2.dilate(lines, _SQUARE)
    rest = mask & (1 - lines)
    left = cv2.countNonZero(rest)
    if left < LINES_ONLY_FRACTION * cv2.countNonZero(mask) and left < max(height, width):
        return mask, None
    return np.asarray(rest), np.asarray(mask & lines)


def _digit_components(stats: np.ndarray, shape: tuple[int, ...]) -> list[int]:
    """Labels of the components that make up the digit: the main one and the pieces near it.

    The main component has the most pixels, components touching the picture's edge (a desk, the
    sheet's edge, a finger) counting a tenth, and a frame all around a hundredth. A piece joins
    when it has at least 3% of the main one's pixels and lies within reach of the digit so far;
    the reach grows with the piece's size, so a broken stroke joins while a pen dot a digit's
    width away does not.
    """
    height, width = shape
    if len(stats) <= 1:
        raise InvalidImage("the image shows no digit: no ink found")
    # plain numbers: for a few components, quicker than numpy
    pieces = []
    for left, top, wide, tall, area in stats.tolist():
        right, bottom = left + wide, top + tall
        touches = left == 0 or top == 0 or right == width or bottom == height
        # a frame all around (a desk around the sheet) is no digit, whatever ink it carries
        frame = touches and wide >= 0.9 * width and tall >= 0.9 * height
        pieces.append((float(area), (left, top, right, bottom), touches, frame))
    scores = [
        area * (EDGE_WEIGHT if touches else 1.0) * (EDGE_WEIGHT if frame else 1.0)
        for area, _, touches, frame in pieces
    ]
    scores[0] = -1.0
    main = max(range(len(scores)), key=scores.__getitem__)
    kept = [main]
    main_area = pieces[main][0]
    # the pieces that may join, largest first
    pending = sorted(
        (
            label
            for label, (area, _, touches, frame) in enumerate(pieces)
            if label not in (0, main)
            and area / main_area >= MIN_PIECE_SHARE
            and not frame
            and not (touches and area / main_area < 0.5)
        ),
        key=lambda label: -pieces[label][0],
    )
    box = list(pieces[main][1])
    changed = True
    while changed and pending:
        changed = False
        waiting = []
        for label in pending:
            area, (left, top, right, bottom), _, _ = pieces[label]
            gap = max(box[0] - right, left - box[2], box[1] - bottom, top - box[3], 0)
            share = min(area / main_area, 1.0)
            reach = max(box[2] - box[0], box[3] - box[1]) * (0.08 + 0.5 * math.sqrt(share))
            if gap <= reach:
                kept.append(label)
                box = [min(box[0], left), min(box[1], top), max(box[2], right), max(box[3], bottom)]
                changed = True
            else:
                waiting.append(label)
        pending = waiting
    return kept


def stroke_width(strokes: np.ndarray) -> float:
    """Mean stroke width of a mask (bool, or uint8 0/1) in pixels: twice the area over the
    outline's length."""
    mask = strokes if strokes.dtype == np.uint8 else strokes.astype(np.uint8)
    return _width(mask, cv2.countNonZero(mask))


def _width(mask: np.ndarray, area: int) -> float:
    """``stroke_width`` of a uint8 0/1 mask of ``area`` pixels."""
    inner = cv2.erode(mask, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return 2.0 * area / max(area - cv2.countNonZero(inner), 1)


def _normalised_strokes(ink: np.ndarray, strokes: np.ndarray, width: float) -> np.ndarray:
    """float32 ink 0..1 of the digit alone, its stroke width brought into MNIST's range.

    MNIST's strokes, once the digit fits the 20x20 box, are STROKE_WIDTH_RANGE pixels wide (the
    5th to 95th percentile over the training digits, measured with ``stroke_width``); a marker
    digit is eroded and a thin pen digit dilated to the nearest end of that range.
    """
    left, top, box_width, box_height = cv2.boundingRect(strokes)
    bottom, right = top + box_height, left + box_width
    margin = 3
    window = (
        slice(max(top - margin, 0), bottom + margin),
        slice(max(left - margin, 0), right + margin),
    )
    ink, strokes = ink[window], strokes[window]
    level = _percentile_90(ink[strokes.view(bool)]) / 255.0
    floor = MIN_INK / 2
    # only on and next to the strokes; the width is changed on these bytes, and the values mapped
    # afterwards (a rising map and a grey-level erosion or dilation give the same either way)
    near = cv2.bitwise_and(ink, ink, mask=cv2.dilate(strokes, _SQUARE))
    size = max(bottom - top, right - left)
    low, high = STROKE_WIDTH_RANGE
    target = min(max(width, low), high)
    # eroding (dilating) by r pixels also shrinks (grows) the box by 2r, and the digit is fitted
    # to the 20x20 box afterwards: (width_px + 2 change) / (size + 2 change) * DIGIT_BOX = target
    change = (target - width) / 2 * size / DIGIT_BOX / (1.0 - target / DIGIT_BOX)
    radius = round(abs(change))
    if radius >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        padded = cv2.copyMakeBorder(near, radius, radius, radius, radius, cv2.BORDER_CONSTANT)
        near = (cv2.dilate if change > 0 else cv2.erode)(padded, kernel)
    # (ink / 255 - floor) / (level - floor), clipped to 0..1, as a table of the 256 values
    gain = np.float32(1.0 / (255.0 * max(level - floor, 1e-3)))
    table = np.clip(_BYTES * gain - np.float32(floor * 255.0) * gain, 0.0, 1.0)
    return np.asarray(cv2.LUT(near, table), dtype=np.float32)


def _percentile_90(values: np.ndarray) -> float:
    """The 90th percentile of a 1-d array, interpolated linearly as ``np.percentile`` does
    (a partition: several times quicker on a few thousand values)."""
    position = 0.9 * (values.size - 1)
    below = int(position)
    above = min(below + 1, values.size - 1)
    parted = np.partition(values, (below, above))
    return float(parted[below]) + (position - below) * (float(parted[above]) - float(parted[below]))


def _mnist_field(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit into 20x20 keeping the aspect, centre by mass in 28x28."""
    left, top, width, height = cv2.boundingRect((ink > 0).view(np.uint8))
    if width == 0 or height == 0:
        raise InvalidImage("the image shows no digit: no ink left")
    crop = np.ascontiguousarray(ink[top : top + height, left : left + width])
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # area averaging when shrinking is the anti-aliasing MNIST's size normalisation used
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = np.clip(cv2.resize(crop, size, interpolation=method), 0.0, 1.0)
    moments = cv2.moments(patch)
    mass = moments["m00"]
    if mass <= 0.0:
        raise InvalidImage("the image shows no digit: no ink left after scaling")
    # MNIST's centres of mass sit at index 14.0 (measured on the test set)
    centre_row, centre_col = moments["m01"] / mass, moments["m10"] / mass
    top = _clamped(round(IMAGE_SIDE / 2 - centre_row), IMAGE_SIDE - patch.shape[0])
    left = _clamped(round(IMAGE_SIDE / 2 - centre_col), IMAGE_SIDE - patch.shape[1])
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    field[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    return field


def _clamped(offset: int, largest: int) -> int:
    """An offset kept inside the field, so an off-balance digit is not cut."""
    return min(max(offset, 0), largest)


def check_size(width: int, height: int, limits: ImageLimits) -> None:
    """InvalidImage (422) naming the size when a ``width`` x ``height`` image has no pixels or
    more than ``limits.max_pixels``."""
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is {width}x{height} pixels; it has no pixels")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels} pixels"
        )


def _parse_header(data: bytes, name: str) -> Image.Image:
    """``data`` opened by the decoder of format ``name`` itself: the header read, nothing decoded,
    and Pillow's decompression-bomb check skipped (the caller checks the size it reads)."""
    Image.init()
    factory, _ = Image.OPEN[name]
    return factory(io.BytesIO(data), "")


def header_size(data: bytes, formats: tuple[str, ...]) -> tuple[int, int] | None:
    """(width, height) as the header of ``data`` says, in the first of ``formats`` that reads
    it; None when none does. Nothing is decoded, whatever size the header claims."""
    named = signature_format(data)
    Image.init()
    for name in (named,) if named in formats else formats:
        accept = Image.OPEN[name][1]
        if accept is not None and not accept(data[:64]):
            continue  # not this format's signature: as Image.open would skip it
        try:
            with _parse_header(data, name) as image:
                width, height = image.size
                return int(width), int(height)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's WebP reader checks the size itself while it opens (it makes the canvas
            # then) and refuses beyond twice Image.MAX_IMAGE_PIXELS, saying no width or height
            size = _webp_size(data) if name == "WEBP" else None
            if size is not None:
                return size
        except _DECODE_ERRORS:
            continue
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a WebP's canvas as its first chunk says (VP8X, lossless VP8L or lossy
    VP8), decoding nothing; None when that chunk is none of these or is cut short."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:  # 24-bit width - 1 and height - 1
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:  # 14-bit width - 1, height - 1
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":  # 14-bit sides
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def _header_error(data: bytes, name: str) -> str:
    """Why the decoder of ``name`` refuses the header of ``data``."""
    try:
        with _parse_header(data, name) as image:
            width, height = image.size
    except _DECODE_ERRORS as exc:
        if isinstance(exc, struct.error | EOFError) or "buffer" in str(exc):
            return "the data ends inside its header"
        if "not identified" in str(exc):  # Pillow's words for a header its decoder refuses
            return "its header is broken or declares no pixels"
        return _reason(exc)
    return f"its header says {width}x{height} pixels but nothing more can be read"


def signature_format(data: bytes) -> str | None:
    """The format the first bytes of ``data`` announce (PNG, JPEG, GIF...), or None."""
    head = data[:16].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _describe_unaccepted(data: bytes) -> str:
    """Name a rejected format when it is a known one, so the caller knows what was wrong."""
    head = data[:16].lstrip()
    for signature, name in _KNOWN_SIGNATURES:
        if head.startswith(signature):
            return f"{name} images are not accepted"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP images are not accepted"
    return "the data is not an image in an accepted format"


def _reason(exc: BaseException) -> str:
    """A short, safe description of a decoder failure."""
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
