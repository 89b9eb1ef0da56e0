"""Turn what a user holds (array, PIL image, path, PNG/JPEG bytes) into a grayscale uint8 array."""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from mlapi_client.errors import InvalidInputError

ImageLike = npt.NDArray[Any] | Image.Image | str | os.PathLike[str] | bytes | bytearray

_EXPECTED = "a grayscale or RGB image: uint8 array [H, W], PIL image, file path, or PNG/JPEG bytes"


def grayscale_uint8(image: ImageLike, field: str = "image") -> npt.NDArray[Any]:
    """Return a 2-D uint8 array [H, W]; colour is converted with Pillow's luminance ("L")."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if isinstance(image, (bytes, bytearray)):
        return _decode(io.BytesIO(bytes(image)), field, f"{len(image)} bytes")
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as file:
                return _decode(io.BytesIO(file.read()), field, f"file {os.fspath(image)!r}")
        except OSError as exc:
            raise InvalidInputError(
                f"input '{field}': cannot read {os.fspath(image)!r}: {exc.strerror}",
                field=field,
                expected="a readable image file",
                got=os.fspath(image),
            ) from exc
    if isinstance(image, np.ndarray):
        return _from_array(image, field)
    raise InvalidInputError(
        f"input '{field}': expected {_EXPECTED}, got {type(image).__name__}",
        field=field,
        expected=_EXPECTED,
        got=type(image).__name__,
    )


def _decode(data: io.BytesIO, field: str, what: str) -> npt.NDArray[Any]:
    try:
        with Image.open(data) as decoded:
            return np.asarray(decoded.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInputError(
            f"input '{field}': {what} is not a PNG/JPEG image Pillow can decode",
            field=field,
            expected="PNG or JPEG data",
            got=what,
        ) from exc


def _from_array(array: npt.NDArray[Any], field: str) -> npt.NDArray[Any]:
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).convert("L"), dtype=np.uint8)
    if array.ndim != 2:
        raise InvalidInputError(
            f"input '{field}': expected a 2-D array [H, W] (or [1, H, W], or [H, W, 3]), got shape {array.shape}",
            field=field,
            expected="[H, W]",
            got=str(list(array.shape)),
        )
    if array.dtype == np.uint8:
        return array
    integral = array.dtype.kind in "iub" and (
        array.size == 0 or (array.min() >= 0 and array.max() <= 255)
    )
    if not integral:
        raise InvalidInputError(
            f"input '{field}': expected uint8 pixel values 0..255, got a {array.dtype} array",
            field=field,
            expected="uint8 0..255",
            got=str(array.dtype),
        )
    return array.astype(np.uint8)
