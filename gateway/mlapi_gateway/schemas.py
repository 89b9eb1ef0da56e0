"""Request and response bodies (pydantic): validated once, documented in /openapi.json."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SIDE_PX = 1024


class DigitsPredict(BaseModel):
    """``digits``: one image, as base64 PNG/JPEG (``image``) or rows of 0-255 values (``pixels``)."""

    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(default=None, description="base64 PNG or JPEG")
    pixels: list[list[int]] | None = Field(
        default=None,
        description="grayscale rows, each value 0-255",
        examples=[[[0, 255], [255, 0]]],
    )
    top_k: int | None = Field(default=None, ge=1, le=10, description="how many ranked labels")

    @field_validator("image")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
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
        if len(rows) > MAX_SIDE_PX or width > MAX_SIDE_PX:
            raise ValueError(f"expected at most {MAX_SIDE_PX}x{MAX_SIDE_PX} pixels")
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


class TensorPredict(BaseModel):
    """Any other model: input tensors by name (nested lists, batch dimension included)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(min_length=1, examples=[{"delay_ms": [[100]]}])
    parameters: dict[str, int | float | str | bool] | None = None


class Prediction(BaseModel):
    label: str
    score: float


class DigitsAnswer(BaseModel):
    model: str
    model_version: str
    predictions: list[Prediction]
    low_confidence: bool
    metadata: dict[str, Any]


class TensorAnswer(BaseModel):
    model: str
    model_version: str
    outputs: dict[str, Any]


class ModelInfo(BaseModel):
    name: str
    state: str
    versions: list[str]
    live_versions: list[str]
    default_version: str | None = None
    streaming: bool = False


class ModelList(BaseModel):
    models: list[ModelInfo]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(examples=["digits"])
    inputs: list[dict[str, Any]] = Field(min_length=1, description="predict bodies of that model")
    version: str | None = Field(
        default=None, description="pin a version (as in the versioned route)"
    )
    webhook_url: str | None = Field(default=None, max_length=2048)


class JobView(BaseModel):
    id: str
    model: str
    version: str | None
    status: str
    progress: dict[str, int]
    created_at: float
    finished_at: float | None = None
    expires_at: float | None = None
    results: list[dict[str, Any]] | None = None
    webhook: dict[str, Any] | None = None
