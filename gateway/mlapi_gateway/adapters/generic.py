"""The generic adapter: any model without its own, called with named tensors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from mlapi_gateway import tensors
from mlapi_gateway.adapters.base import ModelAdapter
from mlapi_gateway.cache.exact import canonical_tensors
from mlapi_gateway.schemas import TensorPredict


class TensorAdapter(ModelAdapter):
    """Tensors by name in and out, checked against the contract Triton reports for the model."""

    async def check(self, body: BaseModel, version: str | None) -> None:
        assert isinstance(body, TensorPredict)
        tensors.tensors_for(await self.upstream.contract(self.name, version), body.inputs)

    async def infer(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        assert isinstance(body, TensorPredict)
        return await tensors.infer(self.upstream, self.name, body, version, timeout_s, request_id)

    async def cache_request(self, body: BaseModel, version: str | None) -> bytes:
        assert isinstance(body, TensorPredict)
        contract = await self.upstream.contract(self.name, version)
        return canonical_tensors(tensors.tensors_for(contract, body.inputs), body.parameters)
