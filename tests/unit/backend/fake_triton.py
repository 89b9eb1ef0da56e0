"""A stand-in for ``triton_python_backend_utils`` for pure-logic tests of the response helpers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class TritonError:
    INVALID_ARG, INTERNAL, UNAVAILABLE, CANCELLED = (
        "INVALID_ARG",
        "INTERNAL",
        "UNAVAILABLE",
        "CANCELLED",
    )

    def __init__(self, message: str, code: str) -> None:
        self.message, self.code = message, code


class Logger:
    """Records every line as (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log_error(self, message: str) -> None:
        self.lines.append(("error", message))

    def log_warn(self, message: str) -> None:
        self.lines.append(("warn", message))


def tensor(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    if array.dtype == np.complex64:  # stands in for what pb_utils.Tensor refuses
        raise TypeError(f"unsupported dtype {array.dtype}")
    return name, array


def pb_utils() -> SimpleNamespace:
    """A fresh fake module with its own Logger."""
    return SimpleNamespace(
        TritonError=TritonError,
        Tensor=tensor,
        InferenceResponse=lambda tensors=None, error=None: SimpleNamespace(
            tensors=tensors, error=error
        ),
        Logger=Logger(),
        TRITONSERVER_RESPONSE_COMPLETE_FINAL=1,
    )


class Request:
    """A request that carries a prepared value and an id."""

    def __init__(self, rid: str, value: object) -> None:
        self.rid, self.value = rid, value

    def request_id(self) -> str:
        return self.rid
