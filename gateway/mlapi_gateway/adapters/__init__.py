"""One adapter per public model, chosen by model name; the rest get the generic tensor adapter.

Adding a public model with a typed API: write its adapter module here and name it in ADAPTERS.
"""

from __future__ import annotations

from mlapi_gateway.adapters.base import ModelAdapter
from mlapi_gateway.adapters.digits import DigitsAdapter
from mlapi_gateway.adapters.generic import TensorAdapter
from mlapi_gateway.adapters.text_embedder import TextEmbedderAdapter
from mlapi_gateway.upstream import Upstream

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "digits": DigitsAdapter,
    "text_embedder": TextEmbedderAdapter,
}


def adapters_for(models: list[str], upstream: Upstream) -> dict[str, ModelAdapter]:
    """Build the adapter of each exposed model."""
    return {name: ADAPTERS.get(name, TensorAdapter)(name, upstream) for name in models}


__all__ = ["ADAPTERS", "ModelAdapter", "TensorAdapter", "adapters_for"]
