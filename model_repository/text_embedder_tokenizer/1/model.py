"""``text_embedder_tokenizer``: UTF-8 texts -> word-piece ids for text_embedder's encoder step.

Thin adapter: validation, tokenization and truncation live in mlapi_backend.text_embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from mlapi_backend.failure_log import FailureLog
from mlapi_backend.model_config import ModelConfig
from mlapi_backend.text_embedding import (
    TEXT,
    TextTokenizer,
    TokenizerSettings,
    parse_texts,
    tokenize_requests,
)
from mlapi_backend.triton_responses import respond


class TritonPythonModel:
    """Tokenizes each request of an execute call; a bad one fails alone."""

    def initialize(self, args: dict[str, str]) -> None:
        config = ModelConfig.from_json(json.loads(args["model_config"]))
        self.settings = TokenizerSettings.from_config(config)
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.tokenizer = TextTokenizer.from_file(
            version_dir / "tokenizer.json", self.settings.max_tokens, self.settings.pad_buckets
        )
        self.failures = FailureLog(pb_utils.Logger, config.name)

    def execute(self, requests: list) -> list:
        return respond(requests, self._parse, self._run, pb_utils, self.failures)

    def _parse(self, request) -> list[str]:
        tensor = pb_utils.get_input_tensor_by_name(request, TEXT)
        array = None if tensor is None else tensor.as_numpy()
        return parse_texts(array, self.settings.max_text_bytes)

    def _run(self, parsed: list) -> list:
        return tokenize_requests(self.tokenizer, parsed)
