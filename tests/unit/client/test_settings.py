from __future__ import annotations

import pytest

from mlapi_client.settings import ClientSettings, Endpoint


@pytest.mark.parametrize(
    ("url", "protocol", "expected"),
    [
        ("http://h:8000", None, Endpoint("http", "h:8000")),
        ("https://h", None, Endpoint("http", "h", ssl=True)),
        ("grpc://h:8001", None, Endpoint("grpc", "h:8001")),
        ("grpcs://h:8001", "grpc", Endpoint("grpc", "h:8001", ssl=True)),
        ("h:8001", "grpc", Endpoint("grpc", "h:8001")),
        ("h:8000/", None, Endpoint("http", "h:8000")),
    ],
)
def test_endpoint_parse(url: str, protocol: str | None, expected: Endpoint) -> None:
    assert Endpoint.parse(url, protocol) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "protocol"), [("ftp://h", None), ("grpc://h:1", "http"), ("http://", None)]
)
def test_endpoint_parse_refuses(url: str, protocol: str | None) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(url, protocol)  # type: ignore[arg-type]


def test_endpoint_url_round_trips() -> None:
    for url in ("http://h:1", "https://h:1", "grpc://h:2", "grpcs://h:2"):
        assert Endpoint.parse(url).url == url


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLAPI_URL", raising=False)
    monkeypatch.setenv("TRITON_GRPC_PORT", "9001")
    monkeypatch.setenv("MLAPI_TIMEOUT_S", "5")
    settings = ClientSettings.from_env("grpc")
    assert settings.endpoint == Endpoint("grpc", "localhost:9001")
    assert settings.timeout_s == 5.0
    monkeypatch.setenv("MLAPI_URL", "http://example:8000")
    assert ClientSettings.from_env().endpoint == Endpoint("http", "example:8000")


def test_default_timeout_is_30_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLAPI_TIMEOUT_S", raising=False)
    assert ClientSettings.from_env().timeout_s == 30.0
