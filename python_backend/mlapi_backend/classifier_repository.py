"""What the classifier's folder in the model repository says: its versions on disk and served."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlapi_backend.errors import ModelConfigError
from mlapi_backend.model_config import read_pbtxt


def version_folders(classifier_dir: Path) -> set[int]:
    """Return the numbered version folders of a model's directory."""
    return {int(p.name) for p in classifier_dir.glob("[0-9]*") if p.name.isdigit()}


def repository_versions(classifier_dir: Path) -> frozenset[int]:
    """Read the versions the classifier's config.pbtxt asks Triton to serve, if it is there."""
    path = classifier_dir / "config.pbtxt"
    if not path.is_file():
        return frozenset()
    try:
        raw = read_pbtxt(path)
    except Exception as exc:  # the classifier's own load reports a broken config
        raise ModelConfigError(f"cannot read the classifier config {path}: {exc}") from exc
    return served_versions(raw.get("version_policy", {}), version_folders(classifier_dir))


def served_versions(version_policy: Mapping[str, Any], folders: Iterable[int]) -> frozenset[int]:
    """Versions a Triton ``version_policy`` (config JSON form) serves, given the folders present.

    Triton's default, with no policy, is the latest one version.
    """
    available = sorted(folders)
    if "specific" in version_policy:
        return frozenset(int(v) for v in version_policy["specific"].get("versions", []))
    if "all" in version_policy:
        return frozenset(available)
    count = int(version_policy.get("latest", {}).get("num_versions", 1))
    return frozenset(available[-count:] if count > 0 else [])
