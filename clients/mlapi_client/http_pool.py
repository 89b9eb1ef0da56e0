"""Keep-alive HTTP/1.1 connections for the HTTP transport's inference calls.

Inference is the hot path (the gateway makes one call per request), and aiohttp's client
costs about 0.3 ms a call on top of the wire (a digits call measured 2.35 ms through it,
1.74 ms with a bare asyncio connection, same server, interleaved). These connections keep
only what a unary call to Triton needs: an asyncio protocol, the httptools response parser
(the one uvicorn uses), one request in flight per connection, idle connections reused.
Everything above the wire (request and response bodies, errors) stays with tritonclient's
codecs and the transport.
"""

from __future__ import annotations

import asyncio
import base64
import ssl as ssl_module
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

import httptools

DEFAULT_LIMIT = 100  # connections per pool, as tritonclient.http's conn_limit default
# A connection older than this is closed after its reply instead of going back to the pool, so
# a caller behind a Kubernetes Service (balanced per connection) reaches pods added since.
DEFAULT_MAX_AGE_S = 60.0
METHODS = ("GET", "POST")  # the parser is not told the method: HEAD replies would hang
IDEMPOTENT = ("GET",)  # the only ones resent when a reused connection turns out dead


class Headers(dict[str, str]):
    """Response headers by lower-cased name; lookups ignore case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@dataclass(frozen=True)
class Reply:
    """One HTTP response, read whole."""

    status: int
    reason: str
    headers: Headers
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: at most one request in flight, the reply parsed as it comes."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self._reason = b""
        self._headers = Headers()
        self._body: list[bytes] = []
        self._headers_done = False  # of the reply being read
        self.received = False  # any byte of a reply since the last request was sent
        self.reusable = True
        self.opened_at = time.monotonic()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if exc is None and self._ends_at_close():
            self._deliver()  # a reply without a length ends where the connection does
            return
        self._fail(exc or ConnectionResetError("the server closed the connection"))

    def _ends_at_close(self) -> bool:
        chunked = "chunked" in (self._headers.get("transfer-encoding") or "").lower()
        return self._headers_done and "content-length" not in self._headers and not chunked

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reason = b""
        self._headers = Headers()
        self._body = []
        self._headers_done = False

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._headers_done = False
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final reply follows
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._deliver()

    def _deliver(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():  # nobody asked (or the caller left): drop it
            self.close()
            return
        reply = Reply(
            self._parser.get_status_code(),
            self._reason.decode("latin-1"),
            self._headers,
            b"".join(self._body),
        )
        waiter.set_result(reply)

    # --- use -------------------------------------------------------------------------------

    async def exchange(self, request: bytes) -> Reply:
        assert self._transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self._transport.write(request)
        return await self._waiter

    @property
    def open(self) -> bool:
        return self.reusable and self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _fail(self, exc: BaseException) -> None:
        self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class HttpPool:
    """GET and POST to one ``[user:password@]host:port`` over reused keep-alive connections.

    At most ``limit`` connections are open at once; one is retired after its reply once it is
    ``max_age_s`` old (None: never), which spreads a long-lived caller over the servers a
    load balancer adds.

    A connection whose call fails or is cancelled (a deadline) is closed, never reused: its
    reply might still arrive. Idle connections the server has closed are skipped.
    """

    def __init__(
        self,
        address: str,
        *,
        tls: bool = False,
        limit: int = DEFAULT_LIMIT,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
    ) -> None:
        self._max_age_s = max_age_s
        userinfo, _, hostport = address.rpartition("@")
        self._auth = {}
        if userinfo:  # http://user:password@host:port, as aiohttp and urllib understand it
            token = base64.b64encode(unquote(userinfo).encode()).decode()
            self._auth = {"Authorization": f"Basic {token}"}
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            host, port = hostport, "443" if tls else "80"
        self._host = host.strip("[]")
        self._port = int(port)
        self._host_header = hostport
        self._tls = ssl_module.create_default_context() if tls else None
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes = b""
    ) -> Reply:
        """Send one request (``target``: path and query) and return the whole reply.

        Only a GET is sent again, on a new connection, when a reused one turns out to be dead
        before any reply byte: the server may have read and run a POST already, so repeating
        one is left to the caller's retry policy.
        """
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not supported (use one of {METHODS})")
        if self._closed:
            raise ConnectionError("the connection pool is closed")
        if self._auth:
            headers = {**self._auth, **headers}
        data = _request_bytes(method, target, self._host_header, headers, body)
        async with self._slots:
            while self._idle:
                connection = self._idle.pop()
                if not connection.open:
                    continue
                try:
                    return await self._exchange(connection, data)
                except ConnectionError:
                    if connection.received or method not in IDEMPOTENT:
                        raise
                    break  # closed while idle: once more, on a new connection
            return await self._exchange(await self._connect(), data)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            _Connection, self._host, self._port, ssl=self._tls
        )
        return connection

    async def _exchange(self, connection: _Connection, data: bytes) -> Reply:
        try:
            reply = await connection.exchange(data)
        except BaseException:
            connection.close()
            raise
        if (
            connection.open
            and not self._closed
            and (
                self._max_age_s is None or time.monotonic() - connection.opened_at < self._max_age_s
            )
        ):
            self._idle.append(connection)
        else:
            connection.close()
        return reply


def _request_bytes(
    method: str, target: str, host: str, headers: Mapping[str, str], body: bytes
) -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    head += "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Only the CRLFs written here: any other CR or LF was smuggled in by an argument.
    breaks = 3 + len(headers)
    if head.count("\n") != breaks or head.count("\r") != breaks:
        raise ValueError("HTTP request line or header contains a line break")
    return b"".join(((head + "\r\n").encode("latin-1"), body))
