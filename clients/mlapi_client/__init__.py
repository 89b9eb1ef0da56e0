"""Typed Python clients for the project's models over Triton HTTP and gRPC, sync and asyncio."""

from mlapi_client.async_client import AsyncClient
from mlapi_client.coalesce import Coalescing
from mlapi_client.errors import (
    AccessDeniedError,
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    MlapiError,
    ModelCrashedError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
    ServerOverloadedError,
    UnsupportedRequestError,
)
from mlapi_client.results import (
    DigitsResult,
    InferResponse,
    ModelContract,
    ModelEntry,
    Prediction,
    TensorSpec,
)
from mlapi_client.settings import NO_RETRY, ClientSettings, Endpoint, RetryPolicy
from mlapi_client.sync_client import Client

__all__ = [
    "NO_RETRY",
    "AccessDeniedError",
    "AsyncClient",
    "Client",
    "ClientSettings",
    "Coalescing",
    "ConnectionFailedError",
    "DigitsResult",
    "Endpoint",
    "InferResponse",
    "InferenceTimeoutError",
    "InvalidInputError",
    "MlapiError",
    "ModelContract",
    "ModelCrashedError",
    "ModelEntry",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "Prediction",
    "RetryPolicy",
    "ServerError",
    "ServerOverloadedError",
    "TensorSpec",
    "UnsupportedRequestError",
]
