"""Inference through the client library: typed digits calls, generic tensors for other models,
streams, and the translation of client errors to gateway errors.

Each worker holds two clients of the library: one for unary calls, HTTP by default (its
keep-alive connections answer a digits call about 0.3 ms sooner than gRPC's Python client,
measured interleaved on the same server; settings.triton_infer_protocol), and one gRPC
channel for streams (ModelStreamInfer: a cancel reaches the model within a decode step).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError

from mlapi_backend.traffic_policy import default_version
from mlapi_client import errors as client_errors
from mlapi_client.async_client import AsyncClient
from mlapi_client.results import DigitsResult, InferResponse, ModelContract
from mlapi_client.traffic import AsyncTrafficController, TrafficStatus
from mlapi_gateway import errors
from mlapi_gateway.problems import field_errors_from_pydantic
from mlapi_gateway.schemas import DigitsPredict, TensorPredict
from mlapi_gateway.settings import GatewaySettings

T = TypeVar("T")
log = logging.getLogger(__name__)
DIGITS = "digits"
IMAGE_FORMATS = ("PNG", "JPEG")
# Files this small are decoded in the event loop: zlib expands at most ~1000x, so the worst
# case is about 1 MB of output (~1 ms), while the trip to a thread costs ~40-90 us against
# ~30 us to decode a typical 8x8 digit PNG (about 100 bytes; measured with uvloop, 2 CPUs).
INLINE_MAX_BYTES = 1024
_DTYPES = {
    "BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}  # fmt: skip


def predict_schema(model: str) -> type[DigitsPredict] | type[TensorPredict]:
    """The body schema of ``model``'s predict route: typed for digits, tensors for the rest."""
    return DigitsPredict if model == DIGITS else TensorPredict


def parse_body(model: str, raw: bytes | dict[str, Any]) -> DigitsPredict | TensorPredict:
    """Validate a predict body for ``model`` (JSON bytes or a parsed dict) or raise RequestInvalid."""
    return parse_as(predict_schema(model), raw)  # type: ignore[return-value]


def parse_as(schema: type[BaseModel], raw: bytes | dict[str, Any]) -> BaseModel:
    try:
        if isinstance(raw, dict):
            return schema.model_validate(raw)
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise errors.RequestInvalid(
            "the request body is invalid", field_errors_from_pydantic(list(exc.errors()))
        ) from exc


class ImageDecoder:
    """PNG/JPEG bytes to a grayscale uint8 array, in a bounded pool of threads.

    Pillow reads only the header when it opens an image; the sides and the pixel count are
    checked against the limits then, before a single pixel is decoded, so a small file that
    would decode to hundreds of megabytes is refused for the cost of its header. Opening,
    checking and decoding run in the pool (files up to INLINE_MAX_BYTES excepted), so the event
    loop never waits on Pillow for a large image.
    """

    def __init__(self, max_side_px: int, max_pixels: int, threads: int) -> None:
        self.max_side_px = max_side_px
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="mlapi-image")
        # Pillow warns from 89 Mpx on; the limits here are far lower and refuse such an image
        # before it is decoded, so the warning would only repeat the refusal in the log.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    async def decode(self, data: bytes) -> np.ndarray:
        if len(data) <= INLINE_MAX_BYTES:
            return self._decode(data)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._decode, data)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode(self, data: bytes) -> np.ndarray:
        expected = f"PNG or JPEG, at most {self.max_side_px} px a side and {self.max_pixels} pixels"
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if max(width, height) > self.max_side_px or width * height > self.max_pixels:
                    raise self._refused(f"the image is {width}x{height} pixels", expected)
                return np.asarray(image.convert("L"), dtype=np.uint8)
        except errors.RequestInvalid:
            raise
        except Image.DecompressionBombError as exc:
            raise self._refused(f"the image is too large: {exc}", expected) from exc
        except (
            Exception
        ) as exc:  # Pillow raises many types on malformed data (OSError, SyntaxError...)
            log.debug("undecodable image: %s: %s", type(exc).__name__, exc)
            raise self._refused(
                f"{len(data)} bytes that do not decode as PNG or JPEG ({exc})", expected
            ) from exc

    @staticmethod
    def _refused(message: str, expected: str) -> errors.RequestInvalid:
        return errors.RequestInvalid(
            "the image was refused", [errors.FieldError("body.image", message, expected)]
        )


class Cached:
    """A value refreshed at most every ``ttl_s`` seconds (one refresh at a time)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._values: dict[Any, tuple[float, Any]] = {}
        self._lock = asyncio.Lock()

    async def get(self, key: Any, load: Callable[[], Awaitable[T]]) -> T:
        hit = self._values.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]  # type: ignore[no-any-return]
        async with self._lock:
            hit = self._values.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]  # type: ignore[no-any-return]
            value = await load()
            self._values[key] = (time.monotonic(), value)
            return value


class Inference:
    """What the routes and the job runner call; every client error leaves as a GatewayError."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.stream_client = AsyncClient(
            f"grpc://{settings.triton_grpc_url}", timeout_s=settings.deadline_s
        )
        self.client = self.stream_client  # with triton_infer_protocol grpc: one channel for all
        if settings.triton_infer_protocol == "http":
            self.client = AsyncClient(
                f"http://{settings.triton_http_url}", timeout_s=settings.deadline_s
            )
        self._contracts = Cached(settings.metadata_cache_s)
        self._traffic = Cached(settings.metadata_cache_s)
        # Reads only, not retried: a Triton that is down must reach the caller as a prompt 503.
        self._traffic_controller = AsyncTrafficController(self.client, DIGITS, retry=False)
        self.images = ImageDecoder(
            settings.image_max_side_px, settings.image_max_pixels, settings.image_decode_threads
        )

    async def close(self) -> None:
        self.images.close()
        await self.stream_client.close()
        if self.client is not self.stream_client:
            await self.client.close()

    # --- translation ---------------------------------------------------------------------

    @contextlib.contextmanager
    def translated(self, model: str, version: str | None = None) -> Iterator[None]:
        """Client errors as gateway errors (the classes are the key, never the message)."""
        try:
            yield
        except client_errors.InvalidInputError as exc:
            field = f"body.{exc.field}" if exc.field else "body"
            raise errors.RequestInvalid(
                f"model '{model}' refused the input",
                [errors.FieldError(field, exc.message, exc.expected)],
            ) from exc
        except client_errors.ModelNotFoundError as exc:
            if version:
                raise errors.NotFound(f"model '{model}' has no version '{version}'") from exc
            raise errors.NotFound(
                f"model '{model}' is not on the server", self.settings.models
            ) from exc
        except client_errors.UnsupportedRequestError as exc:
            raise errors.RequestInvalid(
                f"model '{model}' does not support this call: {exc.message}",
                [errors.FieldError("path.model", "use /stream for streaming models")],
            ) from exc
        except (client_errors.ModelUnavailableError, client_errors.ConnectionFailedError) as exc:
            hint = getattr(exc, "retry_after_s", None)
            retry = max(self.settings.retry_after_s, int(hint or 0))
            raise errors.Unavailable(
                f"model '{model}' cannot serve now ({type(exc).__name__}); retry later", retry
            ) from exc
        except client_errors.AccessDeniedError as exc:
            # The gateway's own configuration, not the caller's request nor the model; the
            # error handler logs it (once, at error level, with the cause and the request id).
            raise errors.AccessKeyRefused(
                "the gateway cannot call Triton now (its access key was refused); retry later",
                self.settings.retry_after_s,
            ) from exc
        except client_errors.InferenceTimeoutError as exc:
            raise errors.DeadlineExceeded(
                f"model '{model}' did not answer within the deadline: send a smaller input, "
                "raise ?timeout_s= (up to the gateway's maximum), or use the async route "
                "POST /v1/jobs and poll GET /v1/jobs/{id}"
            ) from exc
        except client_errors.MlapiError as exc:
            raise errors.ModelFailed(f"model '{model}' failed: {exc.message}") from exc

    def deadline(self, timeout_s: float | None) -> float:
        if timeout_s is None:
            return self.settings.deadline_s
        low, high = self.settings.deadline_min_s, self.settings.deadline_max_s
        if not low <= timeout_s <= high:
            raise errors.RequestInvalid(
                "timeout_s is out of range",
                [
                    errors.FieldError(
                        "query.timeout_s", f"got {timeout_s}", f"{low} to {high} seconds"
                    )
                ],
            )
        return timeout_s

    def check_exposed(self, model: str) -> None:
        if model not in self.settings.models:
            raise errors.NotFound(f"no model '{model}' on this API", self.settings.models)

    # --- discovery -----------------------------------------------------------------------

    async def contract(self, model: str, version: str | None = None) -> ModelContract:
        async def load() -> ModelContract:
            with self.translated(model, version):
                return await self.client.contract(model, version, retry=False)

        return await self._contracts.get((model, version), load)

    async def traffic(self) -> TrafficStatus:
        """digits' default and live classifier versions, over the gateway's own client."""

        async def load() -> TrafficStatus:
            with self.translated(DIGITS):
                return await self._traffic_controller.show()

        return await self._traffic.get(DIGITS, load)

    async def list_models(self) -> list[dict[str, Any]]:
        with self.translated("*"):
            entries = await self.client.list_models(retry=False)
        out = []
        for name in self.settings.models:
            rows = [e for e in entries if e.name == name]
            if not rows:
                continue
            live = sorted({e.version or "" for e in rows if e.state == "READY"} - {""}, key=_num)
            info: dict[str, Any] = {
                "name": name,
                "state": "READY" if any(e.state == "READY" for e in rows) else "UNAVAILABLE",
                "versions": sorted({e.version or "" for e in rows} - {""}, key=_num),
                "live_versions": live,
                "default_version": default_version({}, live),
            }
            if info["state"] == "READY":
                with contextlib.suppress(errors.GatewayError):
                    info["streaming"] = (await self.contract(name)).decoupled
                if name == DIGITS:
                    status = await self.traffic()
                    info["live_versions"] = status.live_versions
                    info["default_version"] = status.default_version or None
            out.append(info)
        return out

    # --- inference -----------------------------------------------------------------------

    async def predict(
        self,
        model: str,
        body: DigitsPredict | TensorPredict,
        version: str | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """One prediction; ``request_id`` is sent to Triton as the inference request's id."""
        if isinstance(body, DigitsPredict):
            return await self._digits(body, version, timeout_s, request_id)
        return await self._tensors(model, body, version, timeout_s, request_id)

    async def _digits(
        self, body: DigitsPredict, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        if version is not None:
            live = (await self.traffic()).live_versions
            if version not in live:
                raise errors.NotFound(
                    f"model 'digits' has no live version '{version}'",
                    [f"digits/versions/{v}" for v in live],
                )
        if body.image is not None:
            image = await self.images.decode(base64.b64decode(body.image))
        else:
            image = np.asarray(body.pixels, dtype=np.uint8)
        with self.translated(DIGITS, version):
            result: DigitsResult = await self.client.digits(
                image,
                top_k=body.top_k,
                version=version,
                timeout_s=timeout_s,
                retry=False,
                request_id=request_id,
            )
        return {"model": DIGITS, **result.to_dict()}

    async def _tensors(
        self,
        model: str,
        body: TensorPredict,
        version: str | None,
        timeout_s: float,
        request_id: str | None,
    ) -> dict[str, Any]:
        contract = await self.contract(model, version)
        if contract.decoupled:
            raise errors.RequestInvalid(
                f"model '{model}' streams its answer",
                [
                    errors.FieldError(
                        "path.model", "streaming model", f"POST /v1/models/{model}/stream"
                    )
                ],
            )
        inputs = tensors_for(contract, body.inputs)
        with self.translated(model, version):
            response = await self.client.infer(
                model,
                inputs,
                version,
                parameters=body.parameters,
                timeout_s=timeout_s,
                retry=False,
                request_id=request_id,
            )
        return answer_of(response)

    async def stream(
        self,
        model: str,
        body: TensorPredict,
        version: str | None,
        timeout_s: float,
        request_id: str | None = None,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """The responses of a decoupled model, as JSON-ready dicts (errors already translated)."""
        contract = await self.contract(model, version)
        if not contract.decoupled:
            raise errors.RequestInvalid(
                f"model '{model}' does not stream",
                [
                    errors.FieldError(
                        "path.model", "not a streaming model", f"POST /v1/models/{model}/predict"
                    )
                ],
            )
        inputs = tensors_for(contract, body.inputs)
        with self.translated(model, version):
            async for response in self.stream_client.stream(
                model,
                inputs,
                version,
                parameters=body.parameters,
                timeout_s=timeout_s,
                request_id=request_id,
            ):
                yield answer_of(response)


def tensors_for(contract: ModelContract, values: dict[str, Any]) -> dict[str, np.ndarray]:
    """JSON values as the model's input tensors, checked against its datatypes and shapes."""
    problems: list[errors.FieldError] = []
    specs = {spec.name: spec for spec in contract.inputs}
    for name in values.keys() - specs.keys():
        problems.append(errors.FieldError(f"body.inputs.{name}", "unknown input", ", ".join(specs)))
    tensors: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        field = f"body.inputs.{name}"
        if name not in values:
            if not spec.optional:
                problems.append(errors.FieldError(field, "missing required input"))
            continue
        expected = f"{spec.datatype} with shape {list(spec.shape)} (-1: any size)"
        try:
            value = values[name]
            if spec.datatype == "BYTES":
                array = np.asarray(value, dtype=np.object_)
                array = np.vectorize(_utf8, otypes=[np.object_])(array) if array.size else array
            else:
                array = np.asarray(value, dtype=_DTYPES[spec.datatype])
        except (ValueError, TypeError, OverflowError, KeyError):
            problems.append(errors.FieldError(field, "values of the wrong type", expected))
            continue
        dims_ok = array.ndim == len(spec.shape) and all(
            want in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        )
        if not dims_ok:
            problems.append(errors.FieldError(field, f"got shape {list(array.shape)}", expected))
            continue
        tensors[name] = array
    if problems:
        raise errors.RequestInvalid(f"inputs do not match model '{contract.name}'", problems)
    return tensors


def answer_of(response: InferResponse) -> dict[str, Any]:
    return {
        "model": response.model_name,
        "model_version": response.model_version,
        "outputs": {name: _json(array) for name, array in response.outputs.items()},
    }


def _utf8(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected strings")
    return value.encode()


def _json(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return (
            np.vectorize(
                lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
                otypes=[object],
            )(array).tolist()
            if array.size
            else []
        )
    return array.tolist()


def _num(version: str) -> tuple[int, str]:
    return (len(version), version)
