"""`mlapi keys create`: the key is the last word printed, and only its hash is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlapi_client.cli import main
from mlapi_gateway.keys import KeyStore


def test_create_prints_the_key_last_and_stores_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys_file = tmp_path / "gateway" / "keys.json"
    args = ["keys", "create", "--scope", "predict", "--scope", "admin", "--plan", "free"]
    assert main([*args, "--keys-file", str(keys_file)]) == 0
    key = capsys.readouterr().out.split()[-1]
    record = KeyStore(keys_file, None, 0).lookup(key)
    assert record is not None
    assert record.scopes == {"predict", "admin"} and record.plan == "free"
    assert key not in keys_file.read_text()
    assert keys_file.stat().st_mode & 0o077 == 0


def test_scope_is_required_and_checked(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as usage:
        main(["keys", "create", "--keys-file", str(tmp_path / "k.json")])
    assert usage.value.code == 2
    with pytest.raises(SystemExit):
        main(["keys", "create", "--scope", "root", "--keys-file", str(tmp_path / "k.json")])
