"""Everything ``digits`` accepts becomes the same grayscale uint8 array."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlapi_client.errors import InvalidInputError
from mlapi_client.images import grayscale_uint8

GRAY = (np.arange(12 * 10, dtype=np.uint8).reshape(12, 10) * 2).astype(np.uint8)


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(GRAY).save(buffer, fmt)
    return buffer.getvalue()


def test_array_passes_through() -> None:
    assert grayscale_uint8(GRAY) is GRAY
    np.testing.assert_array_equal(grayscale_uint8(GRAY[None]), GRAY)


def test_small_integer_arrays_are_cast() -> None:
    out = grayscale_uint8(GRAY.astype(np.int64))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, GRAY)


def test_pil_png_bytes_and_path_agree(tmp_path: Path) -> None:
    path = tmp_path / "digit.png"
    path.write_bytes(encoded("PNG"))
    for image in (Image.fromarray(GRAY), encoded("PNG"), path, str(path)):
        np.testing.assert_array_equal(grayscale_uint8(image), GRAY)


def test_jpeg_bytes_decode_to_the_right_shape() -> None:
    out = grayscale_uint8(encoded("JPEG"))
    assert out.shape == GRAY.shape
    assert out.dtype == np.uint8


def test_rgb_is_converted_to_luminance() -> None:
    rgb = np.stack([GRAY] * 3, axis=-1)
    np.testing.assert_array_equal(grayscale_uint8(rgb), GRAY)
    np.testing.assert_array_equal(grayscale_uint8(Image.fromarray(rgb)), GRAY)


@pytest.mark.parametrize(
    ("image", "field_got"),
    [
        (np.zeros((2, 3, 4, 5), np.uint8), "[2, 3, 4, 5]"),
        (np.full((8, 8), 0.5), "float64"),
        (np.full((8, 8), 300), "int64"),
        (b"not an image", "12 bytes"),
        (42, "int"),
    ],
)
def test_refusals_name_what_was_wrong(image: object, field_got: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        grayscale_uint8(image)  # type: ignore[arg-type]
    assert info.value.field == "image"
    assert info.value.got == field_got


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read"):
        grayscale_uint8(tmp_path / "missing.png")
