"""Webhooks: target rules against SSRF, HMAC-SHA256 signatures, delivery with backoff.

Signature: ``X-Mlapi-Signature: sha256=<hex>`` of HMAC-SHA256(secret, f"{timestamp}.{body}"),
with ``X-Mlapi-Timestamp`` (Unix seconds) so a receiver can refuse replays.

A target must be an absolute http(s) URL whose host resolves only to public addresses (or to
addresses inside the operator's allow-list). The check runs at submission and again at every
connection: ``PinnedTransport`` resolves the host itself, checks every address and connects to
the checked one, so a DNS answer that changes between check and connect (rebinding) cannot
reach inside. Redirects are followed by ``deliver`` itself, a bounded number of times, each
hop going through the same transport.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import socket
import ssl
from dataclasses import dataclass

import httpx

from mlapi_gateway.errors import FieldError, RequestInvalidError

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Mlapi-Signature"
TIMESTAMP_HEADER = "X-Mlapi-Timestamp"
FIELD = "body.webhook_url"
EXPECTED = "an absolute http(s) URL of a public host"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECTS = frozenset({301, 302, 303, 307, 308})

# Ranges that ``is_global`` (Python 3.11) accepts but that are no public destination: 6to4
# embeds any IPv4 address (10.x and 127.x included) and its relay anycast is deprecated.
_NOT_PUBLIC = (ipaddress.ip_network("2002::/16"), ipaddress.ip_network("192.88.99.0/24"))
# IPv6 global unicast. Outside it, 3.11 still calls fec0::/10 (site-local), 64:ff9b::/96
# (NAT64, which maps back to any IPv4 address) and ::/96 (IPv4-compatible) global.
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the signature header value: HMAC-SHA256 of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    """Tell whether ``signature`` is the one ``sign`` gives (compared in constant time)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def is_public(address: Address) -> bool:
    """Tell whether ``address`` is a public unicast address.

    That is ``is_global``, not multicast, and for IPv6 inside 2000::/3 and outside 6to4. An
    IPv4-mapped IPv6 address is judged by its IPv4 address.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return False
    return not any(address in network for network in _NOT_PUBLIC)


def is_allowed(address: Address, allow: list[Network]) -> bool:
    """Public, or inside an allow-listed network (an IPv4-mapped address as its IPv4 too)."""
    forms: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    return is_public(address) or any(a in network for a in forms for network in allow)


def refused(message: str, field: str = FIELD) -> RequestInvalidError:
    """Return the 400 of a webhook URL the gateway will not call."""
    return RequestInvalidError(
        "webhook_url is not an allowed target", [FieldError(field, message, EXPECTED)]
    )


@dataclass(frozen=True)
class Target:
    """A syntactically valid webhook URL: scheme, host (no brackets) and port."""

    url: str
    scheme: str
    host: str
    port: int


def parse_target(url: str, field: str = FIELD) -> Target:
    """``url`` as a Target, or RequestInvalidError naming ``field`` and what is wrong with it.

    Parsed by httpx, the parser that delivery uses, so no two parsers disagree on the host.
    """
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url):
        raise refused("the URL contains spaces, control characters or backslashes", field)
    try:
        parsed = httpx.URL(url)
        host, port = parsed.host, parsed.port
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors
        raise refused(f"not a valid URL: {exc}", field) from exc
    if parsed.scheme not in ("http", "https"):
        raise refused(f"the scheme must be http or https, not {parsed.scheme!r}", field)
    if not host:
        raise refused("the URL has no host", field)
    if parsed.userinfo:
        raise refused("credentials in the URL are not allowed", field)
    if port is not None and not 1 <= port <= 65535:
        raise refused(f"port {port} is out of range (1 to 65535)", field)
    if ":" in host:
        if "%" in host:
            raise refused("an IPv6 zone (%...) is not allowed", field)
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise refused(f"{host!r} is not a valid IPv6 address: {exc}", field) from exc
    else:
        _check_name(parsed.raw_host.decode("ascii"), field)
    return Target(url, parsed.scheme, host, port or (443 if parsed.scheme == "https" else 80))


def _check_name(host: str, field: str) -> None:
    with_dots = host.rstrip(".")
    try:
        ipaddress.IPv4Address(with_dots)
        return
    except ValueError:
        pass
    labels = with_dots.split(".")
    if (
        len(with_dots) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # "127.1", "0x7f.1": IPv4 in a form resolvers still accept
    ):
        raise refused(f"{host!r} is not a valid host name", field)


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (an IP literal resolves to itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def checked_addresses(host: str, port: int, allow: list[Network]) -> list[Address]:
    """Return the addresses of ``host`` if every one is allowed; RequestInvalidError otherwise."""
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise refused(f"cannot resolve {host!r}: {exc}") from exc
    for address in addresses:
        if not is_allowed(address, allow):
            raise refused(f"{host!r} resolves to {address}, which is not a public address")
    if not addresses:
        raise refused(f"{host!r} resolves to no address")
    return addresses


async def check_target(url: str, allow: list[Network]) -> Target:
    """Parse ``url`` and check where it points now (the submission-time check)."""
    target = parse_target(url)
    await checked_addresses(httpx.URL(url).raw_host.decode("ascii"), target.port, allow)
    return target


class PinnedTransport(httpx.AsyncBaseTransport):
    """Resolves each request's host, checks every address, and connects to a checked address.

    The request keeps its Host header, and TLS its SNI name and certificate check, so only the
    IP a connection goes to is pinned. Raises RequestInvalidError for a refused target.
    """

    def __init__(self, allow: list[Network], verify: ssl.SSLContext | bool = True) -> None:
        self.allow = allow
        self._inner = httpx.AsyncHTTPTransport(verify=verify, retries=0, trust_env=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS see it
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await checked_addresses(host, port, self.allow)
        failure: httpx.ConnectError | None = None
        for address in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # holds Host: the original name
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:  # next address (e.g. IPv6 without a route)
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


def client(
    allow: list[Network], timeout_s: float, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    """Return the HTTP client of webhook delivery: pinned, no redirects, no proxies from the env.

    ``verify``: the trusted certificates (default: the system's).
    """
    return httpx.AsyncClient(
        transport=PinnedTransport(allow, verify),
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )


async def _post(
    http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], max_redirects: int
) -> int:
    """POST to ``url``, following up to ``max_redirects`` redirects; the final status.

    Every redirect is followed with the same signed POST (a webhook has no GET meaning).
    """
    current = url
    for _ in range(max_redirects + 1):
        parse_target(current)
        async with http.stream("POST", current, content=body, headers=headers) as reply:
            status, location = reply.status_code, reply.headers.get("location")
        if status not in REDIRECTS or not location:
            return status
        current = str(httpx.URL(current).join(location))
        log.info("webhook to %s redirected to %s", url, current)
    raise refused(f"more than {max_redirects} redirects")


async def deliver(
    http: httpx.AsyncClient,
    url: str,
    body: bytes,
    secret: str,
    timestamp: int,
    max_attempts: int,
    backoff_s: float,
    max_redirects: int = 3,
) -> tuple[bool, int, str]:
    """POST ``body`` until a 2xx answer or ``max_attempts``; (delivered, attempts, last outcome).

    A refused target (at any hop) ends delivery at once: retrying cannot make it allowed.
    """
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    outcome = ""
    for attempt in range(1, max_attempts + 1):
        try:
            status = await _post(http, url, body, headers, max_redirects)
            outcome = f"HTTP {status}"
            if 200 <= status < 300:
                return True, attempt, outcome
        except RequestInvalidError as exc:
            log.warning("webhook to %s refused: %s", url, exc.errors[0].message)
            return False, attempt, exc.errors[0].message
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        log.info("webhook to %s failed (attempt %d): %s", url, attempt, outcome)
        if attempt < max_attempts:
            delay = backoff_s * 2 ** (attempt - 1)
            await asyncio.sleep(random.uniform(delay / 2, delay))
    return False, max_attempts, outcome
