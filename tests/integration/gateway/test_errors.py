"""Every caller error is a 400 problem+json with field errors; deadlines are 504; the gateway
stays healthy after each."""

from __future__ import annotations

import base64

import httpx
import pytest

from mlapi_tools.build.digits_data import DigitsSplit

PREDICT = "/v1/models/digits/predict"


def _problem(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    body = reply.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in reply.text
    return body


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "body"),
        (b'{"top_k": 2}', "body"),
        (b'{"pixels": "abc"}', "body.pixels"),
        (b'{"pixels": [[1, 2], [3]]}', "body.pixels"),
        (b'{"pixels": [[1, 300]]}', "body.pixels"),
        (b'{"pixels": [[1, 2]], "top_k": 0}', "body.top_k"),
        (b'{"pixels": [[1, 2]], "top_k": "three"}', "body.top_k"),
        (b'{"image": "***"}', "body.image"),
        (b'{"pixels": [[1]], "colour": true}', "body.colour"),
    ],
)
def test_bad_bodies_are_400_with_field_errors(
    api: httpx.Client, split: DigitsSplit, content: bytes, field: str
) -> None:
    body = _problem(api.post(PREDICT, content=content), 400)
    assert field in [e["field"] for e in body["errors"]]
    assert api.post(PREDICT, json={"pixels": split.test_images[0].tolist()}).status_code == 200


def test_undecodable_image_is_400_naming_the_field(api: httpx.Client) -> None:
    not_an_image = base64.b64encode(b"these bytes are not a PNG").decode()
    body = _problem(api.post(PREDICT, json={"image": not_an_image}), 400)
    assert body["errors"][0]["field"] == "body.image"


def test_oversized_body_is_refused(api: httpx.Client) -> None:
    huge = b'{"pixels": [[' + b"1," * 700_000 + b"1]]}"
    body = _problem(api.post(PREDICT, content=huge), 413)
    assert body["errors"][0]["field"] == "body"
    assert "1048576" in body["errors"][0]["expected"]


def test_generic_inputs_are_checked_against_the_model(api: httpx.Client) -> None:
    body = _problem(api.post("/v1/models/slow/predict", json={"inputs": {"delay": [[1]]}}), 400)
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"body.inputs.delay", "body.inputs.delay_ms"}
    body = _problem(api.post("/v1/models/slow/predict", json={"inputs": {"delay_ms": [1]}}), 400)
    assert "shape" in body["errors"][0]["message"]


def test_deadline_is_504_with_guidance(api: httpx.Client) -> None:
    reply = api.post(
        "/v1/models/slow/predict?timeout_s=0.3", json={"inputs": {"delay_ms": [[2000]]}}
    )
    body = _problem(reply, 504)
    assert "smaller input" in body["detail"] and "/v1/jobs" in body["detail"]
    # The override is bounded by the gateway's limits.
    body = _problem(
        api.post("/v1/models/slow/predict?timeout_s=600", json={"inputs": {"delay_ms": [[1]]}}), 400
    )
    assert body["errors"][0]["field"] == "query.timeout_s"
    assert api.get("/readyz").status_code == 200


def test_streaming_model_on_predict_and_plain_model_on_stream_are_400(api: httpx.Client) -> None:
    body = _problem(
        api.post("/v1/models/stream_count/predict", json={"inputs": {"count": [1]}}), 400
    )
    assert "/stream" in body["errors"][0]["expected"]
    body = _problem(api.post("/v1/models/slow/stream", json={"inputs": {"delay_ms": [[1]]}}), 400)
    assert "/predict" in body["errors"][0]["expected"]
