"""The server under test: a running one (made to serve the identity model too) or one of our own.

`make serve` serves only model_repository/. When a server is already running, the identity model
is loaded into it through the repository API with its config and model file passed inline (the
server must run in explicit model-control mode, as the project's launcher does), and unloaded
again when the benchmark ends, however it ends. Otherwise a
tritonserver is started on free ports with both repositories and stopped afterwards.
"""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlapi_backend.model_config import read_pbtxt
from mlapi_bench.payloads import IDENTITY_MODEL
from mlapi_client import access

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
BENCH_REPOSITORY = ROOT / "benchmarks" / "model_repository"

log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The server under test is missing, not ready, or cannot serve what the benchmark needs."""


@dataclass(frozen=True)
class Stack:
    http_url: str
    grpc_url: str
    started_here: bool

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url


def is_ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/health/ready", timeout=2) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def config_json(config_pbtxt: Path) -> str:
    """A config.pbtxt as the JSON the repository API's ``config`` parameter takes."""
    return json.dumps(read_pbtxt(config_pbtxt))


def ensure_identity(http_url: str) -> bool:
    """Load the identity model into a running explicit-mode server unless it is already ready.

    True when this call loaded it (so the caller unloads it when done), False when it was ready.
    """
    client = access.with_key(httpclient.InferenceServerClient(http_url))
    try:
        if client.is_model_ready(IDENTITY_MODEL):
            return False
        model_py = (BENCH_REPOSITORY / IDENTITY_MODEL / "1" / "model.py").read_bytes()
        log.info("loading %s into the running server through the repository API", IDENTITY_MODEL)
        client.load_model(
            IDENTITY_MODEL,
            config=config_json(BENCH_REPOSITORY / IDENTITY_MODEL / "config.pbtxt"),
            files={"file:1/model.py": model_py},
        )
        return True
    except InferenceServerException as exc:
        raise StackError(
            f"cannot load {IDENTITY_MODEL} into the server at {http_url} "
            f"(it must run with --model-control-mode=explicit): {exc}"
        ) from exc
    finally:
        client.close()


def unload_identity(http_url: str) -> None:
    """Unload the identity model from a user's server; a failure is logged, never raised."""
    client = access.with_key(httpclient.InferenceServerClient(http_url))
    try:
        client.unload_model(IDENTITY_MODEL)
        log.info("unloaded %s from the server at %s", IDENTITY_MODEL, http_url)
    except InferenceServerException as exc:
        log.warning("could not unload %s from %s: %s", IDENTITY_MODEL, http_url, exc)
    finally:
        client.close()


@contextmanager
def identity_loaded(http_url: str) -> Iterator[None]:
    """Serve the identity model while the block runs.

    When this loaded it, it is unloaded after the block, also on errors and Ctrl-C, so that a
    benchmark leaves no hidden model in a user's server.
    """
    loaded_here = ensure_identity(http_url)
    try:
        yield
    finally:
        if loaded_here:
            unload_identity(http_url)


@contextmanager
def stack(http_url: str | None, grpc_url: str | None, backend_dir: Path) -> Iterator[Stack]:
    """Use the server at ``http_url``/``grpc_url`` if it is ready, else start one of our own."""
    if http_url and grpc_url and is_ready(http_url):
        with identity_loaded(http_url):
            yield Stack(http_url, grpc_url, started_here=False)
        return
    if http_url and grpc_url:
        log.info("no server ready at %s: starting one", http_url)
    from mlapi_tools.local.triton_process import Ports, TritonServer

    if not (MODEL_REPOSITORY / "digits_classifier" / "1" / "model.onnx").is_file():
        raise StackError("models are not built: run `make models` first")
    server = TritonServer(
        [MODEL_REPOSITORY, BENCH_REPOSITORY],
        backend_dir,
        ports=Ports.free(),
        exit_timeout_s=5,
        access_key=access.ensure_key(),
    )
    with tempfile.NamedTemporaryFile(
        prefix="tritonserver-", suffix=".log", delete=False
    ) as log_file:
        server.start(log_file)
        try:
            server.wait_ready(timeout_s=180)
        except (RuntimeError, TimeoutError) as exc:
            server.stop()
            tail = Path(log_file.name).read_text(errors="replace")[-3000:]
            raise StackError(f"{exc}\n--- tritonserver log ({log_file.name}) ---\n{tail}") from exc
        log.info(
            "started tritonserver: HTTP %s gRPC %s (log %s)",
            server.http_url,
            server.grpc_url,
            log_file.name,
        )
        try:
            yield Stack(server.http_url, server.grpc_url, started_here=True)
        finally:
            server.stop()
