"""API keys: creation, hashed storage in a JSON keys file, and lookup with live reload.

A key is ``mlapi_<id>_<secret>`` with a 256-bit random secret. Only its SHA-256 is stored. A
fast hash is the right tool here: the secret has 256 bits of entropy, so no dictionary or brute
force attack applies (slow hashes such as scrypt or argon2 protect low-entropy passwords), and
verifying costs microseconds instead of the tens of milliseconds a slow hash would add to every
request. The ``id`` part makes lookup O(1) and names the key in logs without revealing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
SCOPES = ("predict", "admin")
PREFIX = "mlapi"


@dataclass(frozen=True)
class KeyRecord:
    """One API key as stored: its id, the SHA-256 of the key, scopes and plan."""

    id: str
    sha256: str
    scopes: frozenset[str]
    plan: str
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "scopes": sorted(self.scopes),
            "plan": self.plan,
            "name": self.name,
            "created_at": int(time.time()),
        }

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> KeyRecord:
        scopes = frozenset(row.get("scopes", []))
        unknown = scopes - set(SCOPES)
        if unknown:
            raise ValueError(f"key {row.get('id')!r}: unknown scopes {sorted(unknown)}")
        return cls(
            str(row["id"]),
            str(row["sha256"]),
            scopes,
            str(row.get("plan", "default")),
            str(row.get("name", "")),
        )


def digest(key: str) -> str:
    """Return the SHA-256 (hex) under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str | None:
    """Return the id part of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def new_key(scopes: list[str], plan: str = "default", name: str = "") -> tuple[str, KeyRecord]:
    """Return a fresh key and the record to store for it (the key itself is never stored)."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {list(SCOPES)}, got {scopes}")
    ident = secrets.token_hex(6)
    key = f"{PREFIX}_{ident}_{secrets.token_urlsafe(32)}"
    return key, KeyRecord(ident, digest(key), frozenset(scopes), plan, name)


def _open_private(path: Path, flags: int) -> int:
    """``os.open`` with mode 0600 at creation, so the file is never readable by others."""
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path = path.with_suffix(path.suffix + ".lock")
    with os.fdopen(_open_private(lock_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Return the key records of a keys file (none when it does not exist)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text() or "{}")
    return list(data.get("keys", []))


def add_key(path: Path, record: KeyRecord) -> None:
    """Append ``record`` to the keys file atomically (a running gateway picks it up).

    The file and its lock are created 0600: they hold only hashes, but which keys exist, their
    scopes and plans are nobody else's business.
    """
    with _locked(path):
        rows = read_records(path)
        rows.append(record.to_dict())
        tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
        with os.fdopen(_open_private(tmp, flags), "w") as out:
            out.write(json.dumps({"keys": rows}, indent=2) + "\n")
        os.chmod(tmp, 0o600)  # a stale tmp file from a crash may have had another mode
        os.replace(tmp, path)


class KeyStore:
    """The keys a gateway accepts: the keys file (re-read when it changes) plus keys from env."""

    def __init__(self, path: Path, extra_json: str | None, reload_interval_s: float) -> None:
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._extra = self._parse(json.loads(extra_json).get("keys", []) if extra_json else [])
        self._records: dict[str, KeyRecord] = dict(self._extra)
        self._signature: tuple[int, int] | None = None
        self._checked_at = 0.0
        self._reload()

    @staticmethod
    def _parse(rows: list[dict[str, Any]]) -> dict[str, KeyRecord]:
        return {r.id: r for r in map(KeyRecord.from_dict, rows)}

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature:
            return
        try:
            records = self._parse(read_records(self.path)) if signature else {}
        except (ValueError, KeyError, TypeError) as exc:
            # Keep serving with the keys we had rather than locking everyone out.
            log.error("keys file %s is invalid, keeping the previous keys: %s", self.path, exc)
            return
        self._records = {**records, **self._extra}
        self._signature = signature
        log.info("loaded %d API keys from %s", len(records), self.path)

    def lookup(self, key: str) -> KeyRecord | None:
        now = time.monotonic()
        if now - self._checked_at >= self.reload_interval_s:
            self._checked_at = now
            self._reload()
        ident = key_id(key)
        record = self._records.get(ident) if ident else None
        if record is None or not hmac.compare_digest(record.sha256, digest(key)):
            return None
        return record
