"""OpenAI-compatible routes under /openai/v1 over the project's models (docs/openai.md).

An application written for OpenAI's API changes only its ``base_url``: models, completions
and chat completions (text_generator), embeddings (text_embedder), with the gateway's keys,
limits and error semantics, answered in OpenAI's formats.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.openai.budgets import Budgets
from mlapi_gateway.openai.context import PREFIX, admit, openai_errors
from mlapi_gateway.openai.embeddings import embeddings
from mlapi_gateway.openai.generation import chat_completions, completions
from mlapi_gateway.routes import json_response
from mlapi_gateway.settings import GatewaySettings

OWNER = "mlapi"


async def _served(request: Request) -> list[dict[str, object]]:
    call = await admit(request)
    settings = call.svc.settings
    offered = set(settings.openai_generation_models) | set(settings.openai_embedding_models)
    ready = [m["name"] for m in await call.svc.inference.list_models() if m["state"] == "READY"]
    return [
        {"id": name, "object": "model", "created": 0, "owned_by": OWNER}
        for name in ready
        if name in offered
    ]


@openai_errors
async def list_models(request: Request) -> Response:
    """OpenAI's GET /models: the exposed models these routes serve that are ready."""
    return json_response({"object": "list", "data": await _served(request)})


@openai_errors
async def get_model(request: Request) -> Response:
    """OpenAI's GET /models/{model}."""
    name = request.path_params["model"]
    served = await _served(request)
    for entry in served:
        if entry["id"] == name:
            return json_response(entry)
    raise errors.NotFoundError(f"the model '{name}' does not exist", [str(m["id"]) for m in served])


def add_openai_routes(app: FastAPI, settings: GatewaySettings) -> Budgets:
    """Add the routes under PREFIX; return their budgets (the app's lifespan closes them)."""
    budgets = Budgets(settings)
    app.state.openai_budgets = budgets
    for path, endpoint, method in (
        ("/models", list_models, "GET"),
        ("/models/{model}", get_model, "GET"),
        ("/completions", completions, "POST"),
        ("/chat/completions", chat_completions, "POST"),
        ("/embeddings", embeddings, "POST"),
    ):
        # Documented by OpenAI's API reference (docs/openai.md), not in /openapi.json: its
        # bodies and error objects are OpenAI's, not the gateway's problem documents.
        app.router.add_api_route(
            PREFIX + path, endpoint, methods=[method], tags=["openai"], include_in_schema=False
        )
    return budgets


__all__ = ["PREFIX", "add_openai_routes"]
