"""The ``text_embedder`` adapter: a list of texts -> one unit-length embedding per text.

How many texts one request may carry is the model's ``max_batch_size`` (read from its served
config, re-read every ``metadata_cache_s``); what a text may be (non-empty, at most the
tokenizer's ``max_text_bytes`` of UTF-8) is checked by the model, whose 400 names the text,
here as ``body.texts.i``. Texts past the model's 256-token cut are embedded from their start
and come back with ``truncated: true``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Hashable, Iterator
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from mlapi_gateway import errors
from mlapi_gateway.adapters.base import ModelAdapter
from mlapi_gateway.upstream import Upstream

TEXT_INPUT = "text"
# The model names a text text[i] (mlapi_backend.text_embedding); in the body's dotted paths
# (as pydantic's errors give them) that is body.texts.i.
_MODEL_FIELD = re.compile(r"^body\.text(?:\[(\d+)\])?$")

Text = Annotated[str, StringConstraints(min_length=1)]


class EmbedPredict(BaseModel):
    """``text_embedder``: the texts to embed, each a non-empty string."""

    model_config = ConfigDict(extra="forbid", strict=True)

    texts: list[Text] = Field(
        min_length=1,
        description="texts to embed; each longer than 256 word pieces is cut there",
        examples=[["A man is playing a guitar.", "Someone plays an instrument."]],
    )


class Embedding(BaseModel):
    """One text's embedding and what the tokenizer did with the text."""

    embedding: list[float] = Field(description="384 floats, unit length (cosine = dot product)")
    truncated: bool = Field(description="the text was cut at the model's 256-token limit")
    token_count: int = Field(description="tokens the encoder saw, [CLS] and [SEP] included")


class EmbedAnswer(BaseModel):
    """``text_embedder``'s answer: one embedding per text, in the order sent."""

    model: str
    model_version: str
    dimensions: int
    embeddings: list[Embedding]


class TextEmbedderAdapter(ModelAdapter):
    """Typed calls of ``text_embedder``; the per-request text count comes from its config."""

    body_schema: ClassVar[type[BaseModel]] = EmbedPredict
    answer_schema: ClassVar[type[BaseModel]] = EmbedAnswer
    typed: ClassVar[bool] = True

    def __init__(self, name: str, upstream: Upstream) -> None:
        super().__init__(name, upstream)
        self.max_texts: int | None = None  # unknown until the config is read

    async def limit(self, wait_s: float | None) -> int | None:
        """Return the model's max_batch_size; the last known value while a re-read fails."""
        try:
            config = await self.upstream.model_config(self.name, wait_s)
        except (errors.GatewayError, TimeoutError):
            if self.max_texts is not None:
                return self.max_texts
            raise
        self.max_texts = int(config.get("max_batch_size", 0)) or None
        return self.max_texts

    async def discover(self) -> None:
        await self.limit(None)

    def _check(self, body: EmbedPredict, max_texts: int | None) -> None:
        if max_texts is not None and len(body.texts) > max_texts:
            raise errors.RequestInvalidError(
                "the request body is invalid",
                [
                    errors.FieldError(
                        "body.texts", f"{len(body.texts)} texts", f"at most {max_texts} texts"
                    )
                ],
            )

    async def check(self, body: BaseModel, version: str | None) -> None:
        assert isinstance(body, EmbedPredict)
        max_texts = self.max_texts
        with contextlib.suppress(errors.GatewayError, TimeoutError):
            max_texts = await self.limit(self.upstream.settings.ready_timeout_s)
        self._check(body, max_texts)

    async def infer(
        self, body: BaseModel, version: str | None, timeout_s: float, request_id: str | None
    ) -> dict[str, Any]:
        assert isinstance(body, EmbedPredict)
        self._check(body, await self.limit(timeout_s))
        texts = np.array([[text.encode()] for text in body.texts], dtype=np.object_)
        with _texts_named(), self.upstream.translated(self.name, version):
            response = await self.upstream.client.infer(
                self.name,
                {TEXT_INPUT: texts},
                version,
                timeout_s=timeout_s,
                retry=False,
                request_id=request_id,
            )
        vectors = response.outputs["embedding"]
        truncated = response.outputs["truncated"].reshape(-1)
        counts = response.outputs["token_count"].reshape(-1)
        return {
            "model": self.name,
            "model_version": response.model_version,
            "dimensions": int(vectors.shape[1]),
            "embeddings": [
                {"embedding": v.tolist(), "truncated": bool(t), "token_count": int(c)}
                for v, t, c in zip(vectors, truncated, counts, strict=True)
            ],
        }

    def revision(self) -> Hashable:
        return self.max_texts

    def documented_schemas(self) -> dict[str, dict[str, Any]]:
        schemas = super().documented_schemas()
        if self.max_texts is not None:
            schemas[EmbedPredict.__name__]["properties"]["texts"]["maxItems"] = self.max_texts
        return schemas


@contextlib.contextmanager
def _texts_named() -> Iterator[None]:
    """Rename the model's field names (``body.text[i]``) to the body's (``body.texts.i``)."""
    try:
        yield
    except errors.RequestInvalidError as exc:
        exc.errors = [
            errors.FieldError(_body_field(e.field), e.message, e.expected) for e in exc.errors
        ]
        raise


def _body_field(field: str) -> str:
    named = _MODEL_FIELD.match(field)
    if named is None:
        return field
    return "body.texts" if named.group(1) is None else f"body.texts.{named.group(1)}"
