"""API keys: 401 without a valid key, 403 without the scope, keys created at run time work."""

from __future__ import annotations

import httpx

from .harness import Gateway, create_key, wait_for

BODY = {"pixels": [[(x * y) % 256 for x in range(8)] for y in range(8)]}


def test_missing_or_invalid_key_is_401(gateway: Gateway) -> None:
    url = f"{gateway.url}/v1/models/digits/predict"
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer mlapi_000000000000_not-a-real-key"},
        {"Authorization": "Bearer garbage"},
    ):
        reply = httpx.post(url, json=BODY, headers=headers)
        assert reply.status_code == 401, reply.text
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        assert reply.headers["content-type"] == "application/problem+json"


def test_key_without_scope_is_403(gateway: Gateway, keys: dict[str, str]) -> None:
    admin_only = {"Authorization": f"Bearer {keys['admin']}"}
    reply = httpx.post(f"{gateway.url}/v1/models/digits/predict", json=BODY, headers=admin_only)
    assert reply.status_code == 403
    assert "predict" in reply.json()["detail"]


def test_stored_keys_are_hashes(gateway_dir, keys: dict[str, str]) -> None:
    stored = (gateway_dir / "keys.json").read_text()
    for key in keys.values():
        assert key not in stored
        assert key.split("_")[1] in stored  # the public id part names the key


def test_key_created_while_running_works_without_restart(gateway: Gateway, gateway_dir) -> None:
    key = create_key(gateway_dir / "keys.json", "predict")
    headers = {"Authorization": f"Bearer {key}"}

    def accepted() -> bool:
        url = f"{gateway.url}/v1/models/digits/predict"
        return httpx.post(url, json=BODY, headers=headers).status_code == 200

    wait_for(accepted, timeout_s=10, interval_s=0.2)


def test_jobs_are_private_to_their_key_unless_admin(gateway: Gateway, keys: dict[str, str]) -> None:
    def client(name: str) -> httpx.Client:
        return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {keys[name]}"})

    with client("predict") as owner, client("both") as admin:
        created = owner.post("/v1/jobs", json={"model": "digits", "inputs": [BODY]})
        assert created.status_code == 202
        job_id = created.json()["id"]
        assert admin.get(f"/v1/jobs/{job_id}").status_code == 200
        stranger_key = create_key(gateway.log_path.parent / "keys.json", "predict")
        with httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {stranger_key}"}
        ) as stranger:
            wait_for(lambda: stranger.get("/v1/models").status_code == 200, timeout_s=10)
            assert stranger.get(f"/v1/jobs/{job_id}").status_code == 404
