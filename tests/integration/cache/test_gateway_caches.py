"""The gateway's caches against the real tritonserver: exact answers, semantic generations.

A gateway process of this module's own, with the exact cache on for digits and text_embedder
and the semantic cache on for text_generator.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import MODEL_REPOSITORY
from tests.integration.gateway.conftest import gateway_env
from tests.integration.gateway.harness import Gateway, RedisServer, create_key

pytestmark = pytest.mark.skipif(
    not (MODEL_REPOSITORY / "text_embedder_encoder" / "1" / "model.onnx").is_file(),
    reason="text_embedder is not built: run `make models`",
)
MODELS = ["digits", "text_embedder", "text_generator"]
CACHES = {
    "models": json.dumps(MODELS),
    "exact_cache_models": json.dumps(["digits", "text_embedder"]),
    "semantic_cache_models": json.dumps(["text_generator"]),
}
EMBED = "/v1/models/text_embedder/predict"
DIGITS = "/v1/models/digits/predict"
GENERATE = "/v1/models/text_generator/stream"


def _wait_ready(http_client: httpclient.InferenceServerClient) -> None:
    deadline = time.monotonic() + 90
    for model in ("digits", "text_embedder", "text_generator"):
        while not http_client.is_model_ready(model):
            assert time.monotonic() < deadline, f"{model} did not become ready"
            time.sleep(0.5)


def _start(triton: TritonServer, workdir: Path, **overrides: object) -> tuple[Gateway, str]:
    key = create_key(workdir / "keys.json", "predict")
    env = gateway_env(triton, workdir, **{**CACHES, **overrides})
    return Gateway(env, workdir / "gateway.log").start(), key


@pytest.fixture(scope="module")
def api(
    triton: TritonServer, http_client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    _wait_ready(http_client)
    gateway, key = _start(triton, tmp_path_factory.mktemp("gateway_caches"))
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
        client.metrics = lambda: gateway_metrics(gateway.url)  # type: ignore[attr-defined]
        yield client
    assert gateway.stop() == 0, gateway.log()


def gateway_metrics(url: str) -> str:
    return httpx.get(f"{url}/metrics", timeout=30).text


def _counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _successes(client: httpclient.InferenceServerClient, model: str) -> int:
    stats = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"])


def _without_cache(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "cache"}


def test_an_exact_hit_is_the_identical_answer_and_is_counted(
    api: httpx.Client, http_client
) -> None:
    body = {"texts": [f"a text seen twice {uuid.uuid4()}", "and its neighbour"]}
    before_hits = _counter(
        api.metrics(),
        "mlapi_gateway_exact_cache_requests_total",
        model="text_embedder",
        outcome="hit",
    )  # type: ignore[attr-defined]
    before_triton = _successes(http_client, "text_embedder")
    first, second = api.post(EMBED, json=body), api.post(EMBED, json=body)
    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert first.json()["cache"] == {"hit": False}
    assert second.json()["cache"]["hit"] is True and second.json()["cache"]["kind"] == "exact"
    assert _without_cache(second.json()) == _without_cache(first.json())
    assert second.headers["x-model-version"] == first.headers["x-model-version"]
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    after_hits = _counter(
        api.metrics(),
        "mlapi_gateway_exact_cache_requests_total",
        model="text_embedder",
        outcome="hit",
    )  # type: ignore[attr-defined]
    assert after_hits - before_hits == 1
    assert _successes(http_client, "text_embedder") - before_triton == 1  # one reached Triton


def test_other_parameters_shapes_and_versions_never_hit(api: httpx.Client) -> None:
    rng = np.random.default_rng(uuid.uuid4().int % 2**32)
    values = rng.integers(0, 256, size=128).tolist()
    square = {"pixels": [values[i : i + 8] for i in range(0, 128, 8)]}  # 16 x 8
    wide = {"pixels": [values[i : i + 16] for i in range(0, 128, 16)]}  # same values, 8 x 16
    cases = [
        (DIGITS, square),
        (DIGITS, wide),
        (DIGITS, {**square, "top_k": 2}),
        ("/v1/models/digits/versions/1/predict", square),
        ("/v1/models/digits/versions/2/predict", square),
    ]
    answers = []
    for path, body in cases:
        reply = api.post(path, json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["cache"]["hit"] is False, (path, body)
        assert reply.headers["x-cache"] == "miss"  # the predict shortcut's answer too
        answers.append(reply.json())
    assert answers[1]["metadata"] != answers[0]["metadata"]  # the shape was [8, 16]
    assert len(answers[2]["predictions"]) == 2
    assert answers[3]["model_version"] == "1" and answers[4]["model_version"] == "2"
    for (path, body), answer in zip(cases, answers, strict=True):  # each is now its own hit
        reply = api.post(path, json=body)
        again = reply.json()
        assert again["cache"]["hit"] is True and reply.headers["x-cache"] == "hit"
        assert _without_cache(again) == _without_cache(answer)


def test_concurrent_requests_never_get_each_others_answers(api: httpx.Client, http_client) -> None:
    texts = [f"concurrent text {i} {uuid.uuid4()}" for i in range(16)]
    expected = {}
    for text in texts:
        tensor = httpclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        expected[text] = http_client.infer("text_embedder", [tensor]).as_numpy("embedding")[0]

    def embed(text: str) -> tuple[str, list[float], bool]:
        answer = api.post(EMBED, json={"texts": [text]}).json()
        return text, answer["embeddings"][0]["embedding"], answer["cache"]["hit"]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(embed, texts * 4))
    for text, vector, _ in results:
        assert float(np.dot(vector, expected[text])) > 0.9999, text
    assert sum(hit for _, _, hit in results) >= 16  # by the later rounds, hits


def _generate(api: httpx.Client, prompt: str, **inputs: Any) -> tuple[list[dict], httpx.Headers]:
    body = {"inputs": {"text_input": [prompt], "max_tokens": [16], "temperature": [0], **inputs}}
    with api.stream("POST", GENERATE, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        events, name = [], None
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: ") and name == "message":
                events.append(json.loads(line[len("data: ") :]))
        return events, reply.headers


def _text(events: list[dict]) -> str:
    return "".join(e["outputs"]["text_output"][0] for e in events)


def test_a_paraphrase_gets_the_cached_generation(api: httpx.Client) -> None:
    # Cosine 0.98 with the served text_embedder; no other test of this module's gateway (its
    # cache lives as long as the module) sends either prompt.
    first, _ = _generate(api, "Write a short story about a fox.")
    assert first and first[0]["cache"] == {"hit": False, "kind": "semantic"}
    again, headers = _generate(api, "Please write a short story about a fox.")
    cache = again[0]["cache"]
    assert cache["hit"] is True and cache["kind"] == "semantic", cache
    assert cache["similarity"] >= 0.9515 and len(cache["entry"]) == 12
    assert headers["x-cache"] == "semantic-hit"
    assert _text(again) == _text(first)


@pytest.mark.parametrize(
    ("cached", "asked"),
    [
        ("List 7 facts about Mars.", "List 8 facts about Mars."),
        ("Is coffee good for your health?", "Is coffee not good for your health?"),
        ("Write a letter from Alice to Bob.", "Write a letter from Bob to Alice."),
        ("What is the capital of Japan?", "What is the population of Japan?"),
    ],
    ids=["number", "negation", "swap", "shared_words"],
)
def test_a_hard_negative_is_generated_not_cached(
    api: httpx.Client, cached: str, asked: str
) -> None:
    _generate(api, cached)
    events, headers = _generate(api, asked)
    assert events[0]["cache"]["hit"] is False
    assert headers["x-cache"] == "miss"


def test_other_sampling_inputs_and_sampled_requests_never_hit(api: httpx.Client) -> None:
    prompt = f"Explain volcanoes in simple terms {uuid.uuid4().hex[:6]}."
    _generate(api, prompt)
    assert _generate(api, prompt, max_tokens=[12])[0][0]["cache"]["hit"] is False
    assert _generate(api, prompt, seed=[5])[0][0]["cache"]["hit"] is False
    sampled = _generate(api, prompt, temperature=[0.9])[0][0]["cache"]
    assert sampled == {"hit": False, "bypass": "not deterministic"}
    assert _generate(api, prompt)[0][0]["cache"]["hit"] is True  # the first is still cached


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_replicas_share_answers_through_redis(
    triton: TritonServer, http_client, tmp_path: Path, redis: RedisServer
) -> None:
    _wait_ready(http_client)
    gateways = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gateways.append(_start(triton, tmp_path / name, redis_url=redis.url))
        body = {"texts": [f"shared through redis {uuid.uuid4()}"]}
        answers = []
        for gateway, key in gateways:
            reply = httpx.post(
                gateway.url + EMBED,
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            answers.append(reply.json())
        assert answers[0]["cache"] == {"hit": False}
        assert answers[1]["cache"]["hit"] is True  # the other replica computed it
        assert _without_cache(answers[1]) == _without_cache(answers[0])
    finally:
        for gateway, _ in gateways:
            assert gateway.stop() == 0, gateway.log()
