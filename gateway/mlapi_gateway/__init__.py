"""The API layer in front of Triton: auth, rate limits, validation, ML error semantics, jobs, SSE.

``create_app(settings)`` builds the ASGI app; ``python -m mlapi_gateway`` serves it with uvicorn.
"""

from __future__ import annotations

from mlapi_gateway.app import create_app
from mlapi_gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
