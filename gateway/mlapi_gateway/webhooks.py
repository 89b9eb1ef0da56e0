"""Webhooks: target checks against SSRF, HMAC-SHA256 signatures, delivery with backoff.

Signature: ``X-Mlapi-Signature: sha256=<hex>`` of HMAC-SHA256(secret, f"{timestamp}.{body}"),
with ``X-Mlapi-Timestamp`` (Unix seconds) so a receiver can refuse replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

import httpx

from mlapi_gateway.errors import FieldError, RequestInvalid

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Mlapi-Signature"
TIMESTAMP_HEADER = "X-Mlapi-Timestamp"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_target(url: str, allow: list[Network]) -> None:
    """Refuse URLs that are not http(s) or resolve to a private, loopback, link-local, multicast
    or reserved address, unless that address is inside an allow-listed network."""

    def refuse(message: str) -> RequestInvalid:
        return RequestInvalid(
            "webhook_url is not an allowed target",
            [FieldError("body.webhook_url", message, "a public http(s) URL")],
        )

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("expected an absolute http(s) URL")
    if parts.username or parts.password:
        raise refuse("credentials in the URL are not allowed")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve(parts.hostname, port)
    except (OSError, ValueError) as exc:
        raise refuse(f"cannot resolve the host: {exc}") from None
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if _refused(address) and not any(address in net for net in allow):
            raise refuse(f"the host resolves to {address}, a non-public address")


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: str,
    allow: list[Network],
    timestamp: int,
    max_attempts: int,
    backoff_s: float,
) -> tuple[bool, int, str]:
    """POST ``body`` until a 2xx answer or ``max_attempts``; (delivered, attempts, last outcome).

    The target is checked again before each attempt (DNS may have changed since submission),
    and redirects are not followed (they could point inside).
    """
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    outcome = ""
    for attempt in range(1, max_attempts + 1):
        try:
            await asyncio.to_thread(check_target, url, allow)
            reply = await client.post(url, content=body, headers=headers)
            outcome = f"HTTP {reply.status_code}"
            if 200 <= reply.status_code < 300:
                return True, attempt, outcome
        except RequestInvalid as exc:
            return False, attempt, exc.errors[0].message
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        log.info("webhook to %s failed (attempt %d): %s", url, attempt, outcome)
        if attempt < max_attempts:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
    return False, max_attempts, outcome
