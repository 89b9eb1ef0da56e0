"""A generation model that is not loaded is a 503 with Retry-After, then serves again."""

from __future__ import annotations

import openai
import pytest
import tritonclient.http as httpclient

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer

MODEL = "text_generator"


def test_unloaded_model_is_503_then_recovers(client: openai.OpenAI, triton: TritonServer) -> None:
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage is not None
    control = access.with_key(httpclient.InferenceServerClient(triton.http_url))
    try:
        control.unload_model(MODEL)
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as caught:
                client.completions.create(model=MODEL, prompt="Hi", max_tokens=2, stream=stream)
            assert caught.value.status_code == 503, caught.value.response.text
            assert int(caught.value.response.headers["retry-after"]) >= 1
            assert caught.value.response.json()["error"]["code"] == "model_unavailable"
    finally:
        control.load_model(MODEL)
        control.close()
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=2).usage is not None
