"""Triton's control path and its crash classes, replayed as an outsider would send them.

Each request below either ran code as the server's user or crashed / exhausted tritonserver 2.51
when its APIs were open. With the launcher's defaults (loopback, every API but health behind
the access key) each one is refused before Triton parses its body, and the server afterwards
still answers a known digit correctly. The server is this module's own: a regression here must
not take the session server (and every later test) down with it.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from mlapi_client import access
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

EVIL_MODEL = "evil_probe"
EVIL_CODE = b"""
import pathlib
class TritonPythonModel:
    def initialize(self, args):
        pathlib.Path(__file__).with_name("ran").write_text("code ran")
    def execute(self, requests):
        return []
"""
EVIL_CONFIG = json.dumps(
    {
        "name": EVIL_MODEL,
        "backend": "python",
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
    }
)
ONE = np.zeros((1, 8, 8), dtype=np.uint8)
ONE[0, 1:7, 3:5] = 255  # a vertical bar: read as "1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, triton_key: str) -> Iterator[TritonServer]:
    with own_triton(tmp_path_factory.mktemp("exposure"), models=("digits",)) as triton:
        yield triton


def _post(
    server: TritonServer,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"http://{server.http_url}{path}", data=body, headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _refused(status: int, body: bytes) -> None:
    assert status == 403, (status, body[:200])
    assert access.KEY_HEADER.encode() in body  # Triton names the header it expected


def _rss_kb(server: TritonServer) -> int:
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def _still_serving(server: TritonServer, key: str) -> None:
    """The process lives and, with the key, reads the known "1"."""
    assert server.process is not None and server.process.poll() is None, "tritonserver died"
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url), key)
    try:
        image = grpcclient.InferInput("image", list(ONE.shape), "UINT8")
        image.set_data_from_numpy(ONE)
        result = client.infer("digits", [image])
        assert result.as_numpy("labels")[0, 0] == b"1"
    finally:
        client.close()


def _load_body() -> bytes:
    files = {"file:1/model.py": base64.b64encode(EVIL_CODE).decode()}
    return json.dumps({"parameters": {"config": EVIL_CONFIG, **files}}).encode()


# --- item 1: the control path ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "application/json"}, id="direct"),
        # What a page on any origin can send with fetch(..., {mode: "no-cors"}): a CORS
        # "simple request" (text/plain, no custom header), which no preflight stops.
        pytest.param(
            {"Content-Type": "text/plain", "Origin": "http://attacker.example"},
            id="cross-origin-simple-request",
        ),
        pytest.param({access.KEY_HEADER: "guessed-wrong"}, id="wrong-key"),
    ],
)
def test_repository_load_with_code_is_refused_over_http(server, triton_key, headers):
    status, body = _post(server, f"/v2/repository/models/{EVIL_MODEL}/load", _load_body(), headers)
    if access.KEY_HEADER in headers:
        assert status == 403, (status, body)
    else:
        _refused(status, body)
    for path in ("/v2/repository/models/digits/unload", "/v2/logging", "/v2/trace/setting"):
        status, body = _post(server, path, b'{"log_verbose_level": 1}', headers)
        assert status == 403, (path, status, body)
    _assert_evil_model_absent(server, triton_key)
    _still_serving(server, triton_key)


def test_repository_load_and_log_settings_are_refused_over_grpc(server, triton_key):
    client = grpcclient.InferenceServerClient(server.grpc_url)  # no key
    try:
        calls = {
            "load with code": lambda: client.load_model(
                EVIL_MODEL, config=EVIL_CONFIG, files={"file:1/model.py": EVIL_CODE}
            ),
            "unload digits": lambda: client.unload_model("digits"),
            "log settings": lambda: client.update_log_settings({"log_verbose_level": 1}),
            "repository index": lambda: client.get_model_repository_index(),
        }
        for name, call in calls.items():
            with pytest.raises(InferenceServerException, match="restricted") as caught:
                call()
            assert access.GRPC_KEY_HEADER in caught.value.message(), name
    finally:
        client.close()
    _assert_evil_model_absent(server, triton_key)
    _still_serving(server, triton_key)


def _assert_evil_model_absent(server: TritonServer, key: str) -> None:
    client = access.with_key(grpcclient.InferenceServerClient(server.grpc_url), key)
    try:
        names = {m.name for m in client.get_model_repository_index().models}
    finally:
        client.close()
    assert EVIL_MODEL not in names and "digits" in names


def test_the_key_holder_keeps_control_and_inference(server, triton_key):
    """The project's own callers are not locked out: index, config and inference with the key."""
    status, body = _post(server, "/v2/repository/index", b"{}", access.http_headers(triton_key))
    assert status == 200 and b'"digits"' in body
    status, _ = _post(server, "/v2/repository/index", b"{}")
    assert status == 403
    _still_serving(server, triton_key)


def test_health_stays_open_for_probes(server):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
        with urllib.request.urlopen(f"http://{server.http_url}{path}", timeout=10) as reply:
            assert reply.status == 200, path


def test_triton_listens_on_loopback_only(server):
    """Every port refuses connections on any non-loopback address of this host."""
    addresses = {_outbound_address()} - {None}
    addresses |= {
        info[4][0]
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        if not info[4][0].startswith("127.")
    }
    if not addresses:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    for address in addresses:
        for port in (server.ports.http, server.ports.grpc, server.ports.metrics):
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
                pass


def _outbound_address() -> str | None:
    """The address of the interface the default route leaves by (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # TEST-NET-2: routed, never reached
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


# --- item 2: requests that crashed or exhausted tritonserver 2.51 ----------------------------


def _infer_body(shape: list[int], datatype: str = "UINT8", outputs: list | None = None) -> bytes:
    body: dict = {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": [0]}]}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


CRASH_BODIES = {
    # std::bad_alloc in the JSON parser's buffer for the declared shape.
    "declared shape 1x2^31x64": (_infer_body([1, 2147483648, 64]), {}),
    # ~10 GB and 11.8 s before Triton answered.
    "declared shape 1x100000x100000": (_infer_body([1, 100000, 100000]), {}),
    # SIGSEGV: the recursive JSON parser's stack.
    "JSON nested 50,000 deep": (b'{"inputs":' + b"[" * 50_000 + b"]" * 50_000 + b"}", {}),
    # SIGFPE: the classification extension on a BYTES output.
    "classification on a BYTES output": (
        _infer_body([1, 8, 8], outputs=[{"name": "labels", "parameters": {"classification": 1}}]),
        {},
    ),
    # A small body that inflates to 256 MB of JSON whitespace inside Triton (built below).
    "gzip bomb": (b"", {"Content-Encoding": "gzip"}),
}


def _gzip_bomb(inflated_mb: int = 256) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    parts = [packer.compress(b'{"inputs": [')]
    block = b" " * (1 << 20)
    parts.extend(packer.compress(block) for _ in range(inflated_mb))
    parts.append(packer.compress(b"]}") + packer.flush())
    return b"".join(parts)


@pytest.mark.parametrize("name", list(CRASH_BODIES))
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_crash_classes_never_reach_triton_over_http(server, triton_key, name, content_type):
    body, headers = CRASH_BODIES[name]
    body = body or _gzip_bomb()
    before_kb = _rss_kb(server)
    status, reply = _post(
        server, "/v2/models/digits/infer", body, {"Content-Type": content_type, **headers}
    )
    _refused(status, reply)
    grown_mb = (_rss_kb(server) - before_kb) / 1024
    assert grown_mb < 64, f"{name}: tritonserver grew by {grown_mb:.0f} MB"
    _still_serving(server, triton_key)


def test_classification_over_grpc_never_reaches_triton(server, triton_key):
    """tritonclient's class_count=1 on the BYTES output `labels` (SIGFPE when open)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)  # no key
    try:
        image = grpcclient.InferInput("image", list(ONE.shape), "UINT8")
        image.set_data_from_numpy(ONE)
        output = grpcclient.InferRequestedOutput("labels", class_count=1)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.infer("digits", [image], outputs=[output])
    finally:
        client.close()
    _still_serving(server, triton_key)


def test_declared_shape_over_grpc_never_reaches_triton(server, triton_key):
    """A raw ModelInferRequest declaring 2^31 x 64 elements for a few bytes of data."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="image", datatype="UINT8")
    tensor.shape.extend([1, 2147483648, 64])
    request.raw_input_contents.append(b"\0" * 64)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "restricted" in (caught.value.details() or "")
    _still_serving(server, triton_key)
