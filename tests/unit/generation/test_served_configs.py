"""The committed configs agree with the code that builds and serves the models."""

from __future__ import annotations

import re
from pathlib import Path

from mlapi_backend import tokenizer
from mlapi_backend.generation_request import INPUTS, OUTPUTS
from mlapi_tools.build import text_lm, text_prefill

REPO = Path(__file__).resolve().parents[3] / "model_repository"


def tensors(config: str) -> dict[str, tuple[str, list[int]]]:
    found = re.findall(r'name: "(\w+)", data_type: (TYPE_\w+), dims: \[([^\]]*)\]', config)
    return {name: (dtype, [int(d) for d in dims.split(",")]) for name, dtype, dims in found}


def test_decoder_config_matches_the_build() -> None:
    settings = text_lm.DEFAULT_SETTINGS
    state = [settings.layers, settings.hidden_dim]
    config = (REPO / "text_decoder" / "config.pbtxt").read_text()
    assert tensors(config) == {
        "token": ("TYPE_INT64", [1]),
        "state": ("TYPE_FP32", state),
        "logits": ("TYPE_FP32", [tokenizer.VOCAB_SIZE]),
        "new_state": ("TYPE_FP32", state),
    }
    assert 'backend: "onnxruntime"' in config and "dynamic_batching" in config


def test_generator_config_matches_the_library() -> None:
    config = (REPO / "text_generator" / "config.pbtxt").read_text()
    declared = tensors(config)
    assert {name: dtype for name, (dtype, _) in declared.items()} == {**INPUTS, **OUTPUTS}
    settings = text_lm.DEFAULT_SETTINGS
    assert (
        f'"decoder_state_dims", value: {{ string_value: "{settings.layers},{settings.hidden_dim}" }}'
        in config
    )
    assert "decoupled: true" in config


def test_prefill_config_matches_the_build_and_the_generator() -> None:
    settings = text_lm.DEFAULT_SETTINGS
    config = (REPO / text_prefill.PREFILL_MODEL_NAME / "config.pbtxt").read_text()
    assert f'name: "{text_prefill.PREFILL_MODEL_NAME}"' in config
    assert tensors(config) == {
        text_prefill.TOKENS_INPUT: ("TYPE_INT64", [-1]),
        text_prefill.LENGTHS_INPUT: ("TYPE_INT64", [1]),
        "logits": ("TYPE_FP32", [tokenizer.VOCAB_SIZE]),
        text_prefill.STATE_OUTPUT: ("TYPE_FP32", [settings.layers, settings.hidden_dim]),
    }
    generator = (REPO / "text_generator" / "config.pbtxt").read_text()
    assert '"prefill_model", value: { string_value: "text_prefill" }' in generator
    batch = re.search(r'"max_prefill_batch", value: \{ string_value: "(\d+)" \}', generator)
    limit = re.search(r"max_batch_size: (\d+)", config)
    assert batch and limit and int(batch.group(1)) <= int(limit.group(1))
