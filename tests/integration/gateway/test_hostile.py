"""Hostile input at the gateway: image bombs, oversized, trickled and deeply nested bodies,
made-up model names, callers that hang up. Each gets a prompt 4xx (or is counted as cancelled),
no metric series per made-up name, and the gateway keeps serving."""

from __future__ import annotations

import base64
import io
import re
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from mlapi_tools.build.digits_data import DigitsSplit

from .harness import Gateway, raw_request, read_until_closed, rss_bytes, wait_for

PREDICT = "/v1/models/digits/predict"
# Generous bounds for a busy 2-CPU machine: the answers measured here take milliseconds.
PROMPT_S = 2.0


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_of_zeros(width: int, height: int, rows: int | None = None) -> bytes:
    """A grayscale PNG of ``width`` x ``height`` whose data holds ``rows`` rows (all by default)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def _problem(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert "Traceback" not in reply.text
    return reply.json()


def _still_serving(api: httpx.Client, split: DigitsSplit) -> None:
    reply = api.post(PREDICT, json={"pixels": split.test_images[0].tolist()})
    assert reply.status_code == 200, reply.text
    assert reply.json()["predictions"][0]["label"] == str(split.test_y[0])
    assert api.get("/readyz").status_code == 200


def _timed_post(api: httpx.Client, body: dict) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    reply = api.post(PREDICT, json=body)
    return reply, time.perf_counter() - start


def test_huge_image_header_is_400_naming_the_field_at_once(
    api: httpx.Client, split: DigitsSplit
) -> None:
    header_only = _png_of_zeros(20000, 20000, rows=1)  # a few hundred bytes claiming 400 Mpx
    reply, elapsed_s = _timed_post(api, {"image": base64.b64encode(header_only).decode()})
    body = _problem(reply, 400)
    assert body["errors"][0]["field"] == "body.image"
    assert "1024" in body["errors"][0]["expected"]
    assert elapsed_s < PROMPT_S, elapsed_s
    _still_serving(api, split)


def test_decompression_bomb_is_refused_before_decoding(
    api: httpx.Client, gateway: Gateway, split: DigitsSplit
) -> None:
    bomb = _png_of_zeros(10000, 10000)  # ~100 KB that decodes to 100 MB
    assert len(bomb) < 200_000
    assert gateway.process is not None
    before = rss_bytes(gateway.process.pid)
    reply, elapsed_s = _timed_post(api, {"image": base64.b64encode(bomb).decode()})
    body = _problem(reply, 400)
    assert body["errors"][0]["field"] == "body.image"
    assert "10000x10000" in body["errors"][0]["message"]
    assert elapsed_s < PROMPT_S, elapsed_s
    # Decoding it would have added ~100 MB (Pillow's "L" image) plus the array.
    assert rss_bytes(gateway.process.pid) - before < 40 * 2**20
    _still_serving(api, split)


@pytest.mark.parametrize("cut", ["truncated", "garbage_tail", "not_png"])
def test_malformed_images_are_400(api: httpx.Client, split: DigitsSplit, cut: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    png = buffer.getvalue()
    data = {
        "truncated": png[: len(png) // 2],
        "garbage_tail": png[:40] + b"\xff" * 400,
        "not_png": b"GIF89a" + png[6:],
    }[cut]
    body = _problem(api.post(PREDICT, json={"image": base64.b64encode(data).decode()}), 400)
    assert body["errors"][0]["field"] == "body.image"
    _still_serving(api, split)


def test_deeply_nested_json_is_400_at_once(api: httpx.Client, split: DigitsSplit) -> None:
    for path, body in (
        (PREDICT, b"[" * 50_000 + b"]" * 50_000),
        ("/v1/models/slow/predict", b'{"inputs": {"delay_ms": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"),
        ("/v1/models/slow/predict", b'{"inputs": {"delay_ms": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}}"),
    ):  # fmt: skip
        start = time.perf_counter()
        reply = api.post(path, content=body)
        assert time.perf_counter() - start < PROMPT_S
        assert _problem(reply, 400)["errors"][0]["field"].startswith("body")
    _still_serving(api, split)


def test_declared_oversized_body_is_413_unread_and_the_connection_closed(
    gateway: Gateway, api: httpx.Client, split: DigitsSplit
) -> None:
    head = (
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50000000\r\n"
    )
    start = time.perf_counter()
    with raw_request(gateway.port, head) as sock:  # no auth, and none of the 50 MB sent
        answer = read_until_closed(sock)
    assert time.perf_counter() - start < PROMPT_S
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"50000000 bytes" in answer and b"1048576" in answer
    _still_serving(api, split)


def test_streamed_oversized_body_is_413(api: httpx.Client, split: DigitsSplit) -> None:
    def chunks():  # no Content-Length: chunked transfer encoding
        yield b'{"pixels": [['
        for _ in range(200):
            yield b"1," * 5000

    body = _problem(api.post(PREDICT, content=chunks()), 413)
    assert body["errors"][0]["field"] == "body"
    assert "1048576" in body["errors"][0]["expected"]
    _still_serving(api, split)


def test_trickled_body_is_408_and_the_connection_closed(
    gateway: Gateway, api: httpx.Client, keys: dict[str, str], split: DigitsSplit
) -> None:
    head = (
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + keys["predict"].encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n"
    )
    start = time.perf_counter()
    with raw_request(gateway.port, head, b'{"pixels"') as sock:  # 9 of 100 bytes, then nothing
        answer = read_until_closed(sock)
    elapsed_s = time.perf_counter() - start
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert 2.0 <= elapsed_s < 2.0 + 10, elapsed_s  # MLAPI_GATEWAY_BODY_TIMEOUT_S=2
    _still_serving(api, split)


def test_unauthenticated_trickle_is_401_and_the_connection_closed(gateway: Gateway) -> None:
    head = (
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: gateway\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n"
    )
    with raw_request(gateway.port, head, b"{") as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


def _series(api: httpx.Client) -> set[str]:
    text = api.get("/metrics").text
    return set(re.findall(r"^mlapi_gateway_requests_total\{[^}]*\}", text, re.M))


def test_made_up_names_do_not_create_metric_series(
    gateway: Gateway, api: httpx.Client, split: DigitsSplit
) -> None:
    _still_serving(api, split)  # the series a real call creates exist before counting
    before = _series(api)
    with httpx.Client(base_url=gateway.url, timeout=30) as anonymous:
        for index in range(300):
            anonymous.post(f"/v1/models/made-up-{index}/predict", json={"pixels": [[0]]})
            anonymous.post(f"/v1/models/digits/versions/{index}/predict", json={"pixels": [[0]]})
            anonymous.get(f"/no/such/route/{index}")
    for index in range(100):
        assert api.post(f"/v1/models/made-up-{index}/predict", json={}).status_code == 404
        api.post(f"/v1/models/digits/versions/9{index}/predict", json={"pixels": [[0] * 8] * 8})
    new = _series(api) - before
    # At most one series per (route, status class) with the model and version labels empty.
    assert len(new) <= 6, sorted(new)
    assert not [s for s in new if "made-up" in s or 'version="9' in s]


def test_client_disconnect_is_counted_as_cancelled_not_500(
    gateway: Gateway, api: httpx.Client, keys: dict[str, str], split: DigitsSplit
) -> None:
    def count(kind: str) -> float:
        match = re.search(
            rf'^mlapi_gateway_errors_total\{{type="{kind}"\}} (\S+)', api.get("/metrics").text, re.M
        )
        return float(match.group(1)) if match else 0.0

    cancelled, internal = count("cancelled"), count("internal")
    head = (
        b"POST /v1/models/digits/predict HTTP/1.1\r\nHost: gateway\r\n"
        b"Authorization: Bearer " + keys["predict"].encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
    )
    for _ in range(3):
        raw_request(gateway.port, head, b'{"pixels": [[').close()  # hang up mid-body
    wait_for(lambda: count("cancelled") >= cancelled + 3, timeout_s=30)
    assert count("internal") == internal
    assert "500 internal" not in gateway.log()
    _still_serving(api, split)
