"""The launcher hands the gateway its settings through GatewaySettings, not copied names."""

from __future__ import annotations

import pytest

from mlapi_gateway.settings import GatewaySettings
from mlapi_tools.local.__main__ import gateway_environment


def test_environment_round_trips_through_the_gateway_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = gateway_environment(triton_grpc_url="127.0.0.1:18001", triton_http_url="127.0.0.1:18000")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.triton_grpc_url == "127.0.0.1:18001"
    assert settings.triton_http_url == "127.0.0.1:18000"


def test_unknown_or_invalid_settings_fail_in_the_launcher() -> None:
    with pytest.raises(ValueError, match="not gateway settings: triton_url"):
        gateway_environment(triton_url="127.0.0.1:1")
    with pytest.raises(ValueError, match="max_in_flight"):
        gateway_environment(max_in_flight=0)
