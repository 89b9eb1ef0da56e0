"""Tokenizer step of the ``text_embedder`` ensemble: texts -> padded word-piece ids for the encoder.

It runs the model's own ``tokenizer.json`` (all-MiniLM-L6-v2's BERT word pieces, lower-cased)
through HF ``tokenizers``, with the truncation sentence-transformers applies to this model: at
most ``MAX_TOKENS`` tokens including ``[CLS]`` and ``[SEP]``, so 254 word pieces of the text.
Each text also reports how many tokens the encoder saw and whether its end was cut off.

Each request's texts are padded to its longest text rounded up to a length bucket (the
``pad_buckets`` parameter, e.g. 16, 32, 64, 128, 256 tokens). Triton's dynamic batcher merges
only requests whose tensors have equal shapes, so without buckets two one-text requests of 14
and 15 tokens never share an encoder call; with them, most short texts land in the same few
shapes and the encoder runs them together (docs/embeddings.md has the measurement). Padding does
not change an embedding: attention and mean pooling both ignore masked positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mlapi_backend.errors import InvalidInputError, ModelConfigError
from mlapi_backend.model_config import ModelConfig

TEXT = "text"
IDS = "input_ids"
MASK = "attention_mask"
EMBEDDING = "embedding"
TRUNCATED = "truncated"
TOKEN_COUNT = "token_count"
EMBEDDING_DIM = 384
# sentence-transformers' max_seq_length for all-MiniLM-L6-v2 (sentence_bert_config.json).
MAX_TOKENS = 256
# [CLS] and [SEP]: a text that yields nothing else has no content to embed.
SPECIAL_TOKENS = 2
DEFAULT_MAX_TEXT_BYTES = 16384
# No buckets: pad each request to its own longest text only.
NO_BUCKETS: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenBatch:
    """The encoder's inputs for n texts, plus what the caller learns about each text."""

    input_ids: NDArray[np.int64]
    attention_mask: NDArray[np.int64]
    token_count: NDArray[np.int32]
    truncated: NDArray[np.bool_]

    def outputs(self) -> dict[str, NDArray[Any]]:
        """Return the tokenizer step's outputs, in their config shapes."""
        return {
            IDS: self.input_ids,
            MASK: self.attention_mask,
            TOKEN_COUNT: self.token_count[:, None],
            TRUNCATED: self.truncated[:, None],
        }


class TextTokenizer:
    """The model's word-piece tokenizer with this model's truncation and pad-to-longest."""

    def __init__(
        self, tokenizer: Any, max_tokens: int = MAX_TOKENS, buckets: Sequence[int] = NO_BUCKETS
    ) -> None:
        tokenizer.enable_truncation(max_length=max_tokens)
        pad_id = tokenizer.token_to_id("[PAD]")
        if pad_id is None:
            raise ModelConfigError("tokenizer.json has no [PAD] token")
        tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.pad_id = int(pad_id)
        self.buckets = tuple(sorted(buckets))

    @classmethod
    def from_file(
        cls, path: Path, max_tokens: int = MAX_TOKENS, buckets: Sequence[int] = NO_BUCKETS
    ) -> TextTokenizer:
        """Load ``tokenizer.json`` (the file the model was trained with)."""
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise ModelConfigError(f"tokenizer file {path} is missing: run `make models`")
        return cls(Tokenizer.from_file(str(path)), max_tokens, buckets)

    def padded_length(self, longest: int) -> int:
        """Return the length to pad to: ``longest`` rounded up to a bucket (at most max_tokens)."""
        if not self.buckets:
            return longest
        return next((b for b in self.buckets if b >= longest), max(longest, self.max_tokens))

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenize ``texts`` together, padded to the longest rounded up to a bucket."""
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        extra = self.padded_length(ids.shape[1]) - ids.shape[1]
        if extra > 0:
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=self.pad_id)
            mask = np.pad(mask, ((0, 0), (0, extra)))
        return TokenBatch(
            input_ids=ids,
            attention_mask=mask,
            token_count=np.array([sum(e.attention_mask) for e in encodings], dtype=np.int32),
            truncated=np.array([bool(e.overflowing) for e in encodings], dtype=np.bool_),
        )


@dataclass(frozen=True)
class TokenizerSettings:
    """The tokenizer step's limits, read from its config parameters."""

    max_tokens: int = MAX_TOKENS
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    pad_buckets: tuple[int, ...] = NO_BUCKETS

    @classmethod
    def from_config(cls, config: ModelConfig) -> TokenizerSettings:
        config.require_tensors(
            {TEXT: "TYPE_STRING"},
            {
                IDS: "TYPE_INT64",
                MASK: "TYPE_INT64",
                TOKEN_COUNT: "TYPE_INT32",
                TRUNCATED: "TYPE_BOOL",
            },
        )
        if config.input(TEXT).dims != (1,) or config.max_batch_size < 1:
            raise ModelConfigError(
                f"model '{config.name}': input '{TEXT}' must be batched with dims [1]"
            )
        max_tokens = config.int_parameter("max_tokens", MAX_TOKENS, SPECIAL_TOKENS + 1, 512)
        return cls(
            max_tokens=max_tokens,
            max_text_bytes=config.int_parameter(
                "max_text_bytes", DEFAULT_MAX_TEXT_BYTES, 1, 1 << 20
            ),
            pad_buckets=parse_buckets(
                config.name, config.string_parameter("pad_buckets", ""), max_tokens
            ),
        )


def parse_buckets(model: str, text: str, max_tokens: int) -> tuple[int, ...]:
    """Parse ``pad_buckets`` ("16,32,64"): increasing lengths between 1 and ``max_tokens``."""
    if not text.strip():
        return NO_BUCKETS
    try:
        buckets = tuple(int(part) for part in text.split(","))
    except ValueError:
        buckets = ()
    if not buckets or list(buckets) != sorted(set(buckets)) or not 0 < buckets[0] <= max_tokens:
        raise ModelConfigError(
            f"model '{model}': parameter 'pad_buckets' must be increasing token lengths "
            f"between 1 and {max_tokens} separated by commas, got {text!r}"
        )
    if buckets[-1] > max_tokens:
        raise ModelConfigError(
            f"model '{model}': parameter 'pad_buckets' must not exceed max_tokens {max_tokens}, "
            f"got {buckets[-1]}"
        )
    return buckets


def parse_texts(array: NDArray[Any] | None, max_text_bytes: int) -> list[str]:
    """Check one request's ``text`` tensor ([n, 1] BYTES) and decode it, or raise InvalidInputError."""
    if array is None:
        raise InvalidInputError(TEXT, "a BYTES tensor of shape [n, 1]", "no such input")
    if array.dtype != np.object_:
        raise InvalidInputError(TEXT, "BYTES (UTF-8 text)", str(array.dtype))
    if array.size == 0:
        raise InvalidInputError(TEXT, "at least one text", "an empty tensor")
    texts = []
    for index, item in enumerate(array.reshape(-1)):
        raw = item.encode() if isinstance(item, str) else bytes(item)
        where = f"{TEXT}[{index}]"
        if len(raw) > max_text_bytes:
            raise InvalidInputError(
                where, f"at most {max_text_bytes} bytes of UTF-8", f"{len(raw)} bytes"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                where, "UTF-8 text", f"invalid UTF-8 at byte {exc.start}"
            ) from None
        if not text.strip():
            raise InvalidInputError(where, "a non-empty text", "an empty or blank text")
        texts.append(text)
    return texts


def tokenize_requests(
    tokenizer: TextTokenizer, requests: Sequence[list[str] | Exception]
) -> list[dict[str, NDArray[Any]] | Exception]:
    """Tokenize each valid request's texts (padded to its own bucket); failures pass through.

    A text without any word piece (e.g. only control characters, which BERT's normaliser drops)
    fails its own request only.
    """
    results: list[dict[str, NDArray[Any]] | Exception] = []
    for request in requests:
        if isinstance(request, Exception):
            results.append(request)
            continue
        batch = tokenizer.encode(request)
        empty = np.flatnonzero(batch.token_count <= SPECIAL_TOKENS)
        if empty.size:
            results.append(
                InvalidInputError(
                    f"{TEXT}[{int(empty[0])}]", "a text with at least one word piece", "none"
                )
            )
        else:
            results.append(batch.outputs())
    return results
