from __future__ import annotations

import pytest

from mlapi_backend.errors import ModelConfigError
from mlapi_backend.model_config import ModelConfig

RAW = {
    "name": "m",
    "max_batch_size": 4,
    "input": [{"name": "a", "data_type": "TYPE_UINT8", "dims": ["-1", "-1"], "optional": False}],
    "output": [{"name": "b", "data_type": "TYPE_FP32", "dims": ["10"]}],
    "parameters": {
        "t": {"string_value": "0.25"},
        "n": {"string_value": "7"},
        "empty": {"string_value": ""},
    },
}


def test_dims_arrive_as_strings_and_are_parsed():
    config = ModelConfig.from_json(RAW)
    assert config.input("a").dims == (-1, -1)
    assert config.output("b").dims == (10,)
    assert config.max_batch_size == 4


def test_parameters_with_defaults_and_ranges():
    config = ModelConfig.from_json(RAW)
    assert config.float_parameter("t", 0.5, 0.0, 1.0) == 0.25
    assert config.int_parameter("n", 1, 1, 10) == 7
    assert config.int_parameter("absent", 3, 1, 10) == 3
    assert config.int_parameter("empty", 3, 1, 10) == 3
    assert config.string_parameter("absent", "x") == "x"
    with pytest.raises(ModelConfigError, match=r"'n' must be in \[1, 5\], got 7"):
        config.int_parameter("n", 1, 1, 5)
    with pytest.raises(ModelConfigError, match="'t' must be of type int"):
        config.int_parameter("t", 1, 0, 5)


def test_require_tensors_names_the_mismatch():
    config = ModelConfig.from_json(RAW)
    config.require_tensors({"a": "TYPE_UINT8"}, {"b": "TYPE_FP32"})
    with pytest.raises(ModelConfigError, match="inputs must be"):
        config.require_tensors({"a": "TYPE_FP32"}, {"b": "TYPE_FP32"})
    with pytest.raises(ModelConfigError, match="no input named 'zz'"):
        config.input("zz")
