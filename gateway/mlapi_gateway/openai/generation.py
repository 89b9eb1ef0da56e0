"""POST /completions and /chat/completions over a streaming text model (text_generator).

Both call the model's adapter (its stream, the call every stream route makes) with the
prompt and sampling parameters as its input tensors. Streamed answers are OpenAI's chunks as
server-sent events ending with ``data: [DONE]``; a caller that hangs up cancels the gRPC
call, which Triton passes to the model (it stops within a few decode steps).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.openai import chat_template
from mlapi_gateway.openai.bodies import ChatBody, CompletionBody, Sampling, parse_body
from mlapi_gateway.openai.context import PREFIX, Call, admit, openai_errors
from mlapi_gateway.openai.error_objects import error_object
from mlapi_gateway.openai.openai_metrics import TIME_TO_FIRST_TOKEN, count_usage
from mlapi_gateway.routes import HeldStream, json_response
from mlapi_gateway.schemas import TensorPredict
from mlapi_gateway.services import read_body
from mlapi_gateway.streaming import END, HEARTBEAT, next_within

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Generation:
    """One completion request, as the model sees it and as its answer names it."""

    call: Call
    chat: bool
    body: Sampling
    prompt: str
    model: str
    route: str
    started_s: float = field(default_factory=time.perf_counter)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    reserved: int = 0

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + secrets.token_hex(12)

    @property
    def max_tokens(self) -> int | None:
        return self.body.token_limit() if isinstance(self.body, ChatBody) else self.body.max_tokens

    def tensors(self, stream: bool) -> TensorPredict:
        """Return the model's input tensors of this request."""
        inputs: dict[str, Any] = {"text_input": [self.prompt], "stream": [stream]}
        for name, value in (
            ("max_tokens", self.max_tokens),
            ("temperature", self.body.temperature),
            ("top_p", self.body.top_p),
            ("seed", self.body.seed),
        ):
            if value is not None:
                inputs[name] = [value]
        stops = self.body.stops()
        if stops:
            inputs["stop"] = stops
        return TensorPredict(inputs=inputs)

    def envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        """Return the common fields of an answer or a chunk."""
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": f"{kind}.chunk" if chunk and self.chat else kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def choice(self, text: str, finish_reason: str | None, chunk: bool) -> dict[str, Any]:
        """One choice (index 0): text, or a chat message, or a chat delta."""
        out: dict[str, Any] = {"index": 0}
        if not self.chat:
            out["text"] = text
        elif chunk:
            out["delta"] = {"content": text} if text or finish_reason is None else {}
        else:
            out["message"] = {"role": "assistant", "content": text, "refusal": None}
        out["logprobs"] = None
        out["finish_reason"] = finish_reason
        return out


def usage(last: dict[str, Any]) -> dict[str, int]:
    """Return the usage object of a model's last response."""
    prompt, completion = int(last["prompt_tokens"][0]), int(last["completion_tokens"][0])
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def finish_reason_of(outputs: dict[str, Any]) -> str | None:
    """Return the model's finish reason (on its last response only)."""
    reason = outputs.get("finish_reason")
    return str(reason[0]) if reason else None


@contextlib.contextmanager
def _parameters_named(chat: bool, max_name: str) -> Iterator[None]:
    """Rename the model's fields (``body.inputs.text_input``) to the request's parameters."""
    try:
        yield
    except errors.RequestInvalidError as exc:
        renamed = {"text_input": "messages" if chat else "prompt", "max_tokens": max_name}
        exc.errors = [
            errors.FieldError(_parameter(e.field, renamed), e.message, e.expected)
            for e in exc.errors
        ]
        raise


def _parameter(field: str, renamed: dict[str, str]) -> str:
    name = field.removeprefix("body.").removeprefix("inputs.")
    return renamed.get(name, name)


async def _default_max_tokens(call: Call, model: str) -> int:
    config = await call.svc.inference.model_config(model, call.svc.settings.ready_timeout_s)
    value = config.get("parameters", {}).get("default_max_tokens", {}).get("string_value", "64")
    return int(value)


async def _start(request: Request, chat: bool) -> Generation:
    call = await admit(request)
    request.state.openai_headers = call.headers
    raw = await read_body(request)
    body = parse_body(ChatBody if chat else CompletionBody, raw)
    model = call.model(body.model, "generation")
    prompt = (
        chat_template.render(body.messages) if isinstance(body, ChatBody) else body.prompt_text()
    )
    route = f"{PREFIX}/{'chat/completions' if chat else 'completions'}"
    generation = Generation(call, chat, body, prompt, model, route)
    limit = generation.max_tokens
    if limit is None:
        limit = await _default_max_tokens(call, model)
    generation.reserved = len(prompt) + max(limit, 0)
    plan = call.principal.plan
    await call.budgets.take(call.principal.id, plan, generation.reserved, call.headers)
    return generation


async def _settle(generation: Generation, used: dict[str, int] | None) -> None:
    """Give back what the request did not use of its token estimate (``used``: none)."""
    call = generation.call
    spent = used["total_tokens"] if used else 0
    await call.budgets.give_back(
        call.principal.id, call.principal.plan, "tokens", generation.reserved - spent
    )


async def _open(generation: Generation, stream: bool) -> tuple[AsyncIterator[dict[str, Any]], Any]:
    """Start the model's stream; its first item (errors before any byte is sent are HTTP errors)."""
    call = generation.call
    settings = call.svc.settings
    adapter = call.svc.inference.adapter(generation.model)
    timeout_s = settings.sse_max_duration_s if stream else call.deadline_s()
    max_name = (
        "max_completion_tokens"
        if isinstance(generation.body, ChatBody)
        and generation.body.max_completion_tokens is not None
        else "max_tokens"
    )
    with call.loaded(generation.model), _parameters_named(generation.chat, max_name):
        source = adapter.stream(generation.tensors(stream), None, timeout_s, call.request_id)
        try:
            first = await next_within(source, settings)
        except BaseException:
            await source.aclose()
            raise
    return source, first


async def _complete(generation: Generation) -> Response:
    source, first = await _open(generation, stream=False)
    try:
        last = first
        pieces = [] if first is END else [first]
        while (item := await next_within(source, generation.call.svc.settings)) is not END:
            pieces.append(item)
            last = item
    finally:
        await source.aclose()  # type: ignore[attr-defined]
    if last is END:
        raise errors.ModelFailedError(f"model '{generation.model}' sent no answer")
    outputs = last["outputs"]
    text = "".join(str(p["outputs"]["text_output"][0]) for p in pieces)
    reason = finish_reason_of(outputs) or "stop"
    used = usage(outputs)
    await _settle(generation, used)
    count_usage(
        generation.route, generation.model, used["prompt_tokens"], used["completion_tokens"], reason
    )
    answer = generation.envelope([generation.choice(text, reason, chunk=False)], chunk=False)
    answer["usage"] = used
    version = str(last["model_version"])
    generation.call.request.state.model_version = version
    return json_response(answer, headers={**generation.call.headers, "X-Model-Version": version})


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk(generation: Generation, choices: list[dict[str, Any]]) -> bytes:
    """Return one chunk event (with ``"usage": null`` when the usage comes last)."""
    data = generation.envelope(choices, chunk=True)
    if generation.body.include_usage():
        data["usage"] = None
    return _event(data)


def _pieces(generation: Generation, outputs: dict[str, Any]) -> Iterator[bytes]:
    """Yield the chunk events of one model response (its text; the finish reason on the last)."""
    text = str(outputs["text_output"][0])
    reason = finish_reason_of(outputs)
    if generation.chat:
        if text:
            yield _chunk(generation, [generation.choice(text, None, chunk=True)])
        if reason:
            yield _chunk(generation, [generation.choice("", reason, chunk=True)])
    elif text or reason:
        yield _chunk(generation, [generation.choice(text, reason, chunk=True)])


async def _chunks(
    generation: Generation, source: AsyncIterator[dict[str, Any]], first: Any
) -> AsyncIterator[bytes]:
    """Yield the SSE bytes of a streamed completion: chunks, the usage chunk if asked, [DONE]."""
    settings = generation.call.svc.settings
    used: dict[str, int] | None = None
    sent = 0  # text chunks, for the token estimate of a stream whose caller left
    if generation.chat:
        role = {"role": "assistant", "content": ""}
        yield _chunk(
            generation, [{"index": 0, "delta": role, "logprobs": None, "finish_reason": None}]
        )
    pending: asyncio.Future[Any] | None = None
    item = first
    try:
        while item is not END:
            outputs = item["outputs"]
            for piece in _pieces(generation, outputs):
                if sent == 0:
                    ttft_s = time.perf_counter() - generation.started_s
                    TIME_TO_FIRST_TOKEN.labels(generation.route, generation.model).observe(ttft_s)
                sent += 1
                yield piece
            reason = finish_reason_of(outputs)
            if reason:
                used = usage(outputs)
                prompt, completion = used["prompt_tokens"], used["completion_tokens"]
                count_usage(generation.route, generation.model, prompt, completion, reason)
                break
            pending = asyncio.ensure_future(next_within(source, settings))
            while not (await asyncio.wait({pending}, timeout=settings.sse_heartbeat_s))[0]:
                yield HEARTBEAT
            item, pending = pending.result(), None
        if generation.body.include_usage() and used is not None:
            yield _event({**generation.envelope([], chunk=True), "usage": used})
        yield DONE
    except errors.GatewayError as exc:
        yield _event(error_object(exc))
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        await source.aclose()  # type: ignore[attr-defined]
        spent = used or {"total_tokens": len(generation.prompt) + sent}
        await _settle(generation, spent)


async def _stream(generation: Generation) -> Response:
    call = generation.call
    caller = call.principal.id
    call.svc.streams.acquire(caller)
    try:
        source, first = await _open(generation, stream=True)
    except BaseException:
        call.svc.streams.release(caller)
        raise
    headers = {**SSE_HEADERS, **call.headers}
    if first is not END:
        headers["X-Model-Version"] = str(first["model_version"])
        call.request.state.model_version = headers["X-Model-Version"]
    return HeldStream(
        _chunks(generation, source, first),
        lambda: call.svc.streams.release(caller),
        media_type="text/event-stream",
        headers=headers,
    )


async def _generate(request: Request, chat: bool) -> Response:
    generation = await _start(request, chat)
    try:
        if generation.body.stream:
            return await _stream(generation)
        return await _complete(generation)
    except BaseException:  # nothing was generated: the whole estimate goes back
        await _settle(generation, None)
        raise


@openai_errors
async def completions(request: Request) -> Response:
    """OpenAI's POST /completions: one prompt continued by the model, streamed or whole."""
    return await _generate(request, chat=False)


@openai_errors
async def chat_completions(request: Request) -> Response:
    """OpenAI's POST /chat/completions: the messages rendered by chat_template, then completed."""
    return await _generate(request, chat=True)


__all__ = ["chat_completions", "completions"]
