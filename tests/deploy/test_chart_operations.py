"""The chart's operational behaviour, rendered offline: pods that drain before they stop, a
Triton key both Deployments roll on, an S3 copier that refuses an incomplete repository, what
the Ingress exposes, the headless Triton Service, NOTES warnings and production minimums."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .chart_render import (
    CHART,
    RULES_FILE,
    container,
    env_of,
    render,
    render_file,
)

DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
DIGEST = "sha256:" + "a" * 64


def _checksums(values: dict) -> tuple[str, str]:
    rendered = render(values)
    return tuple(  # type: ignore[return-value]
        rendered.one("Deployment", f"-{name}")["spec"]["template"]["metadata"]["annotations"][
            "checksum/triton-key"
        ]
        for name in ("triton", "gateway")
    )


def test_both_pod_templates_carry_the_checksum_of_the_key_they_read() -> None:
    rendered = render_file("default-values.yaml")
    key = base64.b64decode(rendered.one("Secret", "-triton-key")["data"]["key"])
    triton, gateway = (
        rendered.one("Deployment", f"-{name}")["spec"]["template"]["metadata"]["annotations"]
        for name in ("triton", "gateway")
    )
    assert triton["checksum/triton-key"] == hashlib.sha256(key).hexdigest()
    assert gateway["checksum/triton-key"] == triton["checksum/triton-key"]
    # Offline renders generate a new key each time: both templates change with it.
    assert _checksums({}) != _checksums({})
    one = _checksums({"triton": {"accessKey": {"existingSecret": "key-a"}}})
    other = _checksums({"triton": {"accessKey": {"existingSecret": "key-b"}}})
    assert one[0] == one[1] and other[0] == other[1] and one != other
    assert one == _checksums({"triton": {"accessKey": {"existingSecret": "key-a"}}})
    pod = render({"triton": {"podAnnotations": {"team": "ml"}}}).one("Deployment", "-triton")
    assert pod["spec"]["template"]["metadata"]["annotations"]["team"] == "ml"


def test_pods_keep_serving_while_endpoints_drop_them() -> None:
    rendered = render_file("default-values.yaml")
    triton = rendered.one("Deployment", "-triton")["spec"]["template"]["spec"]
    server = container(rendered.one("Deployment", "-triton"), "tritonserver")
    assert server["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "10"]}}}
    # preStop sleep + Triton's --exit-timeout-secs + 15 s spare.
    assert triton["terminationGracePeriodSeconds"] == 10 + 10 + 15
    gateway = rendered.one("Deployment", "-gateway")["spec"]["template"]["spec"]
    assert container(rendered.one("Deployment", "-gateway"), "gateway")["lifecycle"] == {
        "preStop": {"exec": {"command": ["sleep", "5"]}}
    }
    assert gateway["terminationGracePeriodSeconds"] == 5 + 20
    longer = render(
        {
            "triton": {"preStopSleepSeconds": 30, "exitTimeoutSeconds": 20},
            "gateway": {"preStopSleepSeconds": 0},
        }
    )
    spec = longer.one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 30 + 20 + 15
    assert "lifecycle" not in container(longer.one("Deployment", "-gateway"), "gateway")
    assert (
        longer.one("Deployment", "-gateway")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        == 20
    )


def _copier_script() -> tuple[str, dict[str, str]]:
    spec = render_file("s3-values.yaml").one("Deployment", "-triton")["spec"]["template"]["spec"]
    (fetch,) = spec["initContainers"]
    assert fetch["command"] == ["/bin/sh", "-ec"]
    env = {k: v for k, v in env_of(fetch).items() if isinstance(v, str)}
    return fetch["args"][0], env


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        ((), ("digits", "text_generator", "text_embedder")),
        (("digits", "text_embedder"), ("text_generator",)),
        (("digits", "text_generator", "text_embedder"), ()),
    ],
)
def test_the_s3_copier_refuses_a_repository_without_a_public_model(
    tmp_path: Path, present: tuple[str, ...], missing: tuple[str, ...]
) -> None:
    script, env = _copier_script()
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    for model in present:
        (bucket / model / "1").mkdir(parents=True)
        (bucket / model / "config.pbtxt").write_text(f'name: "{model}"\n')
    # A stand-in for the AWS CLI: `aws s3 sync ... SRC DST` copies the local bucket to DST.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    aws = bin_dir / "aws"
    aws.write_text(f'#!/bin/sh\nfor last; do :; done\ncp -R "{bucket}/." "$last"\n')
    aws.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    done = subprocess.run(
        ["/bin/sh", "-ec", script],
        env={**os.environ, **env, "MODELS_PATH": str(models), "PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if missing:
        assert done.returncode == 1, done
        assert done.stderr.strip() == (
            f"fetch-models: s3://models/triton-mlapi has no config.pbtxt for: {' '.join(missing)}"
        )
    else:
        assert done.returncode == 0, done.stderr
        assert (models / "text_generator" / "config.pbtxt").is_file()


def test_the_s3_copier_image_follows_the_registry_and_its_digest() -> None:
    values = {
        "imageRegistry": "registry.example.com/ml",
        "triton": {
            "modelRepository": {
                "source": "s3",
                "s3": {"url": "s3://models/r", "image": {"digest": DIGEST}},
            }
        },
    }
    spec = render(values).one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert spec["initContainers"][0]["image"] == f"registry.example.com/ml/amazon/aws-cli@{DIGEST}"


def test_the_ingress_exposes_the_versioned_api_only() -> None:
    values = {"gateway": {"ingress": {"enabled": True, "hosts": [{"host": "api.example.com"}]}}}
    ingress = render(values).one("Ingress", "-gateway")
    (rule,) = ingress["spec"]["rules"]
    assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/v1", "Prefix")]
    shipped = render_file("ingress-values.yaml").one("Ingress", "-gateway")["spec"]["rules"]
    assert [p["path"] for r in shipped for p in r["http"]["paths"]] == ["/v1"]


def test_a_headless_service_lists_every_triton_pod() -> None:
    rendered = render_file("default-values.yaml")
    balanced = rendered.one("Service", "-triton")
    headless = rendered.one("Service", "-triton-pods")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == balanced["spec"]["selector"]
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
    }
    assert balanced["spec"].get("clusterIP") != "None"


WARNING = "WARNING: monitoring.labels is empty while an HPA scales on custom metrics."


def test_notes_warn_when_the_operator_may_not_select_the_rules() -> None:
    assert WARNING in render_file("default-values.yaml").notes
    assert WARNING not in render({"monitoring": {"labels": {"release": "kps"}}}).notes
    cpu_only = {"autoscaling": {"triton": {"enabled": False}}}
    assert WARNING not in render(cpu_only).notes
    in_flight = {
        "redis": {"enabled": True},
        "autoscaling": {
            "triton": {"enabled": False},
            "gateway": {"enabled": True, "metric": "inFlight"},
        },
    }
    assert WARNING in render(in_flight).notes


def _duration_s(text: str) -> int:
    return sum(
        int(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)([smh])", text)
    )


def test_triton_down_waits_longer_than_a_pods_startup() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    (down,) = [
        r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "MlapiTritonDown"
    ]
    probes = DEFAULTS["triton"]["probes"]
    startup_s = probes["startupFailureThreshold"] * probes["startupPeriodSeconds"]
    assert _duration_s(down["for"]) > startup_s, (down["for"], startup_s)


def test_production_values_meet_the_documented_minimums() -> None:
    rendered = render_file("production-values.yaml")
    hpas = {h["metadata"]["name"]: h["spec"] for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert hpas["mlapi-triton-mlapi-triton"]["minReplicas"] >= 2
    assert hpas["mlapi-triton-mlapi-gateway"]["minReplicas"] >= 2
    env = env_of(container(rendered.one("Deployment", "-gateway"), "gateway"))
    assert env["MLAPI_GATEWAY_JOBS_STORE"] == "redis" and isinstance(
        env["MLAPI_GATEWAY_REDIS_URL"], dict
    )
    assert rendered.find("Secret", "-triton-key") is None  # GitOps-safe: an existing Secret
    assert WARNING not in rendered.notes
    for _, spec in (
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in rendered.of_kind("Deployment")
    ):
        for item in spec["containers"]:
            assert "@sha256:" in item["image"], item["image"]


def test_copier_script_runs_under_a_posix_shell() -> None:
    script, _ = _copier_script()
    dash = shutil.which("dash") or "/bin/sh"
    done = subprocess.run([dash, "-n", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
