"""text_embedder through the gateway: typed route, same auth, limits and problem+json errors as
digits' predict, the limit on texts read from the model, OpenAPI, and the same vectors as Triton."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY

from .conftest import gateway_env
from .harness import Gateway, create_key

PREDICT = "/v1/models/text_embedder/predict"
LONG = " ".join(f"word{i}" for i in range(400))
pytestmark = pytest.mark.skipif(
    not (MODEL_REPOSITORY / "text_embedder_encoder" / "1" / "model.onnx").is_file(),
    reason="text_embedder is not built: run `make models`",
)


@pytest.fixture(scope="module")
def embedder_api(
    triton: TritonServer, http_client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    deadline = time.monotonic() + 60
    while not http_client.is_model_ready("text_embedder"):
        assert time.monotonic() < deadline, "text_embedder did not become ready"
        time.sleep(0.5)
    workdir: Path = tmp_path_factory.mktemp("gateway_embedder")
    key = create_key(workdir / "keys.json", "predict")
    env = gateway_env(triton, workdir, models=json.dumps(["digits", "text_embedder"]))
    server = Gateway(env, workdir / "gateway.log").start()
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client
    assert server.stop() == 0, server.log()


def _problem(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    return reply.json()


def test_predict_returns_the_models_vectors(embedder_api: httpx.Client, http_client) -> None:
    texts = ["A man is playing a guitar.", "Ein Mann spielt Gitarre.", LONG]
    reply = embedder_api.post(PREDICT, json={"texts": texts})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert reply.headers["X-Model-Version"] == body["model_version"] == "1"
    assert body["model"] == "text_embedder" and body["dimensions"] == 384
    got = np.array([e["embedding"] for e in body["embeddings"]], dtype=np.float32)
    assert [e["truncated"] for e in body["embeddings"]] == [False, False, True]
    assert body["embeddings"][2]["token_count"] == 256
    direct = httpclient.InferInput("text", [3, 1], "BYTES")
    direct.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=object))
    expected = http_client.infer("text_embedder", [direct]).as_numpy("embedding")
    np.testing.assert_allclose(got, expected, atol=1e-6)
    pinned = embedder_api.post("/v1/models/text_embedder/versions/1/predict", json={"texts": ["x"]})
    assert pinned.status_code == 200 and pinned.headers["X-Model-Version"] == "1"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"texts": []}, "body.texts", ["at least 1"]),
        ({"texts": ["fine", ""]}, "body.texts.1", ["at least 1 character"]),
        ({"texts": ["fine", 3]}, "body.texts.1", ["string"]),
        ({"text": ["fine"]}, "body.text", ["Extra"]),
        ({"texts": ["ok", "  \n"]}, "body.texts.1", ["blank"]),
        ({"texts": ["ok", "x" * 16385]}, "body.texts.1", ["16385 bytes"]),
        ({"texts": ["t"] * 65}, "body.texts", ["65 texts"]),
    ],
)
def test_bad_bodies_are_400_naming_the_field(embedder_api, body, field, words) -> None:
    problem = _problem(embedder_api.post(PREDICT, json=body), 400)
    (error,) = [e for e in problem["errors"] if e["field"] == field]
    text = json.dumps(error)
    for word in words:
        assert word in text, problem


def test_auth_is_required(embedder_api: httpx.Client) -> None:
    reply = httpx.post(f"{embedder_api.base_url}{PREDICT}", json={"texts": ["x"]})
    _problem(reply, 401)


def test_openapi_documents_the_typed_route(embedder_api: httpx.Client) -> None:
    spec = embedder_api.get("/openapi.json").json()
    post = spec["paths"][PREDICT]["post"]
    assert "EmbedPredict" in json.dumps(post["requestBody"])
    texts = spec["components"]["schemas"]["EmbedPredict"]["properties"]["texts"]
    assert texts["maxItems"] == 64  # the model's max_batch_size, read from its config
    assert "EmbedAnswer" in spec["components"]["schemas"]
