"""The keep-alive connection pool against a raw asyncio server whose bytes each test controls,
and the infer bodies it carries for the HTTP transport (tritonclient's wire format)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import uvloop
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor

from mlapi_client.http_pool import Headers, HttpPool, _Connection
from mlapi_client.tensors import (
    bytes_tensor,
    http_infer_body,
    http_infer_response,
    http_response,
    infer_inputs,
    requested_outputs,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


def ok(body: bytes = b"hello", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    body = await reader.readexactly(int(headers.get("Content-Length", "0")))
    return head[0], headers, body


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll ``condition`` on the loop until it holds; fail (TimeoutError) after ``timeout_s``."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


class Server:
    """Counts connections and requests; ``handler`` answers request n (0-based) on a connection
    and returns False to close it."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = 0
        try:
            while True:
                try:
                    self.requests.append(await read_request(reader))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await self.handler(reader, writer, n):
                    return
                n += 1
        finally:
            writer.close()


def answer(data: bytes, keep: bool = True) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return handler


def test_one_connection_is_reused_for_sequential_requests() -> None:
    async def scenario() -> None:
        server = Server(answer(ok(b'{"a": 1}', "X-Thing: yes\r\n")))
        async with server as address:
            pool = HttpPool(address)
            for i in range(5):
                reply = await pool.request("POST", "/v2/x", {"A-Header": str(i)}, b"body%d" % i)
                assert (reply.status, reply.reason, reply.body) == (200, "OK", b'{"a": 1}')
                assert reply.headers.get("x-THING") == "yes" and "X-Thing" in reply.headers
            await pool.close()
        assert server.connections == 1
        assert [r[0] for r in server.requests] == ["POST /v2/x HTTP/1.1"] * 5
        assert server.requests[3][1]["A-Header"] == "3" and server.requests[3][2] == b"body3"
        assert server.requests[0][1]["Host"] == address

    asyncio.run(scenario())


def test_a_connection_past_its_max_age_is_retired_after_its_reply() -> None:
    async def scenario() -> None:
        server = Server(answer(ok(b"{}")))
        async with server as address:
            young = HttpPool(address, max_age_s=3600.0)
            for _ in range(3):
                await young.request("GET", "/v2/health/ready", {})
            await young.close()
            assert server.connections == 1
            old = HttpPool(address, max_age_s=0.0)  # every connection is already old
            for _ in range(3):
                assert (await old.request("GET", "/v2/health/ready", {})).status == 200
            await old.close()
            assert server.connections == 1 + 3

    asyncio.run(scenario())


def test_concurrent_requests_open_at_most_limit_connections() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.02)
        writer.write(ok())
        return True

    async def scenario() -> None:
        server = Server(slow)
        async with server as address:
            pool = HttpPool(address, limit=3)
            replies = await asyncio.gather(*(pool.request("GET", "/", {}) for _ in range(12)))
            assert all(r.status == 200 for r in replies)
            await pool.close()
        assert server.connections == 3
        assert len(server.requests) == 12

    asyncio.run(scenario())


def test_connection_close_answer_is_not_reused() -> None:
    async def scenario() -> None:
        server = Server(answer(ok(extra="Connection: close\r\n"), keep=False))
        async with server as address:
            pool = HttpPool(address)
            for _ in range(3):
                assert (await pool.request("GET", "/", {})).body == b"hello"
            await pool.close()
        assert server.connections == 3

    asyncio.run(scenario())


def test_idle_connection_closed_by_the_server_is_replaced_without_failing_the_call() -> None:
    async def scenario() -> None:
        # Answers, then closes the connection while it sits idle in the pool.
        server = Server(answer(ok(), keep=False))
        async with server as address:
            pool = HttpPool(address)
            assert (await pool.request("GET", "/", {})).status == 200
            # Wait on the condition, not a sleep: the server's close has reached the idle one.
            await _until(lambda: not any(c.open for c in pool._idle))
            assert (await pool.request("GET", "/", {})).status == 200
            await pool.close()
        assert server.connections == 2

    asyncio.run(scenario())


def test_reused_connection_dropped_before_any_reply_resends_a_get_once_on_a_new_one() -> None:
    async def answer_once(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if n == 0:
            writer.write(ok())
            return True
        return False  # the second request on a connection: hang up without a byte

    async def scenario() -> None:
        server = Server(answer_once)
        async with server as address:
            pool = HttpPool(address)
            assert (await pool.request("GET", "/", {})).status == 200
            assert (await pool.request("GET", "/", {})).status == 200  # on a new connection
            await pool.close()
        assert server.connections == 2
        assert len(server.requests) == 3

    asyncio.run(scenario())


def test_a_post_is_never_sent_twice() -> None:
    """The server may have run a POST before it dropped the connection: the call fails."""

    async def run_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        if n == 0:
            writer.write(ok())
            return True
        await asyncio.sleep(0.05)  # "runs" the second request, then dies without a reply
        return False

    async def scenario() -> None:
        server = Server(run_then_drop)
        async with server as address:
            pool = HttpPool(address)
            assert (await pool.request("POST", "/", {}, b"first")).status == 200
            with pytest.raises(ConnectionError):
                await pool.request("POST", "/", {}, b"second")
            await pool.close()
        assert [r[2] for r in server.requests] == [b"first", b"second"]

    asyncio.run(scenario())


def test_a_partial_reply_on_a_reused_connection_fails_the_get_without_resending() -> None:
    async def partial_second(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(ok() if n == 0 else b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc")
        await writer.drain()
        return n == 0

    async def scenario() -> None:
        server = Server(partial_second)
        async with server as address:
            pool = HttpPool(address)
            assert (await pool.request("GET", "/", {})).status == 200
            with pytest.raises(ConnectionError):
                await pool.request("GET", "/", {})
            await pool.close()
        assert len(server.requests) == 2

    asyncio.run(scenario())


def test_connection_close_header_alone_retires_the_connection() -> None:
    """The server keeps the socket open; the header is what must stop the reuse."""

    async def scenario() -> None:
        server = Server(answer(ok(extra="Connection: close\r\n"), keep=True))
        async with server as address:
            pool = HttpPool(address)
            for _ in range(3):
                assert (await pool.request("GET", "/", {})).status == 200
            await pool.close()
        assert server.connections == 3

    asyncio.run(scenario())


def test_a_cancelled_call_closes_its_connection_at_once() -> None:
    async def scenario() -> None:
        eof = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            if await reader.read() == b"":  # blocks until the client closes its side
                eof.set()
            writer.close()

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        pool = HttpPool(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(pool.request("POST", "/", {}, b"x"), 0.05)
        await asyncio.wait_for(eof.wait(), 2)
        await pool.close()
        server.close()

    asyncio.run(scenario())


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_a_reply_for_a_caller_that_left_is_dropped_with_its_connection() -> None:
    async def scenario() -> None:
        problems: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: problems.append(ctx))
        connection = _Connection()
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        call = asyncio.ensure_future(connection.exchange(b"GET / HTTP/1.1\r\n\r\n"))
        await asyncio.sleep(0)
        call.cancel()
        await asyncio.sleep(0)
        connection.data_received(ok())  # the late reply
        await asyncio.sleep(0)
        assert transport.closed and not connection.open
        assert problems == []

    asyncio.run(scenario())


def test_reply_delimited_by_connection_close_is_read_to_the_end() -> None:
    async def scenario() -> None:
        server = Server(
            answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody-until-eof", False)
        )
        async with server as address:
            pool = HttpPool(address)
            reply = await asyncio.wait_for(pool.request("POST", "/", {}, b"x"), 2)
            assert (reply.status, reply.body) == (200, b"body-until-eof")
            await pool.close()

    asyncio.run(scenario())


def test_interim_1xx_replies_are_skipped() -> None:
    async def early_hints(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(ok(b"final"))
        return True

    async def scenario() -> None:
        async with Server(early_hints) as address:
            pool = HttpPool(address)
            reply = await pool.request("POST", "/", {}, b"x")
            assert (reply.status, reply.body) == (200, b"final")
            assert (await pool.request("POST", "/", {}, b"x")).body == b"final"
            await pool.close()

    asyncio.run(scenario())


def test_credentials_in_the_address_become_basic_auth() -> None:
    async def scenario() -> None:
        server = Server(answer(ok()))
        async with server as address:
            pool = HttpPool(f"us%40er:p%3Ass@{address}")
            assert (await pool.request("GET", "/", {})).status == 200
            await pool.close()
        headers = server.requests[0][1]
        assert headers["Host"] == address
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()

    asyncio.run(scenario())


def test_methods_other_than_get_and_post_are_refused() -> None:
    async def scenario() -> None:
        pool = HttpPool("127.0.0.1:9")
        with pytest.raises(ValueError, match="HEAD"):
            await pool.request("HEAD", "/", {})

    asyncio.run(scenario())


def test_chunked_and_error_answers_are_read_whole() -> None:
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5\r\n{"err\r\n8\r\nor": 1}\n\r\n0\r\n\r\n'
    )

    async def scenario() -> None:
        async with Server(answer(chunked)) as address:
            pool = HttpPool(address)
            reply = await pool.request("POST", "/", {}, b"x")
            assert (reply.status, reply.reason, reply.body) == (
                400,
                "Bad Request",
                b'{"error": 1}\n',
            )
            await pool.close()

    asyncio.run(scenario())


def test_server_hanging_up_mid_reply_fails_the_call() -> None:
    async def scenario() -> None:
        async with Server(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", False)
        ) as address:
            pool = HttpPool(address)
            with pytest.raises(ConnectionError):
                await pool.request("GET", "/", {})
            await pool.close()

    asyncio.run(scenario())


def test_malformed_reply_fails_the_call_and_drops_the_connection() -> None:
    async def scenario() -> None:
        server = Server(answer(b"NOT HTTP AT ALL\r\n\r\n"))
        async with server as address:
            pool = HttpPool(address)
            with pytest.raises(ConnectionError, match="malformed HTTP response"):
                await pool.request("GET", "/", {})
            with pytest.raises(ConnectionError):
                await pool.request("GET", "/", {})
            await pool.close()
        assert server.connections == 2

    asyncio.run(scenario())


def test_a_cancelled_call_never_hands_its_late_reply_to_the_next_call() -> None:
    async def late_then_fast(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        body = server.requests[-1][2]
        if body == b"slow":
            await asyncio.sleep(0.2)
        writer.write(ok(body))
        return True

    server = Server(late_then_fast)

    async def scenario() -> None:
        async with server as address:
            pool = HttpPool(address)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(pool.request("POST", "/", {}, b"slow"), 0.05)
            assert (await pool.request("POST", "/", {}, b"fast")).body == b"fast"
            await pool.close()
        assert server.connections == 2

    asyncio.run(scenario())


def test_unreachable_server_raises_oserror() -> None:
    async def scenario() -> None:
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        pool = HttpPool(f"127.0.0.1:{port}")
        with pytest.raises(OSError):
            await pool.request("GET", "/", {})
        await pool.close()
        with pytest.raises(ConnectionError, match="closed"):
            await pool.request("GET", "/", {})

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a\r\nX-Evil: 1", {}),
        ("/a", {"X": "v\r\nX-Evil: 1"}),
        ("/a", {"X\n": "v"}),
        ("/a\rb", {}),
        ("/a", {"X": "v\r"}),
        ("/a", {"X": "\nv", "Y": "w"}),
    ],
)
def test_line_breaks_in_the_request_head_are_refused(target: str, headers: dict[str, str]) -> None:
    async def scenario() -> None:
        pool = HttpPool("127.0.0.1:9")
        with pytest.raises(ValueError, match="line break"):
            await pool.request("GET", target, headers)

    asyncio.run(scenario())


def test_works_on_uvloop() -> None:
    """The gateway runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def scenario() -> None:
        server = Server(answer(ok()))
        async with server as address:
            pool = HttpPool(address)
            for _ in range(3):
                assert (await pool.request("GET", "/", {})).body == b"hello"
            await pool.close()
        assert server.connections == 1

    uvloop.run(scenario())


def test_headers_ignore_case() -> None:
    headers = Headers({"content-encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip" and headers["CONTENT-ENCODING"] == "gzip"
    assert headers.get("Retry-After") is None and "retry-after" not in headers


# --- the infer bodies the pool carries (mlapi_client.tensors' HTTP wire format) -----------

_CODEC = httpclient.InferenceServerClient


def _tritonclient_request(
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None,
    request_id: str,
    parameters: dict[str, Any] | None,
) -> tuple[bytes, int | None]:
    return _CODEC.generate_request_body(  # type: ignore[no-any-return]
        infer_inputs(httpclient, inputs),
        outputs=requested_outputs(httpclient, outputs),
        request_id=request_id,
        parameters=parameters,
    )


REQUESTS = [
    ({"image": np.arange(64, dtype=np.uint8).reshape(1, 8, 8)}, None, "", None),
    (
        {"image": np.zeros((1, 8, 8), np.uint8), "top_k": np.array([[3]], np.int32)},
        None,
        "req-1",
        {"model_version": 2},
    ),
    (
        {
            "x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4).T,  # not C-contiguous
            "h": np.array([0.5, -2.0], np.float16),
            "flag": np.array([True, False]),
            "n": np.array(7, np.int64),  # 0-d
            "u": np.array([2**63], np.uint64),
            "d": np.array([], np.float64),
        },
        ["y", "z"],
        "é-id",
        {"name": "ünï", "on": True, "count": 3, "ratio": 0.25},
    ),
    ({"text": np.array([b"ab", b"", "\u00e9".encode()], dtype=np.object_)}, None, "", None),
    ({"text": np.array(["hi", "\u00e9"]), "n": np.array([1], np.int8)}, ["out"], "r", None),
    ({"x": np.array([1], np.int32)}, None, "", {"nan": float("nan"), "big": 2**70, "inf": -1e999}),
]


@pytest.mark.parametrize(("inputs", "outputs", "request_id", "parameters"), REQUESTS)
def test_infer_request_bodies_are_tritonclients_byte_for_byte(
    inputs: dict[str, np.ndarray],
    outputs: list[str] | None,
    request_id: str,
    parameters: dict[str, Any] | None,
) -> None:
    body = http_infer_body(inputs, outputs, request_id, parameters)
    assert body == _tritonclient_request(inputs, outputs, request_id, parameters)
    raw, json_size = body
    assert json_size is not None  # every tensor travels as binary data after the header
    header = json.loads(raw[:json_size])
    assert [t["name"] for t in header["inputs"]] == list(inputs)
    assert json_size + sum(t["parameters"]["binary_data_size"] for t in header["inputs"]) == len(
        raw
    )


@pytest.mark.parametrize(
    "parameters", [{"priority": 1}, {"binary_data_output": False}, {"sequence_id": 3}]
)
def test_infer_request_refusals_are_tritonclients(parameters: dict[str, Any]) -> None:
    inputs = {"x": np.array([1], np.int32)}
    with pytest.raises(Exception) as ours:
        http_infer_body(inputs, None, "", parameters)
    with pytest.raises(Exception) as theirs:
        _tritonclient_request(inputs, None, "", parameters)
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def _reply(outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, str | None]:
    """A Triton reply body: each output as binary data (True) or as JSON ``data`` (False)."""
    described, raw = [], []
    for name, array, binary in outputs:
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": np_to_triton_dtype(array.dtype) if array.dtype != np.object_ else "BYTES",
            "shape": list(array.shape),
        }
        if binary:
            data = (
                serialize_byte_tensor(array).item()
                if array.dtype == np.object_ and array.size
                else b""
                if array.dtype == np.object_
                else array.tobytes()
            )
            tensor["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            tensor["data"] = [
                v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()
            ]
        described.append(tensor)
    header = json.dumps({"model_name": "m", "model_version": "4", "outputs": described}).encode()
    if not raw:
        return header, None
    return header + b"".join(raw), str(len(header))


REPLIES = [
    [
        ("labels", np.array([[b"7", b"1", b"9"]], dtype=np.object_), True),
        ("scores", np.array([[0.9, 0.05, 0.05]], np.float32), True),
        ("low_confidence", np.array([[False]]), True),
        ("metadata", np.array([[b'{"a": 1}']], dtype=np.object_), True),
    ],
    [
        ("y", np.array([[1, 2], [3, 4]], np.int64), False),
        ("t", np.array([b"x"], np.object_), False),
    ],
    [
        ("e", np.zeros((0, 3), np.float32), True),
        ("j", np.array([1.5, 2.5], np.float64), False),
        ("h", np.array([1, 2, 3], np.float16), True),
        ("e2", np.zeros((2, 0), np.object_), True),
        ("u", np.array([255], np.uint8), True),
    ],
]


@pytest.mark.parametrize("outputs", REPLIES)
def test_infer_replies_decode_as_tritonclients_do(
    outputs: list[tuple[str, np.ndarray, bool]],
) -> None:
    body, header_length = _reply(outputs)
    ours = http_infer_response(body, header_length, None)
    theirs = http_response(_CODEC.parse_response_body(body, header_length=header_length))
    assert (ours.model_name, ours.model_version) == (theirs.model_name, theirs.model_version)
    assert list(ours.outputs) == list(theirs.outputs) == [name for name, _, _ in outputs]
    for name, array, _ in outputs:
        mine, reference = ours[name], theirs[name]
        assert mine.dtype == reference.dtype and mine.shape == reference.shape == array.shape
        assert mine.tolist() == reference.tolist()
        assert mine.flags.writeable == reference.flags.writeable


def test_compressed_and_malformed_replies() -> None:
    body, header_length = _reply(REPLIES[0])
    packed = gzip.compress(body)
    assert http_infer_response(packed, header_length, "gzip")["labels"].tolist() == [
        [b"7", b"1", b"9"]
    ]
    with pytest.raises(ValueError):
        http_infer_response(b"{not json", None, None)
    with pytest.raises(KeyError):  # a binary reply must describe its outputs
        http_infer_response(b"{}", "2", None)


def test_a_truncated_bytes_element_fails_as_in_tritonclient() -> None:
    encoded = serialize_byte_tensor(np.array([b"abc", b"de"], dtype=np.object_)).item()
    assert bytes_tensor(encoded).tolist() == [b"abc", b"de"]
    with pytest.raises(struct.error):
        deserialize_bytes_tensor(encoded[:-1])
    with pytest.raises(struct.error):
        bytes_tensor(encoded[:-1])
