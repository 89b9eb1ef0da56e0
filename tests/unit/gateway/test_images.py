"""The gateway's image decoder: sizes checked from the header before decoding, PNG and JPEG
only, malformed data a 400 naming body.image."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from mlapi_gateway import errors
from mlapi_gateway.images import INLINE_MAX_BYTES, ImageDecoder


@pytest.fixture
def decoder() -> Iterator[ImageDecoder]:
    images = ImageDecoder(threads=1)
    yield images
    images.close()


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))  # one row of the many the header promises
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _decode(decoder: ImageDecoder, data: bytes, max_pixels: int = 1024 * 1024) -> np.ndarray:
    return asyncio.run(decoder.decode(data, 1024, max_pixels))


def _refusal(
    decoder: ImageDecoder, data: bytes, max_pixels: int = 1024 * 1024
) -> errors.FieldError:
    with pytest.raises(errors.RequestInvalidError) as refused:
        _decode(decoder, data, max_pixels)
    (error,) = refused.value.errors
    assert error.field == "body.image"
    return error


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_png_and_jpeg_decode_to_grayscale(decoder: ImageDecoder, fmt: str) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    gray = _decode(decoder, _encoded(rgb, fmt))
    assert gray.shape == (40, 30) and gray.dtype == np.uint8


def test_small_and_large_files_take_the_same_path_to_the_same_answer(
    decoder: ImageDecoder,
) -> None:
    tiny = np.arange(64, dtype=np.uint8).reshape(8, 8)
    data = _encoded(tiny, "PNG")
    assert len(data) <= INLINE_MAX_BYTES  # decoded in the loop
    assert np.array_equal(_decode(decoder, data), tiny)
    noisy = np.random.default_rng(2).integers(0, 256, (300, 300), dtype=np.uint8)
    data = _encoded(noisy, "PNG")
    assert len(data) > INLINE_MAX_BYTES  # decoded in the pool
    assert np.array_equal(_decode(decoder, data), noisy)


@pytest.mark.parametrize(("width", "height"), [(20000, 20000), (1025, 8), (1024, 1025)])
def test_oversized_headers_are_refused_without_decoding(
    decoder: ImageDecoder, width: int, height: int
) -> None:
    error = _refusal(decoder, _header_only_png(width, height))
    # Refused for its size (by Pillow itself past its bomb limit), not as a truncated file:
    # the pixels, which the file does not hold, were never decoded.
    assert error.message.startswith(("the image is too large", f"the image is {width}x{height}"))
    assert "1024" in (error.expected or "")


def test_the_pixel_budget_applies_below_the_side_limit(decoder: ImageDecoder) -> None:
    assert "600x600" in _refusal(decoder, _header_only_png(600, 600), 500 * 500).message


@pytest.mark.parametrize("kind", ["truncated", "gif", "empty", "text"])
def test_malformed_or_other_formats_are_400(decoder: ImageDecoder, kind: str) -> None:
    image = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    png = _encoded(image, "PNG")
    data = {
        "truncated": png[: len(png) // 2],
        "gif": _encoded(image, "GIF"),
        "empty": b"",
        "text": b"not an image at all",
    }[kind]
    assert "PNG or JPEG" in (_refusal(decoder, data).expected or "")
