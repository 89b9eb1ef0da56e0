"""Client settings: where the server is, which protocol, timeouts and the retry policy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from mlapi_client import access

Protocol = Literal["http", "grpc"]

DEFAULT_TIMEOUT_S = 30.0
_SCHEMES: dict[str, tuple[Protocol, bool]] = {
    "http": ("http", False),
    "https": ("http", True),
    "grpc": ("grpc", False),
    "grpcs": ("grpc", True),
}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped by a total deadline across attempts.

    Only ``retryable`` errors (connection failures, unavailable or overloaded models) are
    retried; a server's Retry-After hint raises the wait when it is longer than the backoff.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    deadline_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.deadline_s <= 0:
            raise ValueError("backoff and deadline must be positive")

    def backoff_cap_s(self, retry_number: int) -> float:
        """Upper bound of the jittered wait before retry ``retry_number`` (1-based)."""
        return min(
            self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry_number - 1)
        )


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class Endpoint:
    """A server address with its protocol: ``http://host:8000`` or ``grpc://host:8001``."""

    protocol: Protocol
    address: str
    ssl: bool = False

    @classmethod
    def parse(cls, url: str, protocol: Protocol | None = None) -> Endpoint:
        """Read ``url``; its scheme picks the protocol, else ``protocol`` does (default http).

        A scheme that contradicts an explicit ``protocol`` is an error rather than a guess.
        """
        if "://" not in url:
            return cls(protocol or "http", url.rstrip("/"))
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(
                f"unsupported URL scheme {parts.scheme!r} in {url!r}: use http(s):// or grpc(s)://"
            )
        scheme_protocol, ssl = _SCHEMES[parts.scheme]
        if protocol is not None and protocol != scheme_protocol:
            raise ValueError(
                f"URL {url!r} is {scheme_protocol}, but protocol={protocol!r} was asked"
            )
        if not parts.netloc:
            raise ValueError(f"URL {url!r} has no host")
        return cls(scheme_protocol, parts.netloc, ssl)

    @property
    def url(self) -> str:
        return f"{self.protocol}{'s' if self.ssl else ''}://{self.address}"


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client needs; ``from_env`` reads ``MLAPI_URL`` and the Triton port variables."""

    endpoint: Endpoint
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Sent with every call (mlapi_client.access); None: the server is open, or not Triton.
    triton_key: str | None = None

    @classmethod
    def from_env(cls, protocol: Protocol | None = None) -> ClientSettings:
        url = os.environ.get("MLAPI_URL")
        if url:
            endpoint = Endpoint.parse(url, protocol)
        elif protocol == "grpc":
            endpoint = Endpoint("grpc", f"localhost:{os.environ.get('TRITON_GRPC_PORT', '8001')}")
        else:
            endpoint = Endpoint("http", f"localhost:{os.environ.get('TRITON_HTTP_PORT', '8000')}")
        timeout_s = float(os.environ.get("MLAPI_TIMEOUT_S", DEFAULT_TIMEOUT_S))
        return cls(endpoint=endpoint, timeout_s=timeout_s, triton_key=access.read_key())
