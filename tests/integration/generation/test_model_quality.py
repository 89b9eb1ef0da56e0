"""The built language model: clearly better than a unigram model, and its ONNX step is sound."""

from __future__ import annotations

import onnx

from mlapi_tools.build import text_lm
from tests.integration.generation.conftest import DECODER_FILE, ROOT


def test_held_out_perplexity_clearly_beats_the_unigram_baseline(report_figure) -> None:
    metrics = text_lm.read_metrics(ROOT / "model_repository")
    report_figure("text LM held-out perplexity", metrics["held_out_perplexity"])
    report_figure("unigram held-out perplexity", metrics["unigram_perplexity"])
    assert metrics["held_out_perplexity"] < 0.5 * metrics["unigram_perplexity"]
    assert metrics["onnx_max_abs_logit_error"] < 1e-3


def test_decode_step_loads_in_the_ort_of_ngc_24_10() -> None:
    model = onnx.load(str(DECODER_FILE))
    assert model.ir_version <= 9  # ONNX Runtime 1.19 reads IR <= 10; NGC 24.10 embeds 1.19
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
