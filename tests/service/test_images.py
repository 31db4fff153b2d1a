"""Tests for service.images: every mode and polarity gives the same MNIST-like field; bad input is
refused with InvalidImage and a message that says why."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.errors import InvalidImage
from service.images import (
    DIGIT_BOX,
    ImageLimits,
    encode_png_base64,
    preprocess_image,
    preprocess_picture,
)
from service.model.contract import IMAGE_SIDE, N_PIXELS
from tests.image_headers import huge_bmp, huge_gif, huge_jpeg, huge_png

# A seven: asymmetric, so a wrong rotation or mirror shows up in the comparison.
SEVEN = [(0.22, 0.18), (0.78, 0.18), (0.42, 0.85)]


def _draw_seven(size: tuple[int, int], left: float, top: float, side: float) -> np.ndarray:
    """A light-on-dark seven (ink 255 on 0) drawn into the square ``side`` at (left, top)."""
    canvas = Image.new("L", size, 0)
    points = [(left + side * px, top + side * py) for px, py in SEVEN]
    stroke = max(1, round(side / 9))
    ImageDraw.Draw(canvas).line(points, fill=255, width=stroke, joint="curve")
    return np.asarray(canvas)


def _png(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def _jpeg(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **params)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ink() -> np.ndarray:
    """The seven, light on dark, 8-bit, 280x280."""
    return _draw_seven((280, 280), 28, 28, 224)


@pytest.fixture(scope="module")
def reference(ink: np.ndarray) -> np.ndarray:
    """What the plain 8-bit light-on-dark PNG becomes; every variant must come out like it."""
    return preprocess_image(_png(Image.fromarray(ink)))


def _assert_like(field: np.ndarray, reference: np.ndarray, tolerance: float = 0.03) -> None:
    assert field.shape == (N_PIXELS,)
    assert field.dtype == np.float32
    difference = float(np.abs(field - reference).mean())
    assert difference < tolerance, f"mean abs difference {difference:.4f} from the reference"


def _dark_on_light_rgb(ink: np.ndarray) -> Image.Image:
    return Image.fromarray(255 - ink).convert("RGB")


def test_reference_is_an_mnist_like_field(reference: np.ndarray) -> None:
    field = reference.reshape(IMAGE_SIDE, IMAGE_SIDE)
    assert field.min() >= 0.0 and field.max() <= 1.0
    assert field.max() > 0.9, "the strokes should be full ink"
    rows = np.flatnonzero(field.any(axis=1))
    cols = np.flatnonzero(field.any(axis=0))
    # fitted into the 20x20 box (the seven is taller than wide or equal)
    assert max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) == DIGIT_BOX
    # centre of mass at the centre, as in MNIST
    mass = field.sum()
    centre_row = (field.sum(axis=1) * np.arange(IMAGE_SIDE)).sum() / mass
    centre_col = (field.sum(axis=0) * np.arange(IMAGE_SIDE)).sum() / mass
    assert abs(centre_row - 14) <= 0.5 and abs(centre_col - 14) <= 0.5
    # the background is clean: no ink more than a pixel away from the strokes' box
    assert field[: max(rows[0] - 1, 0)].sum() == 0 and field[rows[-1] + 2 :].sum() == 0


def test_mnist_digit_passes_through_almost_unchanged(mnist_data_dir: Any) -> None:
    import gzip

    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz") as handle:
        digits = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, IMAGE_SIDE, 28)
    differences = []
    for digit in digits[:20]:
        field = preprocess_image(_png(Image.fromarray(digit)))
        differences.append(float(np.abs(field - digit.reshape(N_PIXELS) / 255.0).mean()))
    # a stroke width outside MNIST's usual range is brought into it: a few digits change more
    assert np.mean(differences) < 0.03 and max(differences) < 0.08, differences


def test_dark_on_light_is_inverted(ink: np.ndarray, reference: np.ndarray) -> None:
    _assert_like(preprocess_image(_png(Image.fromarray(255 - ink))), reference)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
@pytest.mark.parametrize("polarity", ["light_on_dark", "dark_on_light"])
def test_jpeg(ink: np.ndarray, reference: np.ndarray, mode: str, polarity: str) -> None:
    values = ink if polarity == "light_on_dark" else 255 - ink
    _assert_like(preprocess_image(_jpeg(Image.fromarray(values).convert(mode))), reference)


def test_rgb_coloured_ink_on_coloured_paper(ink: np.ndarray, reference: np.ndarray) -> None:
    mask = Image.fromarray(ink)
    image = Image.new("RGB", mask.size, (250, 240, 200))
    image.paste((20, 40, 160), mask=mask)  # blue ballpoint on cream paper
    _assert_like(preprocess_image(_png(image)), reference)


def test_rgba_transparent_background_is_paper(ink: np.ndarray, reference: np.ndarray) -> None:
    # hidden colour under the transparency is black, like the ink: ignoring alpha shows nothing
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., 3] = ink
    _assert_like(preprocess_image(_png(Image.fromarray(rgba))), reference)


def test_la_transparent_background_is_paper(ink: np.ndarray, reference: np.ndarray) -> None:
    la = np.stack([np.zeros_like(ink), ink], axis=-1)
    _assert_like(preprocess_image(_png(Image.fromarray(la, mode="LA"))), reference)


def test_palette_with_transparent_index(ink: np.ndarray, reference: np.ndarray) -> None:
    # index 0 (black) is transparent -> white paper; index 1 is blue ink
    image = Image.fromarray((ink > 127).astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (3 * 254))
    _assert_like(preprocess_image(_png(image, transparency=0)), reference, tolerance=0.05)


def test_palette_without_transparency(ink: np.ndarray, reference: np.ndarray) -> None:
    image = _dark_on_light_rgb(ink).quantize(colors=16)
    assert image.mode == "P"
    _assert_like(preprocess_image(_png(image)), reference, tolerance=0.05)


@pytest.mark.parametrize("polarity", ["light_on_dark", "dark_on_light"])
def test_one_bit(ink: np.ndarray, reference: np.ndarray, polarity: str) -> None:
    values = ink if polarity == "light_on_dark" else 255 - ink
    image = Image.fromarray(values > 127)
    assert image.mode == "1"
    _assert_like(preprocess_image(_png(image)), reference, tolerance=0.05)


def test_sixteen_bit_is_scaled_not_clipped(ink: np.ndarray, reference: np.ndarray) -> None:
    # ink 60000 on 1000: clipping to 8 bits would make the whole image 255 (blank)
    values = (1000 + ink.astype(np.uint16) * (59000 // 255)).astype(np.uint16)
    image = Image.fromarray(values)
    data = _png(image)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    _assert_like(preprocess_image(data), reference)


def test_sixteen_bit_dark_on_light(ink: np.ndarray, reference: np.ndarray) -> None:
    values = (65535 - ink.astype(np.uint16) * 257).astype(np.uint16)
    _assert_like(preprocess_image(_png(Image.fromarray(values))), reference)


def test_exif_orientation_of_photos_is_applied(ink: np.ndarray, reference: np.ndarray) -> None:
    # the camera stored the picture rotated; EXIF orientation 6 says "rotate 90 clockwise to view"
    stored = _dark_on_light_rgb(ink).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(stored, exif=exif.tobytes())
    _assert_like(preprocess_image(data), reference)
    assert np.abs(preprocess_image(_jpeg(stored)) - reference).mean() > 0.05


@pytest.mark.parametrize(
    "size, square, tolerance",
    [
        ((200, 150), (5, 5, 60), 0.05),  # small, in the top-left corner
        ((200, 150), (110, 55, 90), 0.05),  # bottom-right
        ((1200, 900), (500, 300, 200), 0.05),  # a large photo, digit a fraction of it
        # tall and narrow canvas: analysed at 160 px tall, the digit is 21 px there
        ((60, 400), (4, 250, 52), 0.08),
    ],
)
def test_other_sizes_and_positions(
    reference: np.ndarray, size: Any, square: Any, tolerance: float
) -> None:
    ink = _draw_seven(size, *square)
    _assert_like(preprocess_image(_png(Image.fromarray(255 - ink))), reference, tolerance)


def test_tiny_images(reference: np.ndarray) -> None:
    tiny = _draw_seven((14, 14), 0, 0, 14)
    field = preprocess_image(_png(Image.fromarray(tiny)))
    assert field.shape == (N_PIXELS,) and field.max() > 0.5
    # a third of the picture lit is no stroke on paper: refused, with the reason
    with pytest.raises(InvalidImage, match="no digit"):
        preprocess_image(_png(Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8))))


def test_uneven_paper_shading_does_not_become_ink(ink: np.ndarray, reference: np.ndarray) -> None:
    # a photo: light falls off across the sheet, plus sensor noise, ink still clearly darker
    rows, cols = np.mgrid[0 : ink.shape[0], 0 : ink.shape[1]]
    paper = 235 - 70 * (cols / ink.shape[1]) - 30 * (rows / ink.shape[0])
    noise = np.random.default_rng(0).normal(0, 4, ink.shape)
    photo = np.clip(paper + noise - (ink / 255.0) * (paper - 25), 0, 255).astype(np.uint8)
    _assert_like(preprocess_image(_jpeg(Image.fromarray(photo).convert("RGB"))), reference, 0.05)


def test_a_markers_long_bar_is_no_ruled_line() -> None:
    # a one drawn with a felt marker from top to bottom: one solid stroke, not two thin edges
    canvas = Image.new("L", (280, 280), 248)
    ImageDraw.Draw(canvas).line([(150, 8), (125, 272)], fill=20, width=48)
    field = preprocess_image(_png(canvas)).reshape(IMAGE_SIDE, IMAGE_SIDE)
    middle = field[IMAGE_SIDE // 2]
    inked = np.flatnonzero(middle > 0.1)
    assert inked.size >= 3 and float(middle[inked[0] + 1 : inked[-1]].min()) > 0.5, middle


def test_a_markers_zero_keeps_its_loop_and_is_not_read_inside_out() -> None:
    # a zero in thick marker: so much ink that the paper inside the loop departs from its
    # surroundings as much as the strokes do; read inside out, the loop's paper is the "digit"
    canvas = Image.new("L", (280, 280), 248)
    ImageDraw.Draw(canvas).ellipse([(45, 20), (235, 260)], outline=20, width=62)
    field = preprocess_image(_png(canvas)).reshape(IMAGE_SIDE, IMAGE_SIDE)
    rows, cols = np.nonzero(field > 0.3)
    # the whole ring, as tall as the 20x20 box and two thirds as wide, its middle left empty
    assert rows.max() - rows.min() >= DIGIT_BOX - 2 and cols.max() - cols.min() >= 11
    assert float(field[IMAGE_SIDE // 2, IMAGE_SIDE // 2]) < 0.1, field.round(1)


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_images_are_refused(value: int) -> None:
    with pytest.raises(InvalidImage, match="no digit"):
        preprocess_image(_png(Image.new("L", (100, 80), value)))


def test_faint_noise_only_is_refused() -> None:
    noise = np.random.default_rng(1).integers(120, 140, (64, 64), dtype=np.uint8)
    with pytest.raises(InvalidImage, match="no digit"):
        preprocess_image(_png(Image.fromarray(noise)))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image in an accepted format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot be decoded|PNG images"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "cannot be decoded|JPEG images"),
    ],
)
def test_garbage_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImage, match=message):
        preprocess_image(data)


def test_truncated_png_is_refused(ink: np.ndarray) -> None:
    data = _png(Image.fromarray(ink))
    with pytest.raises(InvalidImage, match="cannot be decoded"):
        preprocess_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "GIF", "TIFF"])
def test_other_formats_are_read(ink: np.ndarray, reference: np.ndarray, fmt: str) -> None:
    buffer = io.BytesIO()
    first, second = Image.fromarray(ink), Image.fromarray(255 - ink)
    if fmt in ("GIF", "TIFF"):  # several frames or pages: the first is read
        first.save(buffer, format=fmt, save_all=True, append_images=[second])
    else:
        first.save(buffer, format=fmt, lossless=True) if fmt == "WEBP" else first.save(buffer, fmt)
    _assert_like(preprocess_image(buffer.getvalue()), reference)


def test_unaccepted_formats_are_named(ink: np.ndarray) -> None:
    buffer = io.BytesIO()
    Image.fromarray(ink).save(buffer, format="ICO")
    named = "ICO images are not accepted; send PNG, JPEG, WEBP, BMP, GIF or TIFF"
    with pytest.raises(InvalidImage, match=named):
        preprocess_image(buffer.getvalue())


def test_formats_follow_the_limits(ink: np.ndarray) -> None:
    with pytest.raises(InvalidImage, match="send PNG"):
        preprocess_image(_jpeg(Image.fromarray(ink)), ImageLimits(formats=("PNG",)))


def test_byte_limit(ink: np.ndarray) -> None:
    data = _png(Image.fromarray(ink))
    with pytest.raises(InvalidImage, match="limit is 100"):
        preprocess_image(data, ImageLimits(max_bytes=100))


def test_pixel_limit(ink: np.ndarray) -> None:
    with pytest.raises(InvalidImage, match=r"280x280 = 78400 pixels; the limit is 10000"):
        preprocess_image(_png(Image.fromarray(ink)), ImageLimits(max_pixels=10_000))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


@pytest.mark.parametrize("side", [50_000, 8_000])
def test_decompression_bomb_is_refused_from_the_header(side: int) -> None:
    # a few hundred bytes claiming side x side pixels: decoding it would need gigabytes, so the
    # refusal (naming the claimed size) proves only the header was read
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )
    assert len(bomb) < 1000
    with pytest.raises(InvalidImage, match="pixels; the limit is 25000000 pixels"):
        preprocess_image(bomb)


def test_encode_png_base64_round_trips(reference: np.ndarray) -> None:
    data = base64.b64decode(encode_png_base64(reference), validate=True)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
    decoded = np.asarray(image, dtype=np.float32).reshape(N_PIXELS) / 255.0
    assert np.abs(decoded - reference).max() <= 0.5 / 255 + 1e-6
    # the image the model saw, fed back, is nearly the same field again
    assert np.abs(preprocess_image(data) - decoded).mean() < 0.01


def test_encode_png_base64_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="784"):
        encode_png_base64(np.zeros(100, dtype=np.float32))


@pytest.mark.parametrize(
    ("image", "size"),
    [
        (huge_png(60000, 60000), "60000x60000 = 3600000000"),
        (huge_bmp(30000, 30000), "30000x30000 = 900000000"),
        (huge_gif(65535, 65535), "65535x65535 = 4294836225"),
        (huge_jpeg(60000, 60000), "60000x60000 = 3600000000"),
        (huge_png(6000, 5000), "6000x5000 = 30000000"),
    ],
)
def test_a_huge_header_is_refused_with_its_true_size_in_every_format(
    image: bytes, size: str
) -> None:
    with pytest.raises(InvalidImage) as refused:
        preprocess_image(image)
    assert refused.value.message == f"the image is {size} pixels; the limit is 25000000 pixels"


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (huge_png(0, 0), "the PNG image cannot be decoded (its header is broken"),
        (b"GIF89a\x00\x00\x00", "the GIF image cannot be decoded (the data ends inside"),
        (huge_gif(8, 8)[:12], "the GIF image cannot be decoded"),
    ],
)
def test_an_accepted_format_with_a_broken_header_is_called_undecodable_not_unaccepted(
    image: bytes, words: str
) -> None:
    with pytest.raises(InvalidImage) as refused:
        preprocess_image(image)
    assert refused.value.message.startswith(words), refused.value.message
    assert "not accepted" not in refused.value.message


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_plain_png_by_libspng_reads_as_pillow_decodes_it(ink: np.ndarray, mode: str) -> None:
    # plain 8-bit PNGs go to libspng (pyspng); the same picture decoded by Pillow gives the field
    dark_on_paper = Image.fromarray(255 - ink).convert(mode)
    if mode == "RGBA":  # transparent paper: the composite path
        dark_on_paper.putalpha(Image.fromarray(ink))
    data = _png(dark_on_paper)
    through_pillow = preprocess_picture(Image.open(io.BytesIO(data)).convert(mode))
    np.testing.assert_allclose(preprocess_image(data), through_pillow, atol=1e-6)
    assert through_pillow.max() > 0.5


def test_truncated_plain_png_is_refused_with_the_decoders_reason(ink: np.ndarray) -> None:
    data = _png(Image.fromarray(ink).convert("RGB"))
    with pytest.raises(InvalidImage, match=r"cannot be decoded|truncated"):
        preprocess_image(data[: len(data) // 2])


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_plain_png_with_damaged_image_data_is_refused_not_misread(
    ink: np.ndarray, mode: str
) -> None:
    # stored (uncompressed) deflate blocks, so overwritten pixel bytes still inflate, into wrong
    # pixels; only the chunk's CRC (and zlib's checksum) tell. libspng, as pyspng runs it,
    # ignores both and would decode them; the service refuses the PNG
    out = io.BytesIO()
    Image.fromarray(255 - ink).convert(mode).save(out, "PNG", compress_level=0)
    data = bytearray(out.getvalue())
    start = data.index(b"IDAT") + 4
    middle = start + (len(data) - start) // 2
    data[middle : middle + 200] = bytes(byte ^ 0x5A for byte in data[middle : middle + 200])
    with pytest.raises(InvalidImage, match=r"cannot be decoded"):
        preprocess_image(bytes(data))
