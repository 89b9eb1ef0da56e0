"""Render the Helm chart deploy/helm/triton-mlapi offline (helm-python-sdk: Helm's Go library,
no helm binary, no cluster) and pick objects out of what it renders."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "triton-mlapi"
CI_VALUES = CHART / "ci"
REFUSED_VALUES = Path(__file__).resolve().parent / "values" / "refused"
RULES_FILE = CHART / "files" / "prometheus" / "rules.yaml"
ADAPTER_VALUES = CHART / "files" / "prometheus-adapter-values.yaml"
RELEASE = "mlapi"
NAMESPACE = "ml"

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed: pip install -e '.[deploy]'"
)


@functools.cache
def chart() -> Any:
    return helm.Chart.load(str(CHART))


def values_of(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


@dataclass(frozen=True)
class Rendered:
    """The documents one set of values renders to (NOTES.txt apart)."""

    docs: tuple[dict[str, Any], ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {found}"
        return found[0]

    def find(self, kind: str, name_suffix: str) -> dict[str, Any] | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        return found[0] if found else None


def render(values: dict[str, Any]) -> Rendered:
    """Render like ``helm install mlapi <chart> -n ml -f values`` would (schema checked first)."""
    manifests = chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    notes = ""
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(tuple(docs), notes)


@functools.cache
def render_file(name: str) -> Rendered:
    return render(values_of(CI_VALUES / name))


def ci_values_files() -> list[str]:
    return sorted(p.name for p in CI_VALUES.glob("*-values.yaml"))


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload."""
    for doc in rendered.docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no container {name} in {deployment['metadata']['name']}")


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    """name -> value, or -> {"secret": name, "key": key} for a Secret reference."""
    out: dict[str, Any] = {}
    for var in item.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            out[var["name"]] = {"secret": ref["name"], "key": ref["key"]}
    return out
