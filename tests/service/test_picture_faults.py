"""Pictures a person reads at once that the preprocessing once misread or refused: an upright
"1" in grey pencil (a bar fills its box, as paper read as ink does), samples deeper than 8 bits
(a 12-bit scan in a 16-bit PNG, a float TIFF in 0..1), a digit photographed in dim light, and
images sent as URL-safe base64. A dim picture of nothing stays blank. (The small digit on a
whole phone photo and the dim photo are conditions of bench/pictures.py, read in
test_picture_slice.py.)"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.errors import InvalidImage
from service.images import ImageLimits, preprocess_image
from service.model.contract import INPUT_NAME, OUTPUT_PROBABILITIES
from tests.service.conftest import png_bytes
from tests.service.test_picture_slice import VERSION

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        (VERSION / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )


def _digit(session: ort.InferenceSession, field: np.ndarray) -> int:
    [probabilities] = session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: field.reshape(1, 784)})
    return int(probabilities.argmax())


def _png(values: np.ndarray) -> bytes:
    return cv2.imencode(".png", values)[1].tobytes()


@pytest.mark.parametrize("width", [14, 18, 22, 26])
@pytest.mark.parametrize(("pencil", "blur"), [(100, 1.0), (120, 2.0), (160, 3.0)])
def test_an_upright_grey_one_is_a_solid_bar(
    session: ort.InferenceSession, width: int, pencil: int, blur: float
) -> None:
    # it was read as two outlines (the paper on either side of the bar), a 4 or a 0
    sheet = np.full((480, 640), 230, np.uint8)
    cv2.line(sheet, (320, 130), (320, 350), pencil, width)
    field = preprocess_image(_png(cv2.GaussianBlur(sheet, (0, 0), blur)), LIMITS)
    square = field.reshape(28, 28)
    middle = square[10:18]  # the bar's middle rows: ink in the centre of each, no hole
    centre = middle[:, square.sum(axis=0).argmax()]
    assert (centre > 0.5).all(), np.round(middle, 1).tolist()
    assert _digit(session, field) == 1


def test_a_tilted_grey_pencil_one_is_read(session: ort.InferenceSession) -> None:
    # MNIST test digit 135 (a "1") drawn 8 times larger in grey (120 on 230 paper), turned 5
    # degrees, shaded, JPEG at quality 60: it was answered 4 at 0.947, accepted
    photo = (Path(__file__).parent / "pictures" / "one_grey_pencil_tilted.jpg").read_bytes()
    assert _digit(session, preprocess_image(photo, LIMITS)) == 1


def _page(digit: np.ndarray) -> np.ndarray:
    """float32 [480, 640]: white paper 1.0 with the digit's ink at 0 (224 px)."""
    ink = cv2.resize(digit.reshape(28, 28), (224, 224), interpolation=cv2.INTER_LINEAR)
    page = np.ones((480, 640), np.float32)
    page[128:352, 208:432] -= ink.astype(np.float32) / 255
    return page


@pytest.fixture(scope="module")
def seven(mnist_data_dir: Path) -> np.ndarray:
    from training.data import load_mnist

    test = load_mnist(mnist_data_dir).test
    assert test.labels[0] == 7
    return np.asarray(test.images[0])


def test_a_twelve_bit_scan_in_a_sixteen_bit_png_is_read(
    session: ort.InferenceSession, seven: np.ndarray
) -> None:
    # samples 0..4095 in a 16-bit container were scaled by 65535: "blank"
    scan = np.rint(_page(seven) * 4095).astype(np.uint16)
    field = preprocess_image(_png(scan), LIMITS)
    eight_bit = preprocess_image(_png(np.rint(_page(seven) * 255).astype(np.uint8)), LIMITS)
    assert _digit(session, field) == 7
    assert np.abs(field - eight_bit).max() < 0.1


def test_a_float_tiff_in_zero_to_one_is_read(
    session: ort.InferenceSession, seven: np.ndarray
) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_page(seven), "F").save(buffer, "TIFF")
    assert _digit(session, preprocess_image(buffer.getvalue(), LIMITS)) == 7


@pytest.mark.parametrize("paper", [30, 20])
def test_a_digit_photographed_in_dim_light_is_read(
    session: ort.InferenceSession, seven: np.ndarray, paper: int
) -> None:
    # paper 30, ink 0: 30 grey levels apart, under the blank picture's contrast floor
    dim = np.rint(_page(seven) * paper).astype(np.uint8)
    assert _digit(session, preprocess_image(_png(dim), LIMITS)) == 7


@pytest.mark.parametrize("level", [5, 20, 60])
@pytest.mark.parametrize("fmt", [".png", ".jpg"])
def test_a_dim_picture_of_nothing_stays_blank(level: int, fmt: str) -> None:
    # brightening a dim picture must not turn its sensor noise into ink
    noise = np.random.default_rng(level).normal(level, 2.0, (480, 640))
    picture = cv2.imencode(fmt, np.clip(noise, 0, 255).astype(np.uint8))[1].tobytes()
    with pytest.raises(InvalidImage, match="blank"):
        preprocess_image(picture, LIMITS)


def test_url_safe_base64_and_a_data_url_in_capitals_are_read(seven: np.ndarray) -> None:
    from service.api import images_from_json

    # a PNG whose base64 uses both of the alphabets' differing letters, and needs padding
    png = png_bytes(seven)
    while not {"+", "/"} <= set(base64.b64encode(png).decode()) or len(png) % 3 == 0:
        png += b"\0"  # bytes after IEND: every decoder ignores them
    standard = images_from_json(
        json.dumps({"images": [base64.b64encode(png).decode()]}).encode(), 8, LIMITS
    )
    sent = [
        base64.urlsafe_b64encode(png).decode(),
        base64.urlsafe_b64encode(png).decode().rstrip("="),
        "DATA:image/png;BASE64," + base64.b64encode(png).decode(),
    ]
    batch = images_from_json(json.dumps({"images": sent}).encode(), 8, LIMITS)
    np.testing.assert_array_equal(batch, np.repeat(standard, 3, axis=0))


def test_base64_mixing_both_alphabets_is_refused(seven: np.ndarray) -> None:
    from service.api import images_from_json

    png = png_bytes(seven)
    while not {"+", "/"} & set(base64.b64encode(png).decode()):
        png += b"\0"
    text = base64.b64encode(png + b"\0" * 6).decode()
    mixed = text[:-8] + "-_-_" + text[-4:]
    with pytest.raises(InvalidImage, match="not base64"):
        images_from_json(json.dumps({"images": [mixed]}).encode(), 8, LIMITS)


@pytest.mark.parametrize("fmt", [".png", ".jpg"])
def test_a_large_blank_page_with_dust_stays_blank(fmt: str) -> None:
    # the zoomed reading of a large photo must not take a speck of dust for a small digit
    rng = np.random.default_rng(11)
    for _ in range(2):
        page = np.full((3000, 4000), 215, np.float32)
        for _ in range(30):
            centre = (int(rng.integers(4000)), int(rng.integers(3000)))
            cv2.circle(page, centre, int(rng.integers(1, 4)), 120, -1)
        page += rng.normal(0, 3, page.shape).astype(np.float32)
        picture = cv2.imencode(fmt, np.clip(page, 0, 255).astype(np.uint8))[1].tobytes()
        with pytest.raises(InvalidImage, match="no digit"):
            preprocess_image(picture, LIMITS)
