"""The Triton access key: where it lives and how each protocol presents it.

The project's tritonserver restricts every API but health (inference, metadata, model config,
statistics, the model repository, logging, trace, shared memory) to callers that send this key
(``--http-restricted-api`` / ``--grpc-restricted-protocol``). Only the project's own processes
hold it: the launcher creates it, the gateway, the validating front, the supervisor and the
``mlapi`` CLI read it. This module is the one place that knows the header names and the file.

Lookup order: ``MLAPI_TRITON_KEY`` (the key itself, e.g. from a Kubernetes Secret as an env
var), then the file named by ``MLAPI_TRITON_KEY_FILE``, then the per-user default file
``$XDG_STATE_HOME/mlapi/triton.key`` (``~/.local/state/mlapi/triton.key``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# Triton checks the HTTP header `<name>: <value>`; over gRPC it expects the metadata key
# `triton-grpc-protocol-<name>` (Triton docs, inference_protocols.md "Limit Endpoint Access").
KEY_HEADER = "mlapi-triton-key"
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"
KEY_ENV = "MLAPI_TRITON_KEY"
KEY_FILE_ENV = "MLAPI_TRITON_KEY_FILE"

# Triton's restriction categories (2.51 src/restricted_features.h). Health stays open so that
# probes need no secret; everything else needs the key.
RESTRICTED_APIS = (
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)


def default_key_file() -> Path:
    """``MLAPI_TRITON_KEY_FILE``, else the per-user state file."""
    named = os.environ.get(KEY_FILE_ENV)
    if named:
        return Path(named).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mlapi" / "triton.key"


def read_key(path: Path | None = None) -> str | None:
    """Return the key from ``MLAPI_TRITON_KEY`` or the key file; None when neither exists."""
    if path is None:
        value = os.environ.get(KEY_ENV, "").strip()
        if value:
            return value
        path = default_key_file()
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    _check_private(path)
    return value or None


def ensure_key(path: Path | None = None) -> str:
    """Return the existing key, or a new random one written to ``path`` (owner-only)."""
    path = path if path is not None else default_key_file()
    existing = read_key(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(32)
    # O_EXCL: two launchers starting at once never overwrite each other's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return ensure_key(path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"Triton key file {path} is readable by others (mode {mode:o}): chmod 600 it"
        )


def http_headers(key: str | None) -> dict[str, str]:
    """Headers that present ``key`` to Triton over HTTP (none without a key)."""
    return {KEY_HEADER: key} if key else {}


def grpc_headers(key: str | None) -> dict[str, str]:
    """Metadata that presents ``key`` to Triton over gRPC (none without a key)."""
    return {GRPC_KEY_HEADER: key} if key else {}


def restriction_args(key: str) -> list[str]:
    """Return the tritonserver arguments that put every API but health behind ``key``."""
    apis = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={apis}:{KEY_HEADER}={key}",
        f"--grpc-restricted-protocol={apis}:{KEY_HEADER}={key}",
    ]


class KeyPlugin:
    """A tritonclient plugin that sends the key with every call of a client, sync or asyncio.

    ``client.register_plugin(KeyPlugin(key, "grpc"))`` works on tritonclient's four clients.
    """

    def __init__(self, key: str | None, protocol: str = "http") -> None:
        self._headers = grpc_headers(key) if protocol == "grpc" else http_headers(key)

    def __call__(self, request: Any) -> None:
        if request.headers is None:
            request.headers = {}
        request.headers.update(self._headers)


def with_key(client: T, key: str | None = None) -> T:
    """``client`` (a tritonclient client) sending ``key`` (default: ``read_key()``)."""
    protocol = "grpc" if "grpc" in type(client).__module__ else "http"
    client.register_plugin(KeyPlugin(key if key is not None else read_key(), protocol))  # type: ignore[attr-defined]
    return client
