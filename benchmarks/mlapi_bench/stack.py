"""The server under test: a running one (made to serve the identity model too) or one of our own.

`make serve` serves only model_repository/. When a server is already running, the identity model
is loaded into it through the repository API with its config and model file passed inline (the
server must run in explicit model-control mode, as the project's launcher does), and unloaded
again when the benchmark ends, however it ends. Otherwise a tritonserver is started on free
ports with both repositories and stopped afterwards. Every control call (readiness, load with
a config override and inline files, unload) goes through the project's client.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlapi_backend.model_config import read_pbtxt
from mlapi_bench.payloads import IDENTITY_MODEL
from mlapi_client import Client, MlapiError, access

ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = ROOT / "model_repository"
BENCH_REPOSITORY = ROOT / "benchmarks" / "model_repository"
# Control calls (readiness, load, unload) of the harness; a load of a Python model takes seconds
# on a busy machine, well inside this.
CONTROL_TIMEOUT_S = 300.0

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


def control_client(http_url: str, timeout_s: float = CONTROL_TIMEOUT_S) -> Client:
    """The project's client for control calls on the server at ``http_url``: never retried."""
    return Client(http_url, protocol="http", timeout_s=timeout_s, retry=None)


def is_ready(http_url: str) -> bool:
    """Whether a server answers ready at ``http_url`` (False when nothing listens there)."""
    with control_client(http_url, timeout_s=2.0) as client:
        try:
            return client.is_ready(retry=False)
        except MlapiError:
            return False


def config_dict(config_pbtxt: Path) -> dict[str, Any]:
    """A config.pbtxt as the JSON object the repository API's ``config`` parameter takes."""
    return read_pbtxt(config_pbtxt)


def ensure_identity(http_url: str) -> bool:
    """Load the identity model into a running explicit-mode server unless it is already ready.

    True when this call loaded it (so the caller unloads it when done), False when it was ready.
    """
    with control_client(http_url) as client:
        try:
            if client.is_ready(IDENTITY_MODEL, retry=False):
                return False
            model_py = (BENCH_REPOSITORY / IDENTITY_MODEL / "1" / "model.py").read_bytes()
            log.info(
                "loading %s into the running server through the repository API", IDENTITY_MODEL
            )
            client.load_model(
                IDENTITY_MODEL,
                config=config_dict(BENCH_REPOSITORY / IDENTITY_MODEL / "config.pbtxt"),
                files={"file:1/model.py": model_py},
            )
            return True
        except MlapiError as exc:
            raise StackError(
                f"cannot load {IDENTITY_MODEL} into the server at {http_url} "
                f"(it must run with --model-control-mode=explicit): {exc}"
            ) from exc


def unload_identity(http_url: str) -> None:
    """Unload the identity model from a user's server; a failure is logged, never raised."""
    with control_client(http_url) as client:
        try:
            client.unload_model(IDENTITY_MODEL)
            log.info("unloaded %s from the server at %s", IDENTITY_MODEL, http_url)
        except MlapiError as exc:
            log.warning("could not unload %s from %s: %s", IDENTITY_MODEL, http_url, exc)


@contextmanager
def identity_loaded(http_url: str) -> Iterator[None]:
    """Serve the identity model while the block runs.

    When this loaded it, it is unloaded after the block, also on errors, Ctrl-C and SIGTERM
    (the CLI turns SIGTERM into SystemExit), so that a benchmark leaves no hidden model in a
    user's server. An interruption while the load is in flight unloads too: the server may
    finish a load its caller stopped waiting for.
    """
    with control_client(http_url) as client:
        was_ready = _identity_ready(client, http_url)
    try:
        if not was_ready:
            ensure_identity(http_url)
        yield
    finally:
        if not was_ready:
            unload_identity(http_url)


def _identity_ready(client: Client, http_url: str) -> bool:
    try:
        return client.is_ready(IDENTITY_MODEL, retry=False)
    except MlapiError as exc:
        raise StackError(f"the server at {http_url} does not answer: {exc}") from exc


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
