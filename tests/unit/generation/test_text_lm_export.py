"""The hand-written ONNX decode step computes PyTorch's GRU equations (checked against numpy)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from mlapi_backend import tokenizer
from mlapi_tools.build import text_lm

ort = pytest.importorskip("onnxruntime")


def random_weights(layers: int, embed: int, hidden: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    vocab = tokenizer.VOCAB_SIZE

    def w(*shape: int) -> np.ndarray:
        return rng.normal(scale=0.3, size=shape).astype(np.float32)

    weights = {"embedding": w(vocab, embed), "head_w": w(vocab, hidden), "head_b": w(vocab)}
    for layer in range(layers):
        width = embed if layer == 0 else hidden
        weights |= {
            f"weight_ih_l{layer}": w(3 * hidden, width),
            f"weight_hh_l{layer}": w(3 * hidden, hidden),
            f"bias_ih_l{layer}": w(3 * hidden),
            f"bias_hh_l{layer}": w(3 * hidden),
        }
    return weights


def numpy_step(
    weights: dict[str, np.ndarray], tokens: np.ndarray, state: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    def sigmoid(x: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-x))

    x = weights["embedding"][tokens[:, 0]]
    new = []
    for layer in range(state.shape[1]):
        h = state[:, layer]
        gi = x @ weights[f"weight_ih_l{layer}"].T + weights[f"bias_ih_l{layer}"]
        gh = h @ weights[f"weight_hh_l{layer}"].T + weights[f"bias_hh_l{layer}"]
        i_r, i_z, i_n = np.split(gi, 3, axis=1)
        h_r, h_z, h_n = np.split(gh, 3, axis=1)
        r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
        n = np.tanh(i_n + r * h_n)
        x = (1 - z) * n + z * h
        new.append(x)
    return x @ weights["head_w"].T + weights["head_b"], np.stack(new, axis=1)


@pytest.mark.parametrize("layers", [1, 2])
def test_onnx_step_matches_the_gru_equations_batch_first(layers: int) -> None:
    hidden, embed, batch = 16, 8, 5
    weights = random_weights(layers, embed, hidden)
    model_bytes = text_lm.decode_step_onnx(weights, layers, hidden)
    model = onnx.load_from_string(model_bytes)
    assert model.ir_version == text_lm.ONNX_IR_VERSION <= 9
    assert model.opset_import[0].version == text_lm.ONNX_OPSET
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [i.shape[0] for i in session.get_inputs()] == ["batch", "batch"]
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, tokenizer.VOCAB_SIZE, size=(batch, 1)).astype(np.int64)
    state = rng.normal(size=(batch, layers, hidden)).astype(np.float32)
    logits, new_state = session.run(None, {text_lm.TOKEN_INPUT: tokens, text_lm.STATE_INPUT: state})
    want_logits, want_state = numpy_step(weights, tokens, state)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-4, atol=1e-5)
    # each row depends only on its own token and state: batching does not mix streams
    row_logits, _ = session.run(
        None, {text_lm.TOKEN_INPUT: tokens[2:3], text_lm.STATE_INPUT: state[2:3]}
    )
    np.testing.assert_allclose(row_logits[0], logits[2], rtol=1e-5, atol=1e-5)


def test_unigram_perplexity() -> None:
    train = np.array([1, 1, 2, 2], dtype=np.int64)
    # add-one smoothing over the whole vocabulary: P(1) = 3 / (4 + VOCAB_SIZE)
    expected = (4 + tokenizer.VOCAB_SIZE) / 3
    assert text_lm.unigram_perplexity(train, np.array([1, 2], dtype=np.int64)) == pytest.approx(
        expected
    )


def test_split_holds_out_the_tail() -> None:
    train, held_out = text_lm.split_ids("abcdefghij", 0.2)
    assert tokenizer.decode(train) == "abcdefgh" and tokenizer.decode(held_out) == "ij"


def test_fingerprint_changes_with_corpus_and_settings() -> None:
    base = text_lm.fingerprint("text", text_lm.DEFAULT_SETTINGS)
    assert base == text_lm.fingerprint("text", text_lm.DEFAULT_SETTINGS)
    assert base != text_lm.fingerprint("text!", text_lm.DEFAULT_SETTINGS)
    assert base != text_lm.fingerprint("text", text_lm.TrainingSettings(steps=1))
    assert re.fullmatch(r"[0-9a-f]{16}", base)
