"""Webhook delivery against real HTTP servers: redirects are followed by hand and each hop is
re-checked (a redirect to a refused address is not followed), the hop count is bounded, and
the connection goes to the address that was checked while the Host header keeps the name."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlapi_gateway import webhooks
from mlapi_gateway.errors import RequestInvalidError

from .harness import WebhookReceiver, wait_for
from .test_jobs import _slow, _wait_final


@dataclass
class Hit:
    host_header: str
    body: bytes


@dataclass
class Recorder:
    """An HTTP server on ``bind`` recording every POST and answering ``status`` (with
    ``location`` as its Location header when given)."""

    bind: str = "127.0.0.1"
    status: int = 204
    location: str | None = None
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.hits.append(Hit(self.headers.get("Host", ""), body))
                self.send_response(recorder.status)
                if recorder.location:
                    self.send_header("Location", recorder.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((self.bind, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _webhook_final(api: httpx.Client, webhook_url: str) -> dict:
    body = {"model": "slow", "inputs": [_slow(1)], "webhook_url": webhook_url}
    created = api.post("/v1/jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    _wait_final(api, job_id)
    return wait_for(
        lambda: (
            (job := api.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"] != "pending" and job
        ),
        timeout_s=30,
    )


def test_a_redirect_to_a_refused_address_is_not_followed(api: httpx.Client) -> None:
    # The session gateway allows 127.0.0.1/32 only; 127.0.0.2 is loopback outside it.
    with Recorder(bind="127.0.0.2") as inside, Recorder(status=307) as redirector:
        redirector.location = inside.url
        job = _webhook_final(api, redirector.url)
    assert job["webhook"]["state"] == "failed"
    assert "127.0.0.2" in job["webhook"]["outcome"]
    assert job["webhook"]["attempts"] == 1  # refused for good, not retried
    assert len(redirector.hits) == 1
    assert inside.hits == []


def test_a_redirect_to_an_allowed_target_is_followed_with_the_signed_post(
    api: httpx.Client,
) -> None:
    with WebhookReceiver() as receiver, Recorder(status=308) as redirector:
        redirector.location = receiver.url
        job = _webhook_final(api, redirector.url)
        assert job["webhook"]["state"] == "delivered", job
        assert len(receiver.deliveries) == 1 and receiver.deliveries[0].signature_ok
        assert receiver.deliveries[0].body["id"] == job["id"]
        assert len(redirector.hits) == 1


def test_redirects_are_bounded(api: httpx.Client) -> None:
    with Recorder(status=302) as loop:
        loop.location = loop.url
        job = _webhook_final(api, loop.url)
    assert job["webhook"]["state"] == "failed"
    assert "redirects" in job["webhook"]["outcome"]
    assert len(loop.hits) == 4  # the first POST and 3 redirects (webhook_max_redirects)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """A resolver of made-up names (what DNS would answer), in place of getaddrinfo."""
    answers: dict[str, list[str]] = {}
    real = webhooks.resolve

    async def resolve(host: str, port: int) -> list[webhooks.Address]:
        if host in answers:
            return [ipaddress.ip_address(a) for a in answers[host]]
        return await real(host, port)

    monkeypatch.setattr(webhooks, "resolve", resolve)
    return answers


def _post(url: str, allow: list[str]) -> tuple[bool, int, str]:
    async def run() -> tuple[bool, int, str]:
        networks = [ipaddress.ip_network(n) for n in allow]
        async with webhooks.client(networks, 5.0) as http:
            return await webhooks.deliver(http, url, b"{}", "a-test-secret-16", 1, 1, 0.0)

    return asyncio.run(run())


def test_the_connection_goes_to_the_checked_address_with_the_name_kept(
    names: dict[str, list[str]],
) -> None:
    with Recorder() as receiver:
        port = receiver.server.server_address[1]
        names["hooks.example.test"] = ["127.0.0.1"]
        assert _post(f"http://hooks.example.test:{port}/hook", ["127.0.0.1/32"])[0]
        assert [h.host_header for h in receiver.hits] == [f"hooks.example.test:{port}"]
        # A name that now resolves to a refused address is not connected to at all.
        names["hooks.example.test"] = ["127.0.0.1", "10.0.0.1"]
        delivered, _, outcome = _post(f"http://hooks.example.test:{port}/hook", ["127.0.0.1/32"])
        assert not delivered and "10.0.0.1" in outcome
        assert len(receiver.hits) == 1


def test_the_transport_refuses_before_connecting(names: dict[str, list[str]]) -> None:
    with Recorder() as receiver:
        port = receiver.server.server_address[1]
        names["metadata.example.test"] = ["127.0.0.1"]

        async def run() -> None:
            async with webhooks.client([], 5.0) as http:
                with pytest.raises(RequestInvalidError, match="webhook_url"):
                    await http.post(f"http://metadata.example.test:{port}/x", content=b"{}")

        asyncio.run(run())
        assert receiver.hits == []


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Any:
    """A Recorder behind TLS with a self-signed certificate for hooks.example.test only."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=hooks.example.test", "-addext", "subjectAltName=DNS:hooks.example.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    recorder = Recorder()
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    recorder.server.socket = server_side.wrap_socket(recorder.server.socket, server_side=True)
    with recorder:
        yield recorder, ssl.create_default_context(cafile=str(cert))


def test_tls_checks_the_certificate_against_the_name_not_the_pinned_ip(
    names: dict[str, list[str]], tls_receiver: Any
) -> None:
    receiver, trusted = tls_receiver
    port = receiver.server.server_address[1]
    names["hooks.example.test"] = ["127.0.0.1"]
    names["other.example.test"] = ["127.0.0.1"]
    allow = [ipaddress.ip_network("127.0.0.1/32")]

    async def post(host: str) -> tuple[bool, int, str]:
        async with webhooks.client(allow, 5.0, verify=trusted) as http:
            return await webhooks.deliver(
                http, f"https://{host}:{port}/hook", b"{}", "a-test-secret-16", 1, 1, 0.0
            )

    assert asyncio.run(post("hooks.example.test"))[0]
    assert [h.host_header for h in receiver.hits] == [f"hooks.example.test:{port}"]
    delivered, _, outcome = asyncio.run(post("other.example.test"))
    assert not delivered and "certificate" in outcome.lower(), outcome
    assert len(receiver.hits) == 1
