"""text_embedder's embeddings in-process: the served tokenizer and ONNX encoder, no server.

The same files Triton serves (model_repository/text_embedder_tokenizer, _encoder), so the
vectors are the served ones (cosine >= 0.9999 with sentence-transformers, docs/embeddings.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mlapi_backend.text_embedding import TextTokenizer


class LocalEmbedder:
    """Unit embeddings of texts with ONNX Runtime on ``threads`` intra-op threads."""

    def __init__(self, repository: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.tokenizer = TextTokenizer.from_file(
            repository / "text_embedder_tokenizer" / "1" / "tokenizer.json"
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(repository / "text_embedder_encoder" / "1" / "model.onnx"),
            options,
            providers=["CPUExecutionProvider"],
        )

    def embed(self, texts: Sequence[str], batch: int = 1) -> npt.NDArray[np.float32]:
        """Return one unit vector per text, ``batch`` texts per ONNX Runtime call."""
        rows = []
        for start in range(0, len(texts), batch):
            tokens = self.tokenizer.encode(texts[start : start + batch])
            (vectors,) = self.session.run(
                ["embedding"],
                {"input_ids": tokens.input_ids, "attention_mask": tokens.attention_mask},
            )
            rows.append(np.asarray(vectors, dtype=np.float32))
        return np.concatenate(rows) if rows else np.zeros((0, 384), np.float32)
