"""text_prefill (ONNX's GRU over padded prompts) equals the decode step run character by character."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mlapi_backend import tokenizer
from mlapi_tools.build import text_lm, text_prefill

from .test_text_lm_export import random_weights

ort = pytest.importorskip("onnxruntime")


def stepped(step: object, prompt: np.ndarray, layers: int, hidden: int) -> tuple[np.ndarray, ...]:
    state = np.zeros((1, layers, hidden), dtype=np.float32)
    logits = np.zeros(0, dtype=np.float32)
    for token in prompt:
        logits, state = step.run(  # type: ignore[attr-defined]
            None, {text_lm.TOKEN_INPUT: np.array([[token]], dtype=np.int64), "state": state}
        )
    return logits[0], state[0]


@pytest.mark.parametrize("layers", [1, 2])
def test_padded_prompts_of_mixed_lengths_match_the_decode_steps(layers: int) -> None:
    hidden, embed = 16, 8
    weights = random_weights(layers, embed, hidden, seed=3)
    step = ort.InferenceSession(
        text_lm.decode_step_onnx(weights, layers, hidden), providers=["CPUExecutionProvider"]
    )
    model_bytes = text_prefill.prefill_onnx(weights, layers, hidden)
    model = onnx.load_from_string(model_bytes)
    assert model.ir_version == text_lm.ONNX_IR_VERSION
    assert model.opset_import[0].version == text_lm.ONNX_OPSET
    prefill = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    lengths = [1, 9, 4, 23]
    tokens = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for row, n in enumerate(lengths):
        tokens[row, :n] = rng.integers(0, tokenizer.VOCAB_SIZE, size=n)
    # padding with a non-zero id proves the model ignores what lies past each length
    tokens[0, 1:] = 5
    feed = {"tokens": tokens, "lengths": np.array(lengths, dtype=np.int64)[:, None]}
    logits, states = prefill.run(None, feed)
    assert logits.shape == (4, tokenizer.VOCAB_SIZE) and states.shape == (4, layers, hidden)
    for row, n in enumerate(lengths):
        want_logits, want_state = stepped(step, tokens[row, :n], layers, hidden)
        np.testing.assert_allclose(logits[row], want_logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(states[row], want_state, rtol=1e-5, atol=1e-5)
        # and alone, unpadded, a prompt gets the same answer as inside the batch
        alone = prefill.run(
            None, {"tokens": tokens[row : row + 1, :n], "lengths": np.array([[n]], dtype=np.int64)}
        )
        np.testing.assert_allclose(alone[0][0], logits[row], rtol=1e-5, atol=1e-6)


def test_the_export_is_deterministic() -> None:
    weights = random_weights(1, 8, 16)
    assert text_prefill.prefill_onnx(weights, 1, 16) == text_prefill.prefill_onnx(weights, 1, 16)


def test_build_writes_the_model_from_the_decoder_and_skips_when_up_to_date(
    tmp_path: Path,
) -> None:
    settings = text_lm.TrainingSettings(embedding_dim=8, hidden_dim=16, layers=2)
    decoder = tmp_path / "text_decoder" / "1" / "model.onnx"
    decoder.parent.mkdir(parents=True)
    decoder.write_bytes(text_lm.decode_step_onnx(random_weights(2, 8, 16), 2, 16))
    metrics = text_prefill.build(tmp_path, settings)
    written = tmp_path / "text_prefill" / "1" / "model.onnx"
    assert metrics["max_abs_error_vs_decode_steps"] < text_prefill.MAX_ERROR
    assert json.loads((written.parent / "metrics.json").read_text()) == metrics
    first = written.read_bytes()
    written.write_bytes(b"not rebuilt")
    assert text_prefill.build(tmp_path, settings) == metrics
    assert written.read_bytes() == b"not rebuilt"
    text_prefill.build(tmp_path, settings, force=True)
    assert written.read_bytes() == first
    # a new decode step makes the prefill stale
    decoder.write_bytes(text_lm.decode_step_onnx(random_weights(2, 8, 16, seed=9), 2, 16))
    assert text_prefill.build(tmp_path, settings)["fingerprint"] != metrics["fingerprint"]
    assert written.read_bytes() != first
