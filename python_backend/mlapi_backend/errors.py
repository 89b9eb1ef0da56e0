"""Errors the backend library raises; model.py files turn them into per-request Triton errors."""

from __future__ import annotations


class MlapiBackendError(Exception):
    """Root of every error raised by mlapi_backend."""


class InvalidInputError(MlapiBackendError):
    """A caller sent a tensor that breaks the model's contract (maps to INVALID_ARG / HTTP 400).

    The message always names the tensor (``field``), what was expected and what was received.
    """

    def __init__(self, field: str, expected: str, got: str) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"input '{field}': expected {expected}, got {got}")


class UnavailableError(MlapiBackendError):
    """A valid request that cannot be served now (maps to UNAVAILABLE / HTTP 503).

    E.g. the classifier version it needs failed to load, or a model it calls shed it from a full
    queue; the message names what is unavailable. Worth retrying later, unlike InvalidInputError.
    """


class ModelConfigError(MlapiBackendError):
    """A model configuration the code cannot serve; raised at load time, never per request."""
