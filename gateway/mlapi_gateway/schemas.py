"""Request and response bodies (pydantic): validated once, documented in /openapi.json."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_SIDE_PX = 1024


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
MIN_SIDE_PX = 8  # the digits model refuses smaller images (400 naming body.image)


def _digits_schema(schema: dict[str, Any]) -> None:
    """The documented body: what the gateway and the model together accept, exactly one of
    ``image`` and ``pixels``, sides 8..1024 (the model checks the lower bound)."""
    side = {"minItems": MIN_SIDE_PX, "maxItems": MAX_SIDE_PX}
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
    schema["oneOf"] = [
        {"required": ["image"], "properties": {"image": {"type": "string"}}},
        {"required": ["pixels"], "properties": {"pixels": {"type": "array"}}},
    ]
    schema["examples"] = [{"pixels": EXAMPLE_DIGIT, "top_k": 3}, {"image": EXAMPLE_DIGIT_PNG}]


class DigitsPredict(BaseModel):
    """``digits``: one image, as base64 PNG/JPEG (``image``) or rows of 0-255 values (``pixels``)."""

    # strict: "3" is not a top_k, nor "7" a pixel (the schema says integers).
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_digits_schema)

    image: str | None = Field(default=None, description="base64 PNG or JPEG")
    pixels: list[list[int]] | None = Field(
        default=None, description="grayscale rows, each value 0-255"
    )
    top_k: int | None = Field(default=None, ge=1, le=10, description="how many ranked labels")

    @field_validator("top_k", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        # JSON (and its schema) count 3.0 as the integer 3; strict mode alone would refuse it.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

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

    inputs: dict[str, Any] = Field(
        min_length=1, examples=[{"text_input": ["Once upon"], "max_tokens": [8]}]
    )
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
