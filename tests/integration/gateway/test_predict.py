"""Routes, the digits contract through the gateway, versions, OpenAPI and metrics."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
from PIL import Image

from mlapi_tools.build.digits_data import DigitsSplit


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_openapi_documents_every_route(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/models",
        "/v1/models/{model}/predict",
        "/v1/models/{model}/versions/{version}/predict",
        "/v1/models/{model}/stream",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    assert {"DigitsPredict", "TensorPredict", "JobCreate"} <= set(schemas)


def test_predict_pixels_and_png(api: httpx.Client, split: DigitsSplit) -> None:
    image, label = split.test_images[0], str(split.test_y[0])
    by_pixels = api.post("/v1/models/digits/predict", json={"pixels": image.tolist(), "top_k": 3})
    by_png = api.post("/v1/models/digits/predict", json={"image": _png(image)})
    assert by_pixels.status_code == 200, by_pixels.text
    assert by_png.status_code == 200, by_png.text
    body = by_pixels.json()
    assert len(body["predictions"]) == 3
    assert body["predictions"][0]["label"] == label
    scores = [p["score"] for p in body["predictions"]]
    assert scores == sorted(scores, reverse=True)
    assert body["low_confidence"] in (True, False)
    assert body["metadata"]["preprocessing"]["original_size"] == list(image.shape)
    assert by_pixels.headers["X-Model-Version"] == body["model_version"]
    assert by_png.json()["predictions"][0]["label"] == label


def test_version_pinning_echoes_the_served_version(api: httpx.Client, split: DigitsSplit) -> None:
    for version in ("1", "2"):
        reply = api.post(
            f"/v1/models/digits/versions/{version}/predict",
            json={"pixels": split.test_images[1].tolist()},
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["X-Model-Version"] == version
        assert reply.json()["model_version"] == version
        assert reply.json()["metadata"]["classifier"]["version"] == version


def test_unknown_version_and_model_are_404_naming_what_exists(api: httpx.Client) -> None:
    reply = api.post("/v1/models/digits/versions/9/predict", json={"pixels": [[0, 1], [1, 0]]})
    assert reply.status_code == 404
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["available"] == [f"digits/versions/{v}" for v in ("1", "2", "3", "4", "5")]
    reply = api.post("/v1/models/cats/predict", json={"pixels": [[0]]})
    assert reply.status_code == 404
    assert "digits" in reply.json()["available"]
    # A model on the server that the API does not expose is just as unknown.
    assert api.post("/v1/models/digits_classifier/predict", json={"inputs": {}}).status_code == 404


def test_models_lists_live_and_default_versions(api: httpx.Client) -> None:
    models = {m["name"]: m for m in api.get("/v1/models").json()["models"]}
    assert models["digits"]["live_versions"] == ["1", "2", "3", "4", "5"]
    assert models["digits"]["default_version"] in ("1", "2", "3", "4", "5")
    assert models["stream_count"]["streaming"] is True
    assert models["slow"]["streaming"] is False


def test_generic_tensor_predict(api: httpx.Client) -> None:
    reply = api.post("/v1/models/slow/predict", json={"inputs": {"delay_ms": [[5]]}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"] == {"slept_ms": [[5]]}
    assert reply.headers["X-Model-Version"] == "1"


def test_health_readiness_and_metrics(api: httpx.Client, split: DigitsSplit) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200
    api.post("/v1/models/digits/versions/1/predict", json={"pixels": split.test_images[2].tolist()})
    api.post("/v1/models/digits/predict", json={"pixels": "nope"})
    text = api.get("/metrics").text
    assert (
        'mlapi_gateway_requests_total{model="digits",route="/v1/models/{model}/versions/{version}/predict",'
        'status_class="2xx",version="1"}' in text
    )
    assert "mlapi_gateway_request_duration_seconds_bucket" in text
    assert 'mlapi_gateway_errors_total{status_class="4xx",type="validation"}' in text


def _predict_counts(api: httpx.Client) -> dict[tuple[str, ...], float]:
    """mlapi_gateway_predict_duration_seconds_count by (model, version, protocol, input_size)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "mlapi_gateway_predict_duration_seconds_count":
                labels = sample.labels
                key = (labels["model"], labels["version"], labels["protocol"], labels["input_size"])
                counts[key] = sample.value
    return counts


def test_served_predictions_are_timed_by_version_protocol_and_input_size(
    api: httpx.Client, split: DigitsSplit
) -> None:
    small = {"pixels": split.test_images[3].tolist()}  # ~200 bytes of JSON
    large = {"image": _png(np.kron(split.test_images[3], np.ones((64, 64), np.uint8)))}
    before = _predict_counts(api)
    for _ in range(3):
        assert api.post("/v1/models/digits/versions/1/predict", json=small).status_code == 200
    assert api.post("/v1/models/digits/versions/2/predict", json=large).status_code == 200
    assert api.post("/v1/models/digits/versions/1/predict", json={"pixels": "x"}).status_code == 400
    after = _predict_counts(api)
    grown = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    large_bucket = (
        "le_16KiB"
        if len(httpx.Request("POST", "/", json=large).content) <= 16384
        else ("le_256KiB")
    )
    assert grown == {
        ("digits", "1", "http", "le_1KiB"): 3,
        ("digits", "2", "http", large_bucket): 1,
    }
