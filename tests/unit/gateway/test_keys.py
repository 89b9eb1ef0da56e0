from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlapi_gateway.keys import KeyStore, add_key, digest, key_id, new_key


def test_new_key_has_id_and_stores_only_its_hash(tmp_path: Path) -> None:
    key, record = new_key(["predict"], plan="free", name="ci")
    assert key.startswith(f"mlapi_{record.id}_")
    assert record.sha256 == digest(key)
    add_key(tmp_path / "keys.json", record)
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and record.sha256 in text
    assert json.loads(text)["keys"][0]["scopes"] == ["predict"]


def test_secrets_containing_underscores_still_parse() -> None:
    assert key_id("mlapi_abc123_se_cr_et") == "abc123"
    assert key_id("mlapi__x") is None
    assert key_id("bearer-token") is None


@pytest.mark.parametrize("scopes", [[], ["root"], ["predict", "write"]])
def test_unknown_scopes_are_refused(scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="scopes"):
        new_key(scopes)


def test_lookup_checks_the_whole_key_and_reloads_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path, None, reload_interval_s=0)
    key, record = new_key(["predict", "admin"])
    assert store.lookup(key) is None
    add_key(path, record)
    found = store.lookup(key)
    assert found is not None and found.scopes == {"predict", "admin"}
    forged = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert store.lookup(forged) is None


def test_a_broken_keys_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key, record = new_key(["predict"])
    add_key(path, record)
    store = KeyStore(path, None, reload_interval_s=0)
    path.write_text("{ not json")
    assert store.lookup(key) is not None


def test_keys_from_the_environment(tmp_path: Path) -> None:
    key, record = new_key(["admin"])
    store = KeyStore(tmp_path / "none.json", json.dumps({"keys": [record.to_dict()]}), 0)
    assert store.lookup(key) is not None


def test_the_keys_file_and_its_lock_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "keys.json"
    previous = os.umask(0)
    try:
        add_key(path, new_key(["predict"])[1])
        add_key(path, new_key(["admin"])[1])
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()}
    assert modes == {"keys.json": 0o600, "keys.json.lock": 0o600}
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(json.loads(path.read_text())["keys"]) == 2
