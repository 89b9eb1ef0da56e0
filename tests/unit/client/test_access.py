"""The access key: lookup order, a private file created once, and the headers each protocol sends."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlapi_client import access


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(access.KEY_ENV, raising=False)
    monkeypatch.delenv(access.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def test_ensure_key_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "triton.key"
    key = access.ensure_key(path)
    assert len(key) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert access.ensure_key(path) == key  # the same key on every start
    assert access.read_key(path) == key


def test_lookup_order_env_then_named_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert access.read_key() is None
    default = access.ensure_key()
    assert access.default_key_file() == tmp_path / "state" / "mlapi" / "triton.key"
    assert access.read_key() == default
    named = access.ensure_key(tmp_path / "other.key")
    monkeypatch.setenv(access.KEY_FILE_ENV, str(tmp_path / "other.key"))
    assert access.read_key() == named != default
    monkeypatch.setenv(access.KEY_ENV, "from-the-env")
    assert access.read_key() == "from-the-env"


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "triton.key"
    path.write_text("leaky\n")
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        access.read_key(path)
    with pytest.raises(PermissionError):
        access.ensure_key(path)


def test_headers_and_server_arguments() -> None:
    assert access.http_headers("k") == {"mlapi-triton-key": "k"}
    assert access.grpc_headers("k") == {"triton-grpc-protocol-mlapi-triton-key": "k"}
    assert access.http_headers(None) == access.grpc_headers(None) == {}
    http_arg, grpc_arg = access.restriction_args("k")
    for arg in (http_arg, grpc_arg):
        apis, _, header = arg.split("=", 1)[1].partition(":")
        assert header == "mlapi-triton-key=k"
        assert "health" not in apis.split(",")
        control = {"model-repository", "shared-memory", "trace", "logging"}
        assert control | {"inference", "metadata"} <= set(apis.split(","))


class _Request:
    def __init__(self, headers: dict[str, str] | None) -> None:
        self.headers = headers


def test_plugin_adds_the_key_to_every_request() -> None:
    plugin = access.KeyPlugin("k", "grpc")
    bare = _Request(None)
    plugin(bare)
    assert bare.headers == {"triton-grpc-protocol-mlapi-triton-key": "k"}
    with_other = _Request({"x": "1"})
    access.KeyPlugin("k")(with_other)
    assert with_other.headers == {"x": "1", "mlapi-triton-key": "k"}
