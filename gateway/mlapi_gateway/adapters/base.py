"""The interface of a public model's adapter: what the gateway core asks of each model.

The core (routes, jobs, streaming, discovery) knows models only through this interface; what
one model accepts, how its body becomes a call and how its answer reads lives in its adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Hashable
from typing import Any, ClassVar

from pydantic import BaseModel

from mlapi_gateway import tensors
from mlapi_gateway.schemas import TensorAnswer, TensorPredict, parse_as
from mlapi_gateway.upstream import Upstream

Body = bytes | dict[str, Any]


class ModelAdapter(ABC):
    """One public model: its body schema, the call a body makes, the answer it returns.

    The defaults fit any model called with named tensors; an adapter overrides what its model
    types more precisely. ``typed``: /openapi.json gives the model predict paths of its own
    with ``body_schema`` and ``answer_schema`` (the generic paths document tensors).
    """

    body_schema: ClassVar[type[BaseModel]] = TensorPredict
    answer_schema: ClassVar[type[BaseModel]] = TensorAnswer
    typed: ClassVar[bool] = False

    def __init__(self, name: str, upstream: Upstream) -> None:
        self.name = name
        self.upstream = upstream

    def parse(self, raw: Body) -> BaseModel:
        """Validate a predict body (JSON bytes or a parsed dict), or raise RequestInvalidError."""
        return parse_as(self.body_schema, raw)

    @abstractmethod
    async def check(self, body: BaseModel, version: str | None) -> None:
        """Refuse now (RequestInvalidError) what the model would refuse, e.g. for a job's inputs."""

    @abstractmethod
    async def predict(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        """Run one prediction; ``request_id`` is the inference request's id on Triton."""

    def stream(
        self, body: TensorPredict, version: str | None, timeout_s: float, request_id: str | None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Relay a decoupled model's responses (errors already translated)."""
        return tensors.stream(self.upstream, self.name, body, version, timeout_s, request_id)

    async def describe(self, info: dict[str, Any]) -> dict[str, Any]:
        """Complete the model list's entry ``info`` of a READY model (e.g. its live versions)."""
        return info

    async def discover(self) -> None:
        """Read what the adapter needs of the model's config (at start; requests re-read it)."""
        return None

    async def close(self) -> None:
        """Release what the adapter holds (threads, connections)."""
        return None

    def revision(self) -> Hashable:
        """Return what the documented schemas depend on beyond the code (None: nothing)."""
        return None

    def documented_schemas(self) -> dict[str, dict[str, Any]]:
        """Return the JSON schemas of the body and the answer, by component name."""
        return {
            schema.__name__: schema.model_json_schema(ref_template="#/components/schemas/{model}")
            for schema in (self.body_schema, self.answer_schema)
        }
