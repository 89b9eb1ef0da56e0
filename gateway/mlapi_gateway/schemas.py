"""Request and response bodies of the core (pydantic): validated once, documented in /openapi.json.

A model's own typed bodies live in its adapter (``mlapi_gateway.adapters``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlapi_gateway import errors
from mlapi_gateway.problems import field_errors_from_pydantic


def parse_as(schema: type[BaseModel], raw: bytes | dict[str, Any]) -> BaseModel:
    """Validate ``raw`` (JSON bytes or a parsed dict) as ``schema``, or raise RequestInvalidError."""
    try:
        if isinstance(raw, dict):
            return schema.model_validate(raw)
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise errors.RequestInvalidError(
            "the request body is invalid", field_errors_from_pydantic(list(exc.errors()))
        ) from exc


class TensorPredict(BaseModel):
    """Any other model: input tensors by name (nested lists, batch dimension included)."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(
        min_length=1, examples=[{"text_input": ["Once upon"], "max_tokens": [8]}]
    )
    parameters: dict[str, int | float | str | bool] | None = None


class TensorAnswer(BaseModel):
    """A model's output tensors by name, with the model and version that served them."""

    model: str
    model_version: str
    outputs: dict[str, Any]


class ModelInfo(BaseModel):
    """One exposed model: its state, versions, default version, whether it streams."""

    name: str
    state: str
    versions: list[str]
    live_versions: list[str]
    default_version: str | None = None
    streaming: bool = False


class ModelList(BaseModel):
    """The exposed models that are on the server."""

    models: list[ModelInfo]


class JobCreate(BaseModel):
    """A job: predict bodies of one model, run in the background, optionally a webhook."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(examples=["digits"])
    inputs: list[dict[str, Any]] = Field(min_length=1, description="predict bodies of that model")
    version: str | None = Field(
        default=None, description="pin a version (as in the versioned route)"
    )
    webhook_url: str | None = Field(default=None, max_length=2048)


class JobView(BaseModel):
    """A job's status, progress and, once finished, its results (until they expire)."""

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
