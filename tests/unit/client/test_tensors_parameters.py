"""Request parameters the protocol cannot carry are refused before anything is sent."""

from __future__ import annotations

import pytest

from mlapi_client.errors import InvalidInputError
from mlapi_client.tensors import RESERVED_PARAMETERS, check_parameters


@pytest.mark.parametrize("key", sorted(RESERVED_PARAMETERS))
def test_reserved_keys_are_refused_naming_the_parameter(key: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        check_parameters({"model_version": "1", key: 1})
    assert refused.value.field == f"parameters.{key}"


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, b"bytes"])
def test_values_the_protocol_has_no_type_for_are_refused(value: object) -> None:
    with pytest.raises(InvalidInputError, match="expected a string, bool, integer or float"):
        check_parameters({"routing_key": value})


def test_ordinary_parameters_pass() -> None:
    check_parameters(None)
    check_parameters({"model_version": "2", "seed": 7, "temperature": 0.5, "flag": True})
