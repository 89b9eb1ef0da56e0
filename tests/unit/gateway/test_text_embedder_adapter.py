"""The text_embedder adapter over a fake Triton: the request tensor it sends, the answer it
builds, the per-request text limit read from the model's config (and followed when it changes),
and the model's field names turned into the body's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mlapi_client import errors as client_errors
from mlapi_client.results import InferResponse
from mlapi_gateway.adapters import ADAPTERS
from mlapi_gateway.adapters.text_embedder import TextEmbedderAdapter

from .fake_triton import FakeTriton
from .inprocess import Gateway, run

PREDICT = "/v1/models/text_embedder/predict"


class EmbedderTriton(FakeTriton):
    """A fake whose text_embedder embeds a text as [len, 0, ...] and refuses the text "bad"."""

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.NDArray[Any]],
        version: str | None = None,
        **options: Any,
    ) -> InferResponse:
        self._called("infer", model=model, inputs=inputs)
        texts = inputs["text"]
        for index, (text,) in enumerate(texts):
            if text == b"bad":
                raise client_errors.InvalidInputError(
                    f"input 'text[{index}]': expected a good text, got bad",
                    field=f"text[{index}]",
                    expected="a good text",
                )
        vectors = np.zeros((len(texts), 384), dtype=np.float32)
        vectors[:, 0] = [len(text) for (text,) in texts]
        return InferResponse(
            model,
            "1",
            {
                "embedding": vectors,
                "truncated": np.array([[len(t) > 5] for (t,) in texts]),
                "token_count": np.array([[len(t) + 2] for (t,) in texts], dtype=np.int32),
            },
        )


def _triton(max_batch_size: int) -> EmbedderTriton:
    triton = EmbedderTriton(**vars(FakeTriton.default()))
    triton.configs["text_embedder"] = {"name": "text_embedder", "max_batch_size": max_batch_size}
    return triton


def _fields(reply: Any) -> dict[str, dict[str, str]]:
    assert reply.status_code == 400, reply.text
    return {error["field"]: error for error in reply.json()["errors"]}


def test_texts_go_as_one_bytes_tensor_and_come_back_in_order(tmp_path: Path) -> None:
    triton = _triton(4)
    assert ADAPTERS["text_embedder"] is TextEmbedderAdapter

    async def check(gw: Gateway) -> None:
        reply = await gw.http.post(PREDICT, json={"texts": ["ab", "été long"]}, headers=gw.auth)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["model"], body["model_version"], body["dimensions"]) == (
            "text_embedder",
            "1",
            384,
        )
        assert [e["embedding"][0] for e in body["embeddings"]] == [2.0, 10.0]  # UTF-8 bytes
        assert [e["truncated"] for e in body["embeddings"]] == [False, True]
        assert [e["token_count"] for e in body["embeddings"]] == [4, 12]
        (call,) = triton.called("infer")
        sent = call["inputs"]["text"]
        assert sent.shape == (2, 1) and sent.dtype == object and sent[1, 0] == "été long".encode()

    run(tmp_path, check, triton, models=["text_embedder"])


def test_the_text_limit_is_the_models_max_batch_size(tmp_path: Path) -> None:
    triton = _triton(4)

    async def check(gw: Gateway) -> None:
        ok = await gw.http.post(PREDICT, json={"texts": ["t"] * 4}, headers=gw.auth)
        assert ok.status_code == 200, ok.text
        error = _fields(await gw.http.post(PREDICT, json={"texts": ["t"] * 5}, headers=gw.auth))
        assert error["body.texts"] == {
            "field": "body.texts",
            "message": "5 texts",
            "expected": "at most 4 texts",
        }
        spec = (await gw.http.get("/openapi.json")).json()
        assert spec["components"]["schemas"]["EmbedPredict"]["properties"]["texts"]["maxItems"] == 4
        triton.configs["text_embedder"]["max_batch_size"] = 2  # reloaded with a lower limit
        error = _fields(await gw.http.post(PREDICT, json={"texts": ["t"] * 3}, headers=gw.auth))
        assert error["body.texts"]["expected"] == "at most 2 texts"
        assert len(triton.called("infer")) == 1  # refused before reaching the model

    run(tmp_path, check, triton, models=["text_embedder"], metadata_cache_s=0)


def test_the_models_field_is_named_as_in_the_body(tmp_path: Path) -> None:
    async def check(gw: Gateway) -> None:
        body = {"texts": ["fine", "bad"]}
        error = _fields(await gw.http.post(PREDICT, json=body, headers=gw.auth))["body.texts.1"]
        assert error["expected"] == "a good text"

    run(tmp_path, check, _triton(4), models=["text_embedder"])
