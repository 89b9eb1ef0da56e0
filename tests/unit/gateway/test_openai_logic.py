"""Pure logic of the OpenAI-compatible routes: bodies, template, budgets, error objects."""

from __future__ import annotations

import asyncio

import pytest

from mlapi_gateway import errors
from mlapi_gateway.openai.bodies import ChatBody, CompletionBody, EmbeddingBody, parse_body
from mlapi_gateway.openai.budgets import Budgets, MemoryBuckets, duration, refill
from mlapi_gateway.openai.chat_template import render
from mlapi_gateway.openai.error_objects import error_headers, error_object
from mlapi_gateway.settings import GatewaySettings


def _refused(schema: type, raw: bytes) -> errors.RequestInvalidError:
    with pytest.raises(errors.RequestInvalidError) as caught:
        parse_body(schema, raw)
    return caught.value


def test_completion_body_reads_prompt_and_sampling() -> None:
    body = parse_body(
        CompletionBody,
        b'{"model": "m", "prompt": ["Hi"], "max_tokens": 3, "stop": "x", "stream": true,'
        b' "stream_options": {"include_usage": true}}',
    )
    assert body.prompt_text() == "Hi" and body.stops() == ["x"] and body.include_usage()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"model": "m", "prompt": ""}', "prompt"),
        (b'{"model": "m", "prompt": ["a", "b"]}', "prompt"),
        (b'{"model": "m", "prompt": "a", "n": 3}', "n"),
        (b'{"model": "m", "prompt": "a", "max_tokens": 1.5}', "max_tokens"),
        (b'{"model": "m", "prompt": "a", "stop": [1]}', "stop"),
        (b'{"prompt": "a"}', "model"),
        (b"[1]", "body"),
        (b"{nope", "body"),
    ],
)
def test_bad_values_name_the_parameter(raw: bytes, field: str) -> None:
    refusal = _refused(CompletionBody, raw)
    assert refusal.errors[0].field == field
    assert len({e.field for e in refusal.errors}) == len(refusal.errors)  # one per parameter


def test_unsupported_parameters_are_named_unless_neutral() -> None:
    refusal = _refused(
        CompletionBody, b'{"model": "m", "prompt": "a", "presence_penalty": 1, "zeta": 0}'
    )
    assert [e.field for e in refusal.errors] == ["presence_penalty", "zeta"]
    parse_body(CompletionBody, b'{"model": "m", "prompt": "a", "presence_penalty": 0, "n": 1}')


def test_chat_body_refuses_other_roles_and_parts() -> None:
    assert _refused(ChatBody, b'{"model": "m", "messages": []}').errors[0].field == "messages"
    tool = b'{"model": "m", "messages": [{"role": "tool", "content": "x"}]}'
    assert _refused(ChatBody, tool).errors[0].field.startswith("messages.0")
    image = b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'
    assert _refused(ChatBody, image).errors[0].field.startswith("messages.0.content")
    body = parse_body(
        ChatBody,
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},'
        b' {"type": "text", "text": "b"}]}], "max_completion_tokens": 5, "max_tokens": 9}',
    )
    assert body.messages[0].text() == "ab" and body.token_limit() == 5


def test_embedding_body() -> None:
    assert parse_body(EmbeddingBody, b'{"model": "e", "input": "x"}').texts() == ["x"]
    refusal = _refused(EmbeddingBody, b'{"model": "e", "input": ["x"], "encoding_format": "int8"}')
    assert refusal.errors[0].field == "encoding_format"
    assert _refused(EmbeddingBody, b'{"model": "e", "input": [""]}').errors[0].field == "input"


def test_template_renders_one_line_per_message_then_the_cue() -> None:
    body = parse_body(
        ChatBody,
        b'{"model": "m", "messages": [{"role": "developer", "content": "Be brief."},'
        b' {"role": "user", "content": "Two\\nlines"}, {"role": "assistant", "content": "Ok"},'
        b' {"role": "user", "content": "Go"}]}',
    )
    assert render(body.messages) == (
        "System: Be brief.\nUser: Two lines\nAssistant: Ok\nUser: Go\nAssistant:"
    )


def test_bucket_refills_draws_and_gives_back() -> None:
    tokens, draw = refill(60.0, 0.0, 0.0, 60, 50)
    assert (tokens, draw.wait_s, draw.remaining) == (10.0, 0.0, 10)
    tokens, draw = refill(tokens, 0.0, 0.0, 60, 20)
    assert tokens == 10.0 and draw.wait_s == pytest.approx(10.0)  # 1 token/s
    tokens, draw = refill(tokens, 0.0, 5.0, 60, -100)  # refund: capped at the bucket size
    assert tokens == 60.0 and draw.reset_s == 0.0
    assert duration(0.25) == "250ms" and duration(12.4) == "12s" and duration(90) == "1m30s"


def test_budgets_give_back_the_request_when_tokens_run_short() -> None:
    now = [0.0]
    settings = GatewaySettings(openai_requests_per_min={"p": 10}, openai_tokens_per_min={"p": 100})
    budgets = Budgets(settings, MemoryBuckets(clock=lambda: now[0]))

    async def go() -> None:
        headers: dict[str, str] = {}
        await budgets.take("k", "p", 80, headers)
        assert headers["x-ratelimit-remaining-requests"] == "9"
        assert headers["x-ratelimit-remaining-tokens"] == "20"
        with pytest.raises(errors.RateLimitedError) as caught:
            await budgets.take("k", "p", 50, headers)
        assert caught.value.retry_after_s == 18  # 30 tokens short at 100/60 per second
        await budgets.give_back("k", "p", "tokens", 70)
        await budgets.take("k", "p", 50, headers)
        assert headers["x-ratelimit-remaining-requests"] == "8"  # the refused one came back
        with pytest.raises(errors.RequestInvalidError) as too_big:
            await budgets.take("k", "p", 101, headers)
        assert too_big.value.errors[0].field == "max_tokens"
        await budgets.take("k", "other-plan", 10_000, headers)  # no budget for that plan

    asyncio.run(go())


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (errors.AuthenticationRequiredError("no key"), "authentication_error", "invalid_api_key"),
        (errors.ScopeMissingError("no scope"), "permission_error", "insufficient_scope"),
        (errors.NotFoundError("no model", ["a", "b"]), "invalid_request_error", "model_not_found"),
        (errors.RateLimitedError("slow down", 3), "rate_limit_error", "rate_limit_exceeded"),
        (errors.UnavailableError("later", 5), "server_error", "model_unavailable"),
        (errors.DeadlineExceededError("late"), "server_error", "timeout"),
        (errors.ModelFailedError("broke"), "server_error", "model_error"),
    ],
)
def test_error_objects(error: errors.GatewayError, kind: str, code: str) -> None:
    body = error_object(error)["error"]
    assert (body["type"], body["code"]) == (kind, code)
    if isinstance(error, errors.NotFoundError):
        assert body["param"] == "model" and "a, b" in body["message"]
    headers = error_headers(error)
    assert ("Retry-After" in headers) == isinstance(
        error, (errors.RateLimitedError, errors.UnavailableError)
    )


def test_invalid_request_object_names_the_first_field() -> None:
    error = errors.RequestInvalidError(
        "model refused", [errors.FieldError("top_p", "got 0", "(0, 1]")]
    )
    body = error_object(error)["error"]
    assert body["param"] == "top_p" and "(0, 1]" in body["message"]
