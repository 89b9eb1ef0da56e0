"""The ``digits`` adapter: one image (base64 PNG/JPEG or rows of pixels) -> ranked labels.

Its limits are the model's: ``max_top_k`` and the image sides come from the served config
(re-read every ``metadata_cache_s``), the sides falling back to the preprocessing library's
bounds while the config names none. The gateway's ``image_max_side_px`` and
``image_max_pixels`` may only lower them. The lower side bound is documented here and checked
by the model (a job's inputs are checked when it runs).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlapi_backend import preprocessing
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.model_config import ModelConfig
from mlapi_client.async_client import AsyncClient
from mlapi_client.traffic import AsyncTrafficController, TrafficStatus
from mlapi_gateway import errors
from mlapi_gateway.adapters.base import ModelAdapter
from mlapi_gateway.cache.exact import CacheScope, scope_of_policy
from mlapi_gateway.images import ImageDecoder
from mlapi_gateway.settings import GatewaySettings
from mlapi_gateway.upstream import Cached, Upstream

log = logging.getLogger(__name__)

# Parameters of the model's config.pbtxt that bound a request.
MAX_TOP_K_PARAMETER = "max_top_k"
MIN_SIDE_PARAMETER = "min_side_px"
MAX_SIDE_PARAMETER = "max_side_px"
DEFAULT_MAX_TOP_K = 10  # the model's default (DigitsSettings.from_config)

# A held-out digit (a 9) of the bundled data, as rows and as PNG: the documented examples.
EXAMPLE_DIGIT = [
    [0, 0, 112, 207, 159, 16, 0, 0], [0, 16, 239, 48, 143, 159, 0, 0],
    [0, 48, 255, 64, 207, 175, 0, 0], [0, 0, 96, 191, 191, 255, 0, 0],
    [0, 0, 0, 0, 0, 191, 80, 0], [0, 0, 0, 0, 0, 80, 175, 0],
    [0, 16, 175, 32, 0, 112, 175, 0], [0, 0, 112, 207, 255, 239, 64, 0],
]  # fmt: skip
EXAMPLE_DIGIT_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAQUlEQVR4nC3GwRQAIRQAwHkRfIQQFiGEEBYhk0UIIYQQ"
    "QgmhvTSnQVs9IPbzdZIcUQK8cx7XrDd1SGJkGbR1dvED7bwON7phfIsAAAAASUVORK5CYII="
)


@dataclass(frozen=True)
class DigitsLimits:
    """What one request may ask of the model: image sides, pixel count, ``top_k``."""

    min_side_px: int
    max_side_px: int
    max_pixels: int
    max_top_k: int

    @classmethod
    def from_config(cls, config: dict[str, Any], settings: GatewaySettings) -> DigitsLimits:
        """Read the limits of a served config (Triton's JSON), capped by the gateway's own.

        Parsed as the model parses them (``DigitsSettings.from_config``: same defaults and
        bounds), so the gateway and the model agree on every config the model accepts;
        ModelConfigError for one it would refuse.
        """
        parsed = ModelConfig.from_json(config)
        min_side = parsed.int_parameter(
            MIN_SIDE_PARAMETER, preprocessing.MIN_SIDE, 1, preprocessing.SIDE_CEILING
        )
        max_side = parsed.int_parameter(
            MAX_SIDE_PARAMETER,
            max(preprocessing.MAX_SIDE, min_side),
            min_side,
            preprocessing.SIDE_CEILING,
        )
        if settings.image_max_side_px is not None:
            max_side = min(max_side, settings.image_max_side_px)
        max_pixels = max_side * max_side
        if settings.image_max_pixels is not None:
            max_pixels = min(max_pixels, settings.image_max_pixels)
        # The model bounds max_top_k by its label count, which only it knows.
        max_top_k = parsed.int_parameter(MAX_TOP_K_PARAMETER, DEFAULT_MAX_TOP_K, 1, 2**31 - 1)
        return cls(
            min_side_px=min_side, max_side_px=max_side, max_pixels=max_pixels, max_top_k=max_top_k
        )

    def check(self, body: DigitsPredict) -> None:
        """Refuse a ``top_k`` or a ``pixels`` grid over the limits (RequestInvalidError)."""
        problems: list[errors.FieldError] = []
        if body.top_k is not None and body.top_k > self.max_top_k:
            problems.append(
                errors.FieldError(
                    "body.top_k",
                    f"Input should be less than or equal to {self.max_top_k}",
                    f"an integer in 1..{self.max_top_k}",
                )
            )
        if body.pixels is not None:
            height, width = len(body.pixels), len(body.pixels[0])
            if max(height, width) > self.max_side_px or height * width > self.max_pixels:
                problems.append(
                    errors.FieldError(
                        "body.pixels",
                        f"{height}x{width} pixels",
                        f"at most {self.max_side_px} px a side and {self.max_pixels} pixels",
                    )
                )
        if problems:
            raise errors.RequestInvalidError("the request body is invalid", problems)


class DigitsPredict(BaseModel):
    """``digits``: one image, as base64 PNG/JPEG (``image``) or rows of 0-255 values (``pixels``)."""

    # strict: "3" is not a top_k, nor "7" a pixel (the schema says integers).
    model_config = ConfigDict(extra="forbid", strict=True)

    # Decoded from base64 once, while the body is validated.
    image: bytes | None = Field(default=None, description="base64 PNG or JPEG")
    pixels: list[list[int]] | None = Field(
        default=None, description="grayscale rows, each value 0-255"
    )
    top_k: int | None = Field(default=None, ge=1, description="how many ranked labels")

    @field_validator("top_k", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        # JSON (and its schema) count 3.0 as the integer 3; strict mode alone would refuse it.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @field_validator("image", mode="before")
    @classmethod
    def _base64(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError("not valid base64") from exc
        return value

    @field_validator("pixels")
    @classmethod
    def _pixels(cls, rows: list[list[int]] | None) -> list[list[int]] | None:
        if rows is None:
            return rows
        if not rows or not rows[0]:
            raise ValueError("expected at least one row of at least one pixel")
        width = len(rows[0])
        for index, row in enumerate(rows):
            if len(row) != width:
                raise ValueError(f"row {index} has {len(row)} values, row 0 has {width}")
            if min(row) < 0 or max(row) > 255:
                raise ValueError(f"row {index} has values outside 0-255")
        return rows

    @model_validator(mode="after")
    def _one_of(self) -> DigitsPredict:
        if (self.image is None) == (self.pixels is None):
            raise ValueError("send exactly one of 'image' (base64 PNG/JPEG) or 'pixels'")
        return self


class Prediction(BaseModel):
    """One ranked label and its score."""

    label: str
    score: float


class DigitsAnswer(BaseModel):
    """``digits``' answer: ranked labels, the low-confidence flag, the model's metadata."""

    model: str
    model_version: str
    predictions: list[Prediction]
    low_confidence: bool
    metadata: dict[str, Any]


class DigitsAdapter(ModelAdapter):
    """Typed calls of ``digits``, pinned classifier versions, traffic info in the model list."""

    body_schema: ClassVar[type[BaseModel]] = DigitsPredict
    answer_schema: ClassVar[type[BaseModel]] = DigitsAnswer
    typed: ClassVar[bool] = True

    def __init__(self, name: str, upstream: Upstream) -> None:
        super().__init__(name, upstream)
        settings = upstream.settings
        self.images = ImageDecoder(settings.image_decode_threads)
        # Until the config is read: the library's sides, no top_k bound of the gateway's.
        self.known = DigitsLimits.from_config({}, settings)
        self._config: dict[str, Any] | None = None
        self._traffic = Cached(settings.metadata_cache_s)
        # Reads only, not retried: a Triton that is down must reach the caller as a prompt 503.
        # The controller reads model_config and live_versions, both in the TritonClient surface.
        self._controller = AsyncTrafficController(
            cast(AsyncClient, upstream.client), name, retry=False
        )

    async def close(self) -> None:
        self.images.close()

    async def limits(self, wait_s: float | None = None) -> DigitsLimits:
        """Return the model's limits, from its config as last read (at most metadata_cache_s old).

        Once a config was read, a failing or slow re-read never fails a request: the limits
        last known stay in force (Triton refuses what the model would). Before that, the read
        waits at most ``wait_s`` and its failure is the request's (503 when Triton is down).
        """
        try:
            config = await self.upstream.model_config(self.name, wait_s)
        except (errors.GatewayError, TimeoutError) as exc:
            if self._config is not None:
                return self.known
            if isinstance(exc, TimeoutError):
                raise errors.UnavailableError(
                    f"model '{self.name}': its config could not be read within {wait_s:.1f} s",
                    self.upstream.settings.retry_after_s,
                ) from exc
            raise
        if config is not self._config:  # parsed once per read of the config, not per request
            try:
                self.known = DigitsLimits.from_config(config, self.upstream.settings)
            except ModelConfigError as exc:  # the model refuses such a config too
                log.warning("keeping the last known limits of '%s': %s", self.name, exc)
            self._config = config
        return self.known

    async def discover(self) -> None:
        await self.limits()

    async def traffic(self) -> TrafficStatus:
        """Return the default and live classifier versions, over the gateway's own client."""

        async def load() -> TrafficStatus:
            with self.upstream.translated(self.name):
                return await self._controller.show()

        return await self._traffic.get(self.name, load)

    async def check(self, body: BaseModel, version: str | None) -> None:
        assert isinstance(body, DigitsPredict)
        limits = self.known
        # Whatever the config read meets, the limits last known decide; the job's run checks
        # again. A submission must not fail for a Triton that is slow or down.
        with contextlib.suppress(errors.GatewayError, TimeoutError):
            limits = await self.limits(wait_s=self.upstream.settings.ready_timeout_s)
        limits.check(body)

    async def infer(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        assert isinstance(body, DigitsPredict)
        limits = await self.limits(wait_s=timeout_s)
        limits.check(body)
        if version is not None:
            live = (await self.traffic()).live_versions
            if version not in live:
                raise errors.NotFoundError(
                    f"model '{self.name}' has no live version '{version}'",
                    [f"{self.name}/versions/{v}" for v in live],
                )
        if body.image is not None:
            image = await self.images.decode(body.image, limits.max_side_px, limits.max_pixels)
        else:
            image = np.asarray(body.pixels, dtype=np.uint8)
        with self.upstream.translated(self.name, version):
            result = await self.upstream.client.digits(
                image,
                top_k=body.top_k,
                version=version,
                timeout_s=timeout_s,
                retry=False,
                request_id=request_id,
            )
        return {"model": self.name, **result.to_dict()}

    async def cache_scope(self, version: str | None) -> CacheScope | str:
        """Resolve the classifier version under the traffic policy (a split is not cached)."""
        try:
            status = await self.traffic()
        except errors.GatewayError:
            return "traffic policy unknown"
        return scope_of_policy(status.weights, status.shadow, status.live_versions, version)

    async def describe(self, info: dict[str, Any]) -> dict[str, Any]:
        status = await self.traffic()
        return {
            **info,
            "live_versions": status.live_versions,
            "default_version": status.default_version or None,
        }

    def revision(self) -> Hashable:
        return self.known

    def documented_schemas(self) -> dict[str, dict[str, Any]]:
        schemas = super().documented_schemas()
        _document_body(schemas[DigitsPredict.__name__], self.known)
        return schemas


def _document_body(schema: dict[str, Any], limits: DigitsLimits) -> None:
    """Document what the gateway and the model together accept: one of image and pixels."""
    side = {"minItems": limits.min_side_px, "maxItems": limits.max_side_px}
    grey = {"type": "integer", "minimum": 0, "maximum": 255}
    properties = schema["properties"]
    properties["image"] = {
        "anyOf": [{"type": "string", "contentEncoding": "base64"}, {"type": "null"}],
        "description": "base64 PNG or JPEG",
    }
    properties["pixels"] = {
        "anyOf": [
            {"type": "array", **side, "items": {"type": "array", **side, "items": grey}},
            {"type": "null"},
        ],
        "description": "grayscale rows of equal length, each value 0-255",
    }
    if limits.max_top_k is not None:
        properties["top_k"]["anyOf"][0]["maximum"] = limits.max_top_k
    schema["oneOf"] = [
        {"required": ["image"], "properties": {"image": {"type": "string"}}},
        {"required": ["pixels"], "properties": {"pixels": {"type": "array"}}},
    ]
    schema["examples"] = [{"pixels": EXAMPLE_DIGIT, "top_k": 3}, {"image": EXAMPLE_DIGIT_PNG}]
