"""POST /embeddings over the text embedding model's adapter (text_embedder).

``input`` is one text or a list (at most the model's max_batch_size, as on the native
route); ``encoding_format`` ``base64`` sends each vector as the base64 of its little-endian
float32 bytes, as OpenAI does.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from mlapi_gateway import errors
from mlapi_gateway.openai.bodies import EmbeddingBody, parse_body
from mlapi_gateway.openai.context import PREFIX, admit, openai_errors
from mlapi_gateway.openai.openai_metrics import TOKENS
from mlapi_gateway.routes import json_response
from mlapi_gateway.services import read_body

ROUTE = f"{PREFIX}/embeddings"
# The token estimate taken before the call: a text's characters plus [CLS] and [SEP], at
# most the model's 256-token cut; the count the model reports replaces it afterwards.
MAX_TEXT_TOKENS = 256


@contextlib.contextmanager
def _input_named() -> Iterator[None]:
    """Rename the adapter's fields (``body.texts.3``) to the request's (``input.3``)."""
    try:
        yield
    except errors.RequestInvalidError as exc:
        exc.errors = [
            errors.FieldError(e.field.replace("body.texts", "input", 1), e.message, e.expected)
            for e in exc.errors
        ]
        raise


def _vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return values
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")


@openai_errors
async def embeddings(request: Request) -> Response:
    """OpenAI's POST /embeddings: one unit-length vector per input text."""
    call = await admit(request)
    request.state.openai_headers = call.headers
    body = parse_body(EmbeddingBody, await read_body(request))
    model = call.model(body.model, "embedding")
    texts = body.texts()
    estimate = sum(min(len(text) + 2, MAX_TEXT_TOKENS) for text in texts)
    caller, plan = call.principal.id, call.principal.plan
    await call.budgets.take(caller, plan, estimate, call.headers)
    used = 0
    try:
        adapter = call.svc.inference.adapter(model)
        with call.loaded(model), _input_named():
            parsed = adapter.parse({"texts": texts})
            answer = await adapter.predict(parsed, None, call.deadline_s(), call.request_id)
        used = sum(int(e["token_count"]) for e in answer["embeddings"])
    finally:
        await call.budgets.give_back(caller, plan, "tokens", estimate - used)
    TOKENS.labels(ROUTE, model, "embedded").inc(used)
    version = str(answer["model_version"])
    request.state.model_version = version
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _vector(e["embedding"], body.encoding_format),
        }
        for i, e in enumerate(answer["embeddings"])
    ]
    reply = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
    return json_response(reply, headers={**call.headers, "X-Model-Version": version})
