"""Async jobs: 202 + Location, progress, cancel, expiry, signed webhooks with retries, SSRF
refusals, malformed webhook URLs, jobs without a webhook secret, private state files.
Crashes and restarts under running jobs: test_jobs_faults.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer

from .conftest import gateway_env
from .harness import Gateway, WebhookReceiver, create_key, wait_for

FINAL = {"succeeded", "failed", "cancelled"}


def _slow(ms: int) -> dict:
    return {"inputs": {"delay_ms": [[ms]]}}


def _wait_final(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict:
    def final() -> dict | None:
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in FINAL else None

    return wait_for(final, timeout_s, interval_s=0.1)


def test_batch_job_reports_progress_and_results(api: httpx.Client, split: DigitsSplit) -> None:
    images = split.test_images[:5]
    created = api.post(
        "/v1/jobs",
        json={"model": "digits", "inputs": [{"pixels": i.tolist(), "top_k": 2} for i in images]},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["Location"] == f"/v1/jobs/{job_id}"
    assert created.json()["progress"] == {"done": 0, "total": 5, "failed": 0}
    job = _wait_final(api, job_id)
    assert job["status"] == "succeeded"
    assert job["progress"]["done"] == 5
    labels = [r["body"]["predictions"][0]["label"] for r in job["results"]]
    assert labels == [str(y) for y in split.test_y[:5]]


def test_job_with_a_failing_input_fails_with_per_input_problems(api: httpx.Client) -> None:
    created = api.post(
        "/v1/jobs",
        json={
            "model": "digits",
            "inputs": [
                {"pixels": [[(x * y) % 256 for x in range(8)] for y in range(8)]},
                {"image": "bm90IGFuIGltYWdl"},
            ],
        },
    )
    job = _wait_final(api, created.json()["id"])
    assert job["status"] == "failed"
    assert [r["status"] for r in job["results"]] == [200, 400]
    assert job["results"][1]["problem"]["errors"][0]["field"] == "body.image"


def test_invalid_job_bodies_are_400(api: httpx.Client) -> None:
    reply = api.post(
        "/v1/jobs", json={"model": "digits", "inputs": [{"pixels": [[1]]}, {"pixels": "x"}]}
    )
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["field"].startswith("body.inputs.1")
    assert api.post("/v1/jobs", json={"model": "nope", "inputs": [{}]}).status_code == 404
    assert api.post("/v1/jobs", json={"model": "digits", "inputs": []}).status_code == 400
    assert api.get("/v1/jobs/does-not-exist").status_code == 404


def test_cancel_a_queued_job_and_409_once_final(api: httpx.Client) -> None:
    blocker = api.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1500)]}).json()["id"]
    queued = api.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(10)] * 3}).json()["id"]
    cancelled = api.delete(f"/v1/jobs/{queued}")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert _wait_final(api, blocker)["status"] == "succeeded"
    assert api.get(f"/v1/jobs/{queued}").json()["status"] == "cancelled"
    assert api.delete(f"/v1/jobs/{blocker}").status_code == 409


@pytest.fixture(scope="module")
def jobs_gateway(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str]]:
    workdir = tmp_path_factory.mktemp("jobs-gateway")
    key = create_key(workdir / "keys.json", "predict")
    env = gateway_env(triton, workdir, jobs_result_ttl_s=2)
    gateway = Gateway(env, workdir / "gateway.log").start()
    yield gateway, key
    gateway.stop()


def test_results_expire(jobs_gateway: tuple[Gateway, str]) -> None:
    gateway, key = jobs_gateway
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as client:
        job_id = client.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1)]}).json()["id"]
        job = _wait_final(client, job_id)
        assert job["expires_at"] - job["finished_at"] == pytest.approx(2, abs=0.01)
        wait_for(lambda: client.get(f"/v1/jobs/{job_id}").status_code == 404, timeout_s=10)


def test_webhook_is_signed_and_retried(jobs_gateway: tuple[Gateway, str]) -> None:
    gateway, key = jobs_gateway
    with (
        WebhookReceiver(fail_first=2) as receiver,
        httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        body = {"model": "slow", "inputs": [_slow(1)], "webhook_url": receiver.url}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        wait_for(lambda: receiver.deliveries, timeout_s=20)
        delivery = receiver.deliveries[0]
        assert delivery.signature_ok
        assert delivery.body["id"] == job_id and delivery.body["status"] == "succeeded"
        assert receiver.failed == 2
        job = wait_for(
            lambda: (
                (j := client.get(f"/v1/jobs/{job_id}").json())["webhook"]["state"] == "delivered"
                and j
            ),
            10,
        )
        assert job["webhook"]["attempts"] == 3


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2:9/hook",  # loopback outside the allow-list (127.0.0.1/32)
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hook",
        "http://0.0.0.0/hook",
        "http://100.100.100.200/latest/meta-data",  # cloud metadata in 100.64.0.0/10
        "http://[::ffff:127.0.0.2]:9/hook",
        "http://[2002:7f00:2::1]/hook",  # 6to4 of 127.0.0.2
        "http://[fec0::1]/hook",
        "http://224.0.0.1/hook",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/hook",
    ],
)
def test_ssrf_targets_are_refused(api: httpx.Client, url: str) -> None:
    reply = api.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1)], "webhook_url": url})
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in reply.json()["errors"]] == ["body.webhook_url"]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "http://",
        "http:///hook",
        "http://exa mple.org/hook",
        "http://127.0.0.1:99999/hook",
        "http://127.0.0.1:0/hook",
        "http://[::1/hook",
        "http://[zz::1]/hook",
        "http://[::1%eth0]/hook",
        "ftp://example.org/hook",
        "http://0x7f.1/hook",
        "http://\u00e9\u0000.org/hook",
    ],
)
def test_malformed_webhook_urls_are_400_naming_the_field(api: httpx.Client, url: str) -> None:
    reply = api.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1)], "webhook_url": url})
    assert reply.status_code == 400, reply.text
    problem = reply.json()
    assert problem["status"] == 400 and problem["type"].endswith("/validation")
    assert [e["field"] for e in problem["errors"]] == ["body.webhook_url"]
    assert api.get("/healthz").status_code == 200


def test_the_jobs_database_is_private(api: httpx.Client, gateway_dir: Path) -> None:
    job_id = api.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1)]}).json()["id"]
    _wait_final(api, job_id)
    files = [gateway_dir / f"jobs.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {
        f.name: "0o600" for f in files
    }
    assert (gateway_dir / "keys.json").stat().st_mode & 0o077 == 0


@pytest.fixture(scope="module")
def secretless_gateway(
    triton: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, str]]:
    workdir = tmp_path_factory.mktemp("secretless-gateway")
    key = create_key(workdir / "keys.json", "predict")
    env = gateway_env(triton, workdir)
    env["MLAPI_GATEWAY_WEBHOOK_SECRET"] = ""  # as a chart leaves it: empty means unset
    gateway = Gateway(env, workdir / "gateway.log")
    yield gateway.start(), key
    gateway.stop()


def test_without_a_secret_webhooks_are_refused_and_jobs_still_run(
    secretless_gateway: tuple[Gateway, str],
) -> None:
    gateway, key = secretless_gateway
    assert "MLAPI_GATEWAY_WEBHOOK_SECRET is not set" in gateway.log()
    with (
        WebhookReceiver() as receiver,
        httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}) as client,
    ):
        body = {"model": "slow", "inputs": [_slow(1)], "webhook_url": receiver.url}
        refused = client.post("/v1/jobs", json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["errors"][0]["field"] == "body.webhook_url"
        assert "MLAPI_GATEWAY_WEBHOOK_SECRET" in refused.json()["errors"][0]["message"]
        plain = client.post("/v1/jobs", json={"model": "slow", "inputs": [_slow(1)]})
        assert plain.status_code == 202, plain.text
        assert _wait_final(client, plain.json()["id"])["status"] == "succeeded"
    assert receiver.deliveries == []
