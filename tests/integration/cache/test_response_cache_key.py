"""Triton's response cache on a real server: what its key leaves out, and where it is enabled.

The key of Triton 2.51's response cache is the model, the version, the input names and the raw
input bytes. The purpose-built model ``cache_probe`` answers with what it was asked (the input's
shape, the request parameter ``tag``, the input's sum), so each collision below is a response
that is wrong for its request. These tests keep that limitation documented (docs/caching.md):
should a Triton release fix a collision, its test fails and the docs and the models that enable
the cache should be revisited.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

PROBE = "cache_probe"


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, int]:
    stats = client.get_inference_statistics(model)["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "success": int(inference["success"]["count"]),
        "cache_hit": int(inference.get("cache_hit", {}).get("count", 0)),
    }


def _ready(client: httpclient.InferenceServerClient, model: str) -> None:
    deadline = time.monotonic() + 60
    while not client.is_model_ready(model):
        assert time.monotonic() < deadline, f"{model} did not become ready"
        time.sleep(0.5)


def _probe(
    client: httpclient.InferenceServerClient,
    x: np.ndarray,
    tag: str | None = None,
    outputs: list[str] | None = None,
) -> dict[str, Any]:
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32))
    requested = [httpclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    result = client.infer(
        PROBE, [tensor], outputs=requested, parameters={"tag": tag} if tag is not None else None
    )
    answer = result.get_response()
    return {out["name"]: result.as_numpy(out["name"]) for out in answer["outputs"]}


def _fresh(shape: tuple[int, ...]) -> np.ndarray:
    """Input bytes no other test sent (the cache lives as long as the session's server)."""
    seed = uuid.uuid4().int % 2**32
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.fixture(scope="module")
def client(http_client: httpclient.InferenceServerClient) -> httpclient.InferenceServerClient:
    _ready(http_client, PROBE)
    return http_client


def test_a_repeated_request_is_a_hit_not_counted_as_an_inference(client) -> None:
    x = _fresh((2, 3))
    before = _stats(client, PROBE)
    first, second = _probe(client, x), _probe(client, x)
    after = _stats(client, PROBE)
    assert first["shape"].tolist() == second["shape"].tolist() == [2, 3]
    assert after["cache_hit"] - before["cache_hit"] == 1
    assert after["success"] - before["success"] == 2
    # A hit is a success but not an inference: nv_inference_count misses cached answers.
    assert after["inference_count"] - before["inference_count"] == 1


def test_same_bytes_in_another_shape_get_the_first_shapes_answer(client) -> None:
    x = _fresh((2, 6))
    assert _probe(client, x)["shape"].tolist() == [2, 6]
    collided = _probe(client, x.reshape(3, 4))
    assert collided["shape"].tolist() == [2, 6]  # wrong: the request was [3, 4]


def test_other_parameters_get_the_first_parameters_answer(client) -> None:
    x = _fresh((1, 5))
    assert _probe(client, x, tag="first")["tag"].tolist() == [b"first"]
    collided = _probe(client, x, tag="second")
    assert collided["tag"].tolist() == [b"first"]  # wrong: the request said "second"


def test_a_subset_of_outputs_first_leaves_later_requests_without_the_rest(client) -> None:
    x = _fresh((1, 4))
    assert set(_probe(client, x, outputs=["shape"])) == {"shape"}
    collided = _probe(client, x)  # asks for every output
    assert set(collided) == {"shape"}  # wrong: "tag" and "total" are missing
