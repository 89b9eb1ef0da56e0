"""Start-up tolerance: a model version that fails to load must not keep the others from serving.

The launcher runs tritonserver with ``--exit-on-error=false`` (2.51 otherwise aborts when any
model fails its start-up load). Triton 2.51 then still treats one model's versions as a unit:
one bad version (a corrupt model.onnx) fails its whole model, and its healthy versions are
unloaded. ``recover_failed_loads`` reads the repository index, reloads each such model with
only its healthy versions (a ``version_policy`` override), retries once the models that failed
whole (a BLS model whose callee was not ready yet), and logs every version that still does not
serve with Triton's reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlapi_backend.model_config import read_pbtxt
from mlapi_client import Client, MlapiError, ModelEntry

log = logging.getLogger("mlapi.serve")
_SETTLED = ("READY", "UNAVAILABLE")


@dataclass(frozen=True)
class FailedVersion:
    model: str
    version: str
    reason: str


def _failed(entry: ModelEntry) -> bool:
    return entry.state == "UNAVAILABLE" and bool(entry.reason) and entry.reason != "unloaded"


def _settled_index(client: Client, timeout_s: float) -> list[ModelEntry]:
    """The index once no version is loading or unloading (or as it is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = client.list_models()
        if all(e.state in _SETTLED for e in entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def _config_file(repositories: Sequence[Path], model: str) -> Path | None:
    for repository in repositories:
        path = Path(repository) / model / "config.pbtxt"
        if path.is_file():
            return path
    return None


def recover_failed_loads(
    client: Client, repositories: Sequence[Path], timeout_s: float = 120.0
) -> list[FailedVersion]:
    """Serve what can serve after Triton's start-up load; return (and log) what cannot."""
    entries = _settled_index(client, timeout_s)
    by_model: dict[str, list[ModelEntry]] = {}
    for entry in entries:
        by_model.setdefault(entry.name, []).append(entry)
    partial: dict[str, tuple[list[str], list[ModelEntry]]] = {}
    whole: list[str] = []
    for model, rows in by_model.items():
        bad = [row for row in rows if _failed(row)]
        if not bad:
            continue
        good = sorted({row.version for row in rows if row.version} - {b.version for b in bad})
        if good:
            partial[model] = (good, bad)
        elif all(row.state != "READY" for row in rows):
            whole.append(model)
    for model, (good, bad) in partial.items():
        path = _config_file(repositories, model)
        if path is None:
            continue
        config = read_pbtxt(path)
        config["version_policy"] = {"specific": {"versions": [int(v) for v in good]}}
        log.warning(
            "%s: version(s) %s failed to load; reloading it with version(s) %s only",
            model,
            ", ".join(str(b.version) for b in bad),
            ", ".join(good),
        )
        _load(client, model, config)
    for model in whole:  # after the partial reloads: a caller may need them
        _load(client, model, None)
    first = {(e.name, e.version): e.reason or "" for e in entries if _failed(e)}
    now = {(e.name, e.version): e for e in _settled_index(client, timeout_s)}
    failed = []
    for (model, version), reason in first.items():
        row = now.get((model, version))
        if row is None or row.state != "READY":
            latest = row.reason if row is not None and _failed(row) else None
            failed.append(FailedVersion(model, version or "?", latest or reason))
    failed += [
        FailedVersion(e.name, e.version or "?", e.reason or "")
        for key, e in now.items()
        if _failed(e) and key not in first
    ]
    for item in failed:
        log.error(
            "NOT SERVED: model '%s' version %s failed to load: %s",
            item.model,
            item.version,
            item.reason.strip().splitlines()[0] if item.reason.strip() else "(no reason given)",
        )
    return failed


def _load(client: Client, model: str, config: dict[str, object] | None) -> None:
    try:
        client.load_model(model, config, timeout_s=300)
    except MlapiError as exc:
        log.debug("reloading %s failed: %s", model, exc)  # the index keeps the reason
