"""digits' "observability" parameter: on by default, "off" skips the statistics and costs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mlapi_backend.cost import CostMeter, Prices
from mlapi_backend.errors import ModelConfigError
from mlapi_backend.prediction_metrics import Observability, start_observability

SETTINGS = SimpleNamespace(model_name="digits")


def _logger() -> SimpleNamespace:
    lines: list[str] = []
    return SimpleNamespace(Logger=SimpleNamespace(log_info=lines.append), lines=lines)


def _served() -> list[dict]:
    return [{"metadata": np.array([[b'{"model": "digits"}']], dtype=np.object_)}]


def test_off_starts_nothing_and_leaves_answers_as_they_are() -> None:
    pb_utils = _logger()
    observed = start_observability(pb_utils, SETTINGS, {}, {"observability": " OFF "}, {})
    assert observed.meter is None and observed.statistics is None
    results = _served()
    observed.publish()
    observed.record([object()], results, compute_s=0.1)
    observed.stop()
    assert results[0]["metadata"][0][0] == b'{"model": "digits"}'  # no cost appended
    assert pb_utils.lines == ["digits: statistics and cost estimates off"]


@pytest.mark.parametrize("value", ["no", "0", "false", "of"])
def test_a_value_other_than_on_or_off_names_the_model_and_parameter(value: str) -> None:
    with pytest.raises(ModelConfigError, match="model 'digits': parameter 'observability'"):
        start_observability(_logger(), SETTINGS, {}, {"observability": value}, {})


def test_on_prices_each_answer(tmp_path: Path) -> None:
    meter = CostMeter(Prices(cpu_core_hour_usd=3600), os.getpid(), "x", ledger_dir=tmp_path)
    results = _served()
    Observability(meter).record([object()], results, compute_s=0.5)
    cost = json.loads(results[0]["metadata"][0][0])["cost"]
    assert cost["compute_s"] == 0.5 and cost["gpu_s"] == 0 and cost["usd"] > 0
