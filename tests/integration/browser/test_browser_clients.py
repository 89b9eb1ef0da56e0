"""Real headless Chromium on another loopback origin calls the gateway (CORS, EventSource)."""

from __future__ import annotations

import httpx

from mlapi_tools.build.digits_data import DigitsSplit
from tests.integration.gateway.harness import Gateway

from .chromium import Browser
from .conftest import PageServer

STREAM = {"inputs": {"text_input": ["The "], "max_tokens": [12], "seed": [4]}}


def test_event_source_streams_with_a_single_use_token(
    chromium: Browser, cors_gateway: Gateway, browser_key: str, pages: tuple[PageServer, PageServer]
) -> None:
    chromium.open(f"{pages[0].origin}/page.html")
    result = chromium.call("mintedStream", cors_gateway.url, browser_key, "text_generator", STREAM)
    assert result["status"] == 201, result
    assert "error" not in result, result
    assert len(result["texts"]) >= 1 and result["done"]["events"] == len(result["texts"])
    # The same text as the authenticated POST stream of the same body.
    with httpx.stream(
        "POST", f"{cors_gateway.url}/v1/models/text_generator/stream", json=STREAM,
        headers={"Authorization": f"Bearer {browser_key}"}, timeout=60,
    ) as reply:  # fmt: skip
        posted = reply.read().decode()
    assert "".join(result["texts"]) in posted or all(t in posted for t in result["texts"])
    # The token was taken by the first GET: using it again is refused.
    again = httpx.get(cors_gateway.url + result["url"], timeout=30)
    assert again.status_code == 401
    assert "stream-tokens" in again.json()["detail"]


def test_fetch_with_authorization_predicts_and_streams(
    chromium: Browser,
    cors_gateway: Gateway,
    browser_key: str,
    pages: tuple[PageServer, PageServer],
    split: DigitsSplit,
) -> None:
    chromium.open(f"{pages[0].origin}/page.html")
    image, label = split.test_images[0], str(split.test_y[0])
    body = {"pixels": image.tolist(), "top_k": 2}
    result = chromium.call("predict", cors_gateway.url, browser_key, "digits", body)
    assert result.get("status") == 200, result
    assert result["body"]["predictions"][0]["label"] == label
    assert result["version"] == result["body"]["model_version"]  # an exposed header
    assert result["requestId"]

    streamed = chromium.call(
        "fetchStream", cors_gateway.url, browser_key, "/v1/models/text_generator/stream", STREAM
    )
    assert streamed.get("status") == 200, streamed
    assert streamed["type"].startswith("text/event-stream")
    assert streamed["text"].count("event: message") >= 1 and "event: done" in streamed["text"]

    chat = {
        "model": "text_generator",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "stream": True,
    }
    openai_stream = chromium.call(
        "fetchStream", cors_gateway.url, browser_key, "/openai/v1/chat/completions", chat
    )
    assert openai_stream.get("status") == 200, openai_stream
    assert openai_stream["text"].rstrip().endswith("data: [DONE]")


def test_an_origin_not_on_the_list_is_refused(
    chromium: Browser, cors_gateway: Gateway, browser_key: str, pages: tuple[PageServer, PageServer]
) -> None:
    chromium.open(f"{pages[1].origin}/page.html")
    result = chromium.call(
        "predict", cors_gateway.url, browser_key, "digits", {"pixels": [[0] * 8] * 8}
    )
    assert "error" in result and "Failed to fetch" in result["error"], result
    # A token minted for this page (by its server, say) is still refused to an unlisted origin,
    # and is not used up by the refusal.
    minted = httpx.post(
        f"{cors_gateway.url}/v1/models/text_generator/stream-tokens", json=STREAM,
        headers={"Authorization": f"Bearer {browser_key}"},
    )  # fmt: skip
    assert minted.status_code == 201, minted.text
    url = cors_gateway.url + minted.json()["stream_url"]
    refused = chromium.call("listen", url)
    assert refused == {"texts": [], "error": "connection"}
    with httpx.stream("GET", url, timeout=60) as reply:
        assert reply.status_code == 200
        assert "event: done" in reply.read().decode()
    # What the browser saw refused: the preflight of that origin is a 403 with no CORS header.
    preflight = httpx.options(
        f"{cors_gateway.url}/v1/models/digits/predict",
        headers={"Origin": pages[1].origin, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
