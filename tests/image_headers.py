"""Images whose header claims a size their data does not hold: hostile (decompression bombs by
header) and broken headers, made by patching a small image Pillow wrote."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _saved(fmt: str, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (8, 8), 255).save(out, format=fmt)
    return out.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (CRC right), holding 8x8 pixels."""
    data = bytearray(_saved("PNG"))
    ihdr = 8  # the IHDR chunk: length, b"IHDR", 13 bytes, CRC
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])))
    return bytes(data)


def huge_bmp(width: int, height: int) -> bytes:
    """A BMP whose info header says ``width`` x ``height``."""
    data = bytearray(_saved("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def huge_gif(width: int, height: int) -> bytes:
    """A GIF whose screen and first image descriptor say ``width`` x ``height``."""
    data = bytearray(_saved("GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    start = data.index(b",")
    data[start + 5 : start + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def huge_jpeg(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 says ``width`` x ``height``."""
    data = bytearray(_saved("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


#: every format, its header patched to a size far over any limit (format name -> bytes)
HUGE = {
    "PNG": lambda: huge_png(60000, 60000),
    "BMP": lambda: huge_bmp(30000, 30000),
    "GIF": lambda: huge_gif(65535, 65535),
    "JPEG": lambda: huge_jpeg(60000, 60000),
}
