"""What every OpenAI-compatible route does first: admit the caller, find the model, answer errors."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.auth import Principal
from mlapi_gateway.openai.budgets import Budgets
from mlapi_gateway.openai.error_objects import error_response
from mlapi_gateway.request_id import request_id_of
from mlapi_gateway.services import Services, services

log = logging.getLogger(__name__)
PREFIX = "/openai/v1"


@dataclass
class Call:
    """One admitted call: its services, caller and the x-ratelimit headers drawn so far."""

    request: Request
    svc: Services
    principal: Principal
    budgets: Budgets
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        return request_id_of(self.request.scope)

    def deadline_s(self) -> float:
        """Return the request's deadline: the gateway's, or ``?timeout_s=`` within its bounds.

        OpenAI's clients pass it as a query parameter (``extra_query``).
        """
        raw = self.request.query_params.get("timeout_s")
        if raw is None:
            return self.svc.inference.deadline(None)
        try:
            return self.svc.inference.deadline(float(raw))
        except ValueError as exc:
            raise errors.RequestInvalidError(
                "timeout_s is not a number",
                [errors.FieldError("timeout_s", f"got {raw!r}", "a number of seconds")],
            ) from exc

    def model(self, name: str, kind: str) -> str:
        """Return ``name`` if it is an exposed model serving ``kind`` (generation, embedding).

        404 (naming the models of that kind) when it is not.
        """
        settings = self.svc.settings
        served = (
            settings.openai_generation_models
            if kind == "generation"
            else settings.openai_embedding_models
        )
        usable = [m for m in served if m in settings.models]
        if name not in usable:
            raise errors.NotFoundError(
                f"the model '{name}' does not exist or serves no {kind}", usable
            )
        self.request.state.model = name  # a metrics label once known
        return name

    @contextlib.contextmanager
    def loaded(self, model: str) -> Iterator[None]:
        """Answer a configured model missing on the server (unloaded, loading) as a 503.

        Its name was checked against the models these routes serve: for the caller it exists,
        it is just not ready now (the native routes say 404 "not on the server").
        """
        try:
            yield
        except errors.NotFoundError as exc:
            raise errors.UnavailableError(
                f"model '{model}' is not loaded now; retry later", self.svc.settings.retry_after_s
            ) from exc


async def admit(request: Request) -> Call:
    """Authenticate (Bearer key, predict scope) and take one request of the plan's limit."""
    svc = services(request)
    principal = await svc.gate.admit(request, "predict")
    return Call(request, svc, principal, request.app.state.openai_budgets)


Endpoint = Callable[[Request], Awaitable[Response]]


def openai_errors(endpoint: Endpoint) -> Endpoint:
    """Answer the gateway errors of ``endpoint`` as OpenAI error objects (with its headers)."""

    @functools.wraps(endpoint)
    async def answered(request: Request) -> Response:
        try:
            return await endpoint(request)
        except errors.GatewayError as exc:
            headers = getattr(request.state, "openai_headers", None)
            where = f"{request.method} {request.url.path}"
            return error_response(exc, request_id_of(request.scope), where, headers)

    return answered
