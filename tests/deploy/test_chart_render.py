"""The Helm chart, rendered offline over its values matrix (deploy/helm/triton-mlapi/ci/) and
checked without a cluster: Kubernetes 1.29-1.33 schemas (strict), no beta or removed API, a
restricted pod everywhere, and Triton started with exactly the launcher's flags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlapi_client import access
from mlapi_tools.local import triton_process
from mlapi_tools.local.backend_dir import TritonInstall
from mlapi_tools.local.triton_process import Ports, TritonServer

from .chart_render import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REFUSED_VALUES,
    RULES_FILE,
    Rendered,
    ci_values_files,
    container,
    env_of,
    helm,
    pod_specs,
    render,
    render_file,
    values_of,
)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed: pip install -e '.[deploy]'"
)

KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
# Custom resources of the Prometheus Operator: no bundled schema; checked field by field below.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# The scenarios the matrix must cover (one values file each, at least).
SCENARIOS = (
    "default",
    "gpu",
    "cpu",
    "pvc",
    "s3",
    "redis",
    "ha-gateway",
    "ingress",
    "no-autoscaling",
    "monitoring-off",
)
MATRIX = ci_values_files()


def test_the_matrix_covers_every_scenario() -> None:
    assert len(MATRIX) >= 10, MATRIX
    missing = [s for s in SCENARIOS if f"{s}-values.yaml" not in MATRIX]
    assert not missing, f"no values file under {CI_VALUES} for {missing}"


def test_helm_lint_is_clean_in_strict_mode() -> None:
    report = helm.lint(str(CHART), {}, strict=True, namespace=NAMESPACE, kube_version="v1.29.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("values_file", MATRIX)
def test_every_document_is_valid_on_kubernetes_1_29_to_1_33(values_file: str) -> None:
    rendered = render_file(values_file)
    assert rendered.docs and rendered.notes.strip()
    for doc in rendered.docs:
        kind, api_version = doc["kind"], doc["apiVersion"]
        name = doc["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        assert doc["metadata"]["namespace"] == NAMESPACE, (kind, name)
        # GA APIs only: no alpha/beta version, so nothing removed by 1.33 (autoscaling/v2beta2
        # went in 1.26, policy/v1beta1 in 1.25) and nothing that will be.
        assert not re.search(r"v\d+(alpha|beta)\d*$", api_version), (kind, api_version)
        if kind in OPERATOR_KINDS:
            assert api_version == "monitoring.coreos.com/v1", (kind, api_version)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{values_file}: {kind}/{name} invalid on {version}: {exc.message}")


def _images(rendered: Rendered) -> list[str]:
    return [
        c["image"]
        for _, spec in pod_specs(rendered)
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


@pytest.mark.parametrize("values_file", MATRIX)
def test_every_pod_is_restricted_and_sized(values_file: str) -> None:
    rendered = render_file(values_file)
    for name, spec in pod_specs(rendered):
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            where = f"{name}/{item['name']}"
            context = item["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["runAsNonRoot"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(item["resources"][bound]), (where, bound)
            mounts = {m["mountPath"] for m in item.get("volumeMounts", [])}
            assert "/tmp" in mounts or name.endswith("-test") or item["name"] == "redis", where
    for image in _images(rendered):
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image), image
        assert not image.endswith(":latest"), image


def _launcher_command(values: dict[str, Any], root: str, backend_dir: str) -> list[str]:
    """What ``make serve``'s TritonServer runs, at the container's paths and with the key as
    the pod's env reference (Kubernetes expands ``$(MLAPI_TRITON_KEY)`` in args)."""
    triton = values["triton"]
    server = TritonServer(
        [Path(triton["modelRepository"]["path"])],
        Path(backend_dir),
        ports=Ports(**triton["ports"]),
        extra_args=triton["extraArgs"],
        exit_timeout_s=triton["exitTimeoutSeconds"],
        install=TritonInstall(Path(root)),
        access_key="$(MLAPI_TRITON_KEY)",
        bind_address="0.0.0.0",
    )
    return server.command()


NGC_ENTRYPOINT = "/opt/nvidia/nvidia_entrypoint.sh"
# Where docker/triton (NGC) and docker/triton-cpu (pytriton's wheel) put tritonserver.
FLAVOR_PATHS = {
    "gpu": ("/opt/tritonserver", "/opt/tritonserver/backends"),
    "cpu": ("/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver", "/opt/mlapi/backends"),
}


@pytest.mark.parametrize(
    "values_file", ["default-values.yaml", "cpu-values.yaml", "registry-values.yaml"]
)
def test_triton_runs_with_the_launchers_flags(values_file: str) -> None:
    values = helm.Chart.load(str(CHART)).merge_values(values_of(CI_VALUES / values_file))
    deployment = render_file(values_file).one("Deployment", "-triton")
    server = container(deployment, "tritonserver")
    expected = _launcher_command(values, *FLAVOR_PATHS[values["triton"]["flavor"]])
    # The NGC image's own entrypoint runs first (CUDA compatibility checks), as in the image.
    ngc = [NGC_ENTRYPOINT] if values["triton"]["flavor"] == "gpu" else []
    assert server["command"] == [*ngc, *expected[:1]]
    assert server["args"] == expected[1:]
    key = env_of(server)[access.KEY_ENV]
    assert key["secret"].endswith("-triton-key") and key["key"] == "key", key
    serve_exit_timeout_s = getattr(triton_process, "SERVE_EXIT_TIMEOUT_S", None)
    if serve_exit_timeout_s is not None and not values_of(CI_VALUES / values_file):
        assert values["triton"]["exitTimeoutSeconds"] == serve_exit_timeout_s


def test_triton_pod_has_probes_shm_and_explicit_model_control() -> None:
    deployment = render_file("default-values.yaml").one("Deployment", "-triton")
    spec = deployment["spec"]["template"]["spec"]
    server = container(deployment, "tritonserver")
    # Ready means every public model is ready: --strict-readiness=false makes
    # /v2/health/ready true with models missing. Liveness stays on the server's.
    ready = [
        "python3",
        "/opt/mlapi/bin/healthcheck.py",
        "TRITON_HTTP_PORT",
        "8000",
        "/v2/models/digits/ready",
        "/v2/models/text_generator/ready",
        "/v2/models/text_embedder/ready",
    ]
    assert server["startupProbe"] == {
        "exec": {"command": ready},
        "periodSeconds": 5,
        "failureThreshold": 60,
        "timeoutSeconds": 3,
    }
    assert server["readinessProbe"]["exec"]["command"] == ready
    assert env_of(server)["TRITON_HTTP_PORT"] == "8000"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    gateway = container(render_file("default-values.yaml").one("Deployment", "-gateway"), "gateway")
    assert env_of(gateway)["MLAPI_GATEWAY_MODELS"] == '["digits","text_generator","text_embedder"]'
    few = container(
        render({"gateway": {"models": ["digits"]}, "triton": {"ports": {"http": 9000}}}).one(
            "Deployment", "-triton"
        ),
        "tritonserver",
    )
    assert few["readinessProbe"]["exec"]["command"][3:] == ["9000", "/v2/models/digits/ready"]
    assert "--model-control-mode=explicit" in server["args"]
    restricted = [a for a in server["args"] if "restricted" in a]
    assert len(restricted) == 2 and all("model-repository" in a for a in restricted)
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in server["volumeMounts"]
    assert "nvidia.com/gpu" not in server["resources"]["limits"]
    # The supervisor sidecar, from the gateway image, sees Triton's stubs in /proc.
    assert spec["shareProcessNamespace"] is True
    supervisor = container(deployment, "supervisor")
    assert supervisor["image"].startswith("triton-mlapi/gateway:")
    assert supervisor["command"] == ["python", "-m", "mlapi_tools.local", "supervise"]
    assert "--triton-url=grpc://127.0.0.1:8001" in supervisor["args"]


def test_supervisor_settings_are_the_supervisors_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlapi_tools.local.__main__ import main
    from mlapi_tools.local.supervisor_settings import ENV_PREFIX, SupervisorSettings

    supervisor = container(
        render_file("default-values.yaml").one("Deployment", "-triton"), "supervisor"
    )
    env = {k: v for k, v in env_of(supervisor).items() if k.startswith(ENV_PREFIX)}
    fields = {f.upper() for f in SupervisorSettings.__dataclass_fields__}
    assert {k.removeprefix(ENV_PREFIX) for k in env} <= fields
    settings = SupervisorSettings.from_env(
        env, triton_url="http://127.0.0.1:8000", metrics_port=9102
    )
    assert settings.metrics_address == "0.0.0.0" and settings.probe_interval_s == 5.0
    with pytest.raises(SystemExit) as parsed:  # the flags parse with the real CLI
        main([*supervisor["command"][3:], *supervisor["args"], "--help"])
    assert parsed.value.code == 0


@pytest.mark.parametrize("values_file", MATRIX)
def test_gateway_env_is_valid_gateway_settings(
    values_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlapi_gateway.settings import GatewaySettings

    prefix = GatewaySettings.model_config["env_prefix"]
    gateway = container(render_file(values_file).one("Deployment", "-gateway"), "gateway")
    env = env_of(gateway)
    names = {k.removeprefix(prefix).lower() for k in env if k.startswith(prefix)}
    assert names <= set(GatewaySettings.model_fields), names - set(GatewaySettings.model_fields)
    for name in list(env):
        if name.startswith(prefix) or name == access.KEY_ENV:
            value = env[name]
            if isinstance(value, dict):  # a Secret: stand in a valid value of that setting
                value = {
                    "MLAPI_GATEWAY_REDIS_URL": "redis://redis:6379/0",
                    "MLAPI_GATEWAY_KEYS_JSON": '{"keys": []}',
                }.get(name, "s" * 32)
            monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    if settings.jobs_store == "redis":
        assert settings.redis_url
    triton = render_file(values_file).one("Service", "-triton")["metadata"]["name"]
    assert settings.triton_http_url == f"{triton}:8000"
    assert settings.triton_grpc_url == f"{triton}:8001"


def test_the_test_key_is_accepted_by_the_gateways_key_store() -> None:
    import base64
    import json

    from mlapi_gateway.keys import KeyStore

    secret = render_file("default-values.yaml").one("Secret", "-test-key")
    key = base64.b64decode(secret["data"]["key"]).decode()
    keys_json = base64.b64decode(secret["data"]["keys.json"]).decode()
    store = KeyStore(Path("/nonexistent/keys.json"), keys_json, reload_interval_s=60)
    record = store.lookup(key)
    assert record is not None and record.scopes == frozenset({"predict"})
    assert store.lookup(key[:-1] + ("a" if key[-1] != "a" else "b")) is None
    assert json.loads(keys_json)["keys"][0]["name"] == "helm-test"


def test_hook_job_predicts_through_the_gateway_with_the_script_of_the_chart() -> None:
    rendered = render_file("default-values.yaml")
    job = rendered.one("Job", "-test")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = rendered.one("ConfigMap", "-test")["data"]["helm-test-predict.py"]
    assert script == (CHART / "files" / "helm-test-predict.py").read_text()
    env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert env["GATEWAY_URL"] == "http://mlapi-triton-mlapi-gateway:8080"


def test_network_policy_admits_only_the_gateway_and_the_scraper_to_triton() -> None:
    policy = render_file("default-values.yaml").one("NetworkPolicy", "-triton")
    api, metrics = policy["spec"]["ingress"]
    assert api["from"] == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "triton-mlapi",
                    "app.kubernetes.io/instance": "mlapi",
                    "app.kubernetes.io/component": "gateway",
                }
            }
        }
    ]
    assert {p["port"] for p in api["ports"]} == {"http", "grpc"}
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {p["port"] for p in metrics["ports"]} == {"metrics", "supervisor"}


def test_gpu_values_request_gpus_on_gpu_nodes() -> None:
    deployment = render_file("gpu-values.yaml").one("Deployment", "-triton")
    server = container(deployment, "tritonserver")
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["resources"]["requests"]["nvidia.com/gpu"] == 1
    spec = deployment["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert server["image"] == "triton-mlapi/triton:0.1.0"


def test_cpu_values_use_the_cpu_image() -> None:
    server = container(render_file("cpu-values.yaml").one("Deployment", "-triton"), "tritonserver")
    assert server["image"] == "triton-mlapi/triton-cpu:0.1.0"
    assert "--backend-directory=/opt/mlapi/backends" in server["args"]


def test_model_sources() -> None:
    pvc = render_file("pvc-values.yaml").one("Deployment", "-triton")["spec"]["template"]["spec"]
    assert {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "triton-models", "readOnly": True},
    } in pvc["volumes"]
    s3 = render_file("s3-values.yaml").one("Deployment", "-triton")["spec"]["template"]["spec"]
    (fetch,) = s3["initContainers"]
    assert fetch["image"] == "amazon/aws-cli:2.17.0"
    env = env_of(fetch)
    assert env["MODELS_URL"] == "s3://models/triton-mlapi" and env["MODELS_PATH"] == "/models"
    assert env["PUBLIC_MODELS"] == "digits text_generator text_embedder"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage.svc:9000"
    assert env_of(fetch)["AWS_SECRET_ACCESS_KEY"] == {
        "secret": "minio-credentials",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    server = next(c for c in s3["containers"] if c["name"] == "tritonserver")
    assert {"name": "models", "mountPath": "/models"} in server["volumeMounts"]
    baked = render_file("default-values.yaml").one("Deployment", "-triton")["spec"]["template"][
        "spec"
    ]
    assert "initContainers" not in baked and all(v["name"] != "models" for v in baked["volumes"])


def test_redis_values_share_limits_and_jobs_through_the_bundled_redis() -> None:
    rendered = render_file("redis-values.yaml")
    gateway = rendered.one("Deployment", "-gateway")
    assert gateway["spec"]["replicas"] == 2
    env = env_of(container(gateway, "gateway"))
    assert env["MLAPI_GATEWAY_REDIS_URL"] == "redis://mlapi-triton-mlapi-redis:6379/0"
    assert env["MLAPI_GATEWAY_JOBS_STORE"] == "redis"
    assert rendered.one("Deployment", "-redis")["spec"]["replicas"] == 1
    (peer,) = rendered.one("NetworkPolicy", "-redis")["spec"]["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert (
        env_of(
            container(render_file("default-values.yaml").one("Deployment", "-gateway"), "gateway")
        )["MLAPI_GATEWAY_JOBS_STORE"]
        == "sqlite"
    )


def test_ha_gateway_scales_on_in_flight_requests_with_external_redis() -> None:
    rendered = render_file("ha-gateway-values.yaml")
    hpa = rendered.one("HorizontalPodAutoscaler", "-gateway")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "mlapi_gateway_in_flight_requests"
    assert hpa["spec"]["minReplicas"] == 3
    gateway = rendered.one("Deployment", "-gateway")
    assert "replicas" not in gateway["spec"]  # the HPA owns it
    env = env_of(container(gateway, "gateway"))
    assert env["MLAPI_GATEWAY_REDIS_URL"] == {"secret": "mlapi-redis-url", "key": "url"}
    assert env["MLAPI_GATEWAY_WEBHOOK_SECRET"] == {"secret": "mlapi-webhook", "key": "secret"}
    assert rendered.find("Deployment", "-redis") is None
    keys = next(v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys")
    assert keys["secret"]["secretName"] == "mlapi-api-keys"


def test_ingress_routes_to_the_gateway_only() -> None:
    ingress = render_file("ingress-values.yaml").one("Ingress", "-gateway")
    backends = [
        p["backend"]["service"]["name"]
        for r in ingress["spec"]["rules"]
        for p in r["http"]["paths"]
    ]
    assert backends == ["mlapi-triton-mlapi-gateway"]
    assert ingress["spec"]["tls"][0]["secretName"] == "api-example-com-tls"


def test_triton_hpa_uses_autoscaling_v2_on_the_recorded_ratio() -> None:
    rendered = render_file("default-values.yaml")
    hpa = rendered.one("HorizontalPodAutoscaler", "-triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "mlapi_triton_queue_compute_ratio"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "0.3"}
    assert "replicas" not in rendered.one("Deployment", "-triton")["spec"]
    fixed = render_file("no-autoscaling-values.yaml")
    assert not fixed.of_kind("HorizontalPodAutoscaler")
    assert fixed.one("Deployment", "-triton")["spec"]["replicas"] == 3


def test_monitoring_objects_carry_the_rules_file() -> None:
    rendered = render_file("default-values.yaml")
    rule = rendered.one("PrometheusRule", "mlapi-triton-mlapi")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    monitor = rendered.one("ServiceMonitor", "mlapi-triton-mlapi")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics", "supervisor", "http"]
    off = render_file("monitoring-off-values.yaml")
    assert not off.of_kind("PrometheusRule") and not off.of_kind("ServiceMonitor")


@pytest.mark.parametrize("values_file", MATRIX)
def test_disruption_budgets(values_file: str) -> None:
    rendered = render_file(values_file)
    values = values_of(CI_VALUES / values_file)
    budgets = rendered.of_kind("PodDisruptionBudget")
    expected = 0 if values.get("triton", {}).get("pdb", {}).get("enabled") is False else 2
    assert len(budgets) == expected
    for budget in budgets:
        assert budget["apiVersion"] == "policy/v1" and budget["spec"]["maxUnavailable"] == 1


REFUSED = sorted(p.name for p in REFUSED_VALUES.glob("*.yaml"))


def _refusal(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# refused at: "), f"{path.name} must name what is refused"
    return first.removeprefix("# refused at: ")


def test_refusals_cover_the_bad_input_of_the_design() -> None:
    named = {_refusal(REFUSED_VALUES / name) for name in REFUSED}
    for value in (
        "/triton/replicas",
        "/triton/modelRepository/source",
        "/autoscaling/triton/enabled",
        "/gateway/replicas",
        "/gateway/workers",
        "/gateway/settings/jobs_db",
        "/gateway/settings/WEBHOOK_ALLOW",
        "/autoscaling/triton/minReplicas",
        "/autoscaling/gateway/minReplicas",
        "/autoscaling/triton/targetQueueComputeRatio",
        "/triton/modelRepository/pvc/accessMode",
    ):
        assert value in named, value


@pytest.mark.parametrize("values_file", REFUSED)
def test_bad_values_are_refused_naming_the_value(values_file: str) -> None:
    path = REFUSED_VALUES / values_file
    # The schema refuses what it can express; templates/validate.yaml what compares two values.
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as refused:
        render(values_of(path))
    message = str(refused.value)
    assert _refusal(path) in message, message
    for line in path.read_text().splitlines()[1:]:  # "# says: ...": the reason, in the message
        if line.startswith("# says: "):
            assert line.removeprefix("# says: ") in message, message


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _leaves(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return out


def test_the_readme_documents_every_value_with_its_default() -> None:
    import json

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    rows = dict(
        re.findall(r"^\| `([\w.]+)` \| `(.*)` \| .+ \|$", (CHART / "README.md").read_text(), re.M)
    )
    for key, shown in rows.items():
        value: Any = defaults
        for part in key.split("."):
            value = value[part]
        assert json.loads(shown.replace("\\|", "|")) == value, key
    undocumented = [
        leaf
        for leaf in _leaves(defaults)
        if not any(leaf == k or leaf.startswith(f"{k}.") for k in rows)
    ]
    assert not undocumented, undocumented
