"""Errors as the openai package raises them: its own classes, OpenAI's error object, the status."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from mlapi_tools.local.triton_process import TritonServer
from tests.integration.gateway.harness import Gateway, create_key, free_port

from .conftest import REQUESTS_PER_MIN, TOKENS_PER_MIN, openai_env

MODEL = "text_generator"


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 5000}, "max_tokens"),
        ({"temperature": 3.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"stop": ["x"] * 9}, "stop"),
        ({"n": 2}, "n"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"prompt": "x" * 400}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ],
)
def test_invalid_parameter_is_400_naming_it(client: openai.OpenAI, extra: dict, param: str) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**body)
    assert caught.value.status_code == 400
    error = _error(caught.value)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert param.split(".")[0] in error["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {"presence_penalty": 0.5},
        {"frequency_penalty": 1.0},
        {"logit_bias": {"50256": -100}},
        {"logprobs": 2},
        {"best_of": 3},
        {"echo": True},
        {"suffix": "end"},
    ],
)
def test_unsupported_parameter_is_400_naming_it(client: openai.OpenAI, extra: dict) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, **extra)
    error = _error(caught.value)
    (name,) = extra
    assert error["param"] == name and "unsupported" in error["message"]


def test_neutral_values_of_unsupported_parameters_are_accepted(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="Hello", max_tokens=4, presence_penalty=0, frequency_penalty=0,
        n=1, echo=False, user="someone",
    )  # fmt: skip
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def test_chat_refusals_name_the_message_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]
        )
    assert _error(caught.value)["param"].startswith("messages.0")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "y" * 300}]
        )
    assert _error(caught.value)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert _error(caught.value)["param"] == "tools"


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4o", prompt="Hello", max_tokens=4)
    error = _error(caught.value)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert "text_generator" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model=MODEL, input="not an embedding model")


def test_missing_wrong_or_unscoped_key(base_url: str, openai_keys: dict[str, str]) -> None:
    missing = httpx.post(f"{base_url}/completions", json={"model": MODEL, "prompt": "Hi"})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    for key in ("mlapi_nope_secret", "not-even-a-key"):
        with (
            openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError) as caught,
        ):
            bad.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
        assert caught.value.status_code == 401
        assert _error(caught.value)["type"] == "authentication_error"
        assert caught.value.response.headers["www-authenticate"].startswith("Bearer")
    with (
        openai.OpenAI(base_url=base_url, api_key=openai_keys["admin"], max_retries=0) as admin,
        pytest.raises(openai.PermissionDeniedError),
    ):
        admin.models.list()


def test_deadline_is_504(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(
            model=MODEL, prompt="Hello", max_tokens=1024, extra_query={"timeout_s": 0.1}
        )
    assert caught.value.status_code == 504
    assert _error(caught.value)["code"] == "timeout"


def test_request_and_token_budgets_are_429_with_headers(
    base_url: str, openai_keys: dict[str, str]
) -> None:
    """The metered plan: 4 requests and 400 tokens per minute (prompt + max_tokens)."""
    with openai.OpenAI(base_url=base_url, api_key=openai_keys["metered"], max_retries=0) as c:
        raw = c.completions.with_raw_response.create(model=MODEL, prompt="Hi", max_tokens=100)
        headers = raw.headers
        assert headers["x-ratelimit-limit-requests"] == str(REQUESTS_PER_MIN["metered"])
        assert headers["x-ratelimit-remaining-requests"] == "3"
        assert headers["x-ratelimit-limit-tokens"] == str(TOKENS_PER_MIN["metered"])
        # 102 taken at the start; the answer's headers say what was left then
        assert int(headers["x-ratelimit-remaining-tokens"]) <= 400 - 102 + 1
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        # More than the whole token budget can never pass: 400, not a 429 to retry forever.
        with pytest.raises(openai.BadRequestError) as caught:
            c.completions.create(model=MODEL, prompt="Hi", max_tokens=500)
        assert _error(caught.value)["param"] == "max_tokens"
        # Three large requests use up the tokens before the requests run out.
        c.completions.create(model=MODEL, prompt="Hi", max_tokens=150)
        with pytest.raises(openai.RateLimitError) as caught:
            c.completions.create(model=MODEL, prompt="Hi", max_tokens=300)
        assert int(caught.value.response.headers["retry-after"]) >= 1
        assert _error(caught.value)["type"] == "rate_limit_error"
        assert "tokens" in _error(caught.value)["message"]
        c.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        with pytest.raises(openai.RateLimitError) as caught:
            c.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        assert "requests" in _error(caught.value)["message"]
        assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_triton_gone_is_503_with_retry_after(triton: TritonServer, tmp_path: Path) -> None:
    key = create_key(tmp_path / "keys.json", "predict")
    env = openai_env(triton, tmp_path)
    nowhere = f"127.0.0.1:{free_port()}"
    env["MLAPI_GATEWAY_TRITON_GRPC_URL"] = env["MLAPI_GATEWAY_TRITON_HTTP_URL"] = nowhere
    env["MLAPI_GATEWAY_READY_TIMEOUT_S"] = "0.5"
    gateway = Gateway(env, tmp_path / "gateway.log").start()
    try:
        with openai.OpenAI(base_url=f"{gateway.url}/openai/v1", api_key=key, max_retries=0) as c:
            for call in (
                lambda: c.completions.create(model=MODEL, prompt="Hi", max_tokens=4),
                lambda: c.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
                ),
                lambda: c.embeddings.create(model="text_embedder", input="Hi"),
            ):
                with pytest.raises(openai.InternalServerError) as caught:
                    call()
                assert caught.value.status_code == 503
                assert int(caught.value.response.headers["retry-after"]) >= 1
                assert _error(caught.value)["type"] == "server_error"
    finally:
        assert gateway.stop() == 0


def test_errors_are_json_for_curl_too(base_url: str, openai_keys: dict[str, str]) -> None:
    reply = httpx.post(
        f"{base_url}/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {openai_keys['predict']}"},
    )
    assert reply.status_code == 400
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.text)["error"]["type"] == "invalid_request_error"
