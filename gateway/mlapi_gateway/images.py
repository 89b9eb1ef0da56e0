"""PNG and JPEG bytes to grayscale pixels, sized from the header before anything is decoded."""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
from PIL import Image

from mlapi_gateway import errors

log = logging.getLogger(__name__)
IMAGE_FORMATS = ("PNG", "JPEG")
# Files this small are decoded in the event loop: zlib expands at most ~1000x, so the worst
# case is about 1 MB of output (~1 ms), while the trip to a thread costs ~40-90 us against
# ~30 us to decode a typical 8x8 digit PNG (about 100 bytes; measured with uvloop, 2 CPUs).
INLINE_MAX_BYTES = 1024
Pixels = npt.NDArray[np.uint8]


class ImageDecoder:
    """PNG/JPEG bytes to a grayscale uint8 array, in a bounded pool of threads.

    Pillow reads only the header when it opens an image; the sides and the pixel count are
    checked against the caller's limits then, before a single pixel is decoded, so a small file
    that would decode to hundreds of megabytes is refused for the cost of its header. Opening,
    checking and decoding run in the pool (files up to INLINE_MAX_BYTES excepted), so the event
    loop never waits on Pillow for a large image.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mlapi-image")
        # Pillow warns from 89 Mpx on; the limits here are far lower and refuse such an image
        # before it is decoded, so the warning would only repeat the refusal in the log.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    async def decode(self, data: bytes, max_side_px: int, max_pixels: int) -> Pixels:
        """Decode ``data``, or raise RequestInvalidError naming ``body.image`` and the limits."""
        if len(data) <= INLINE_MAX_BYTES:
            return _decode(data, max_side_px, max_pixels)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _decode, data, max_side_px, max_pixels)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _decode(data: bytes, max_side_px: int, max_pixels: int) -> Pixels:
    expected = f"PNG or JPEG, at most {max_side_px} px a side and {max_pixels} pixels"
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if max(width, height) > max_side_px or width * height > max_pixels:
                raise _refused(f"the image is {width}x{height} pixels", expected)
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except errors.RequestInvalidError:
        raise
    except Image.DecompressionBombError as exc:
        raise _refused(f"the image is too large: {exc}", expected) from exc
    except Exception as exc:  # Pillow raises many types on malformed data (OSError, SyntaxError...)
        log.debug("undecodable image: %s: %s", type(exc).__name__, exc)
        raise _refused(
            f"{len(data)} bytes that do not decode as PNG or JPEG ({exc})", expected
        ) from exc


def _refused(message: str, expected: str) -> errors.RequestInvalidError:
    return errors.RequestInvalidError(
        "the image was refused", [errors.FieldError("body.image", message, expected)]
    )
