"""The assembled app in-process, over httpx's ASGI transport (no Triton: its ports are closed)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from mlapi_gateway import GatewaySettings, create_app
from mlapi_gateway.keys import add_key, new_key

Check = Callable[[httpx.AsyncClient, str], Awaitable[None]]


def _run(tmp_path: Path, check: Check, **overrides: object) -> None:
    key, record = new_key(["predict"])
    add_key(tmp_path / "keys.json", record)
    settings = GatewaySettings(
        **overrides,
        keys_file=tmp_path / "keys.json",
        jobs_db=tmp_path / "jobs.sqlite3",
        triton_grpc_url="127.0.0.1:9",
        triton_http_url="127.0.0.1:9",
    )
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
        ):
            await check(client, key)

    asyncio.run(main())


def test_unexpected_errors_are_a_bare_500_problem(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.get("/boom")
        assert reply.status_code == 500
        assert reply.headers["content-type"] == "application/problem+json"
        assert "secret" not in reply.text and "Traceback" not in reply.text

    _run(tmp_path, check)


def test_unknown_route_is_a_404_problem_and_auth_comes_first(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.get("/v2/nothing")
        assert reply.status_code == 404
        assert reply.json()["type"].endswith("not-found")
        reply = await client.post("/v1/models/digits/predict", content=b"{not json")
        assert reply.status_code == 401

    _run(tmp_path, check)


def test_triton_down_is_503_with_retry_after(tmp_path: Path) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.post(
            "/v1/models/digits/predict",
            json={"pixels": [[0] * 8] * 8},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert reply.status_code == 503, reply.text
        assert reply.headers["Retry-After"] == "5"
        assert (await client.get("/readyz")).status_code == 503

    _run(tmp_path, check)


def test_open_mode_is_explicit_and_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.post("/v1/models/digits/predict", json={"pixels": [[0] * 8] * 8})
        assert reply.status_code == 503  # past auth without a key; Triton is not there

    with caplog.at_level(logging.WARNING, logger="mlapi_gateway"):
        _run(tmp_path, check, auth_mode="open")
    assert "AUTHENTICATION IS OFF" in caplog.text


def test_predict_routes_are_documented_and_keep_the_usual_answers(tmp_path: Path) -> None:
    """The predict routes skip FastAPI's per-request machinery, not its docs or error answers."""

    async def check(client: httpx.AsyncClient, key: str) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert (
            list(paths).index("/v1/models/{model}/predict") == list(paths).index("/v1/models") + 1
        )
        for path in ("/v1/models/{model}/predict", "/v1/models/{model}/versions/{version}/predict"):
            operation = paths[path]["post"]
            assert operation["tags"] == ["models"]
            assert operation["requestBody"]["required"] is True
            assert {"model", "timeout_s"} <= {p["name"] for p in operation["parameters"]}
            assert {"200", "400", "401", "429", "503", "504"} <= set(operation["responses"])
        reply = await client.get("/v1/models/digits/predict")
        assert reply.status_code == 405
        assert reply.headers["content-type"] == "application/problem+json"
        headers = {"Authorization": f"Bearer {key}"}
        reply = await client.post("/v1/models/digits/predict", content=b"{", headers=headers)
        assert reply.status_code == 400
        assert reply.json()["instance"] == "/v1/models/digits/predict"
        reply = await client.post(
            "/v1/models/nope/versions/1/predict", json={"pixels": [[0]]}, headers=headers
        )
        assert reply.status_code == 404
        metrics = (await client.get("/metrics")).text
        assert 'route="/v1/models/{model}/versions/{version}/predict"' in metrics

    _run(tmp_path, check)


def test_405_allows_every_method_of_the_path_and_the_spec_names_the_errors(
    tmp_path: Path,
) -> None:
    async def check(client: httpx.AsyncClient, key: str) -> None:
        reply = await client.request("OPTIONS", "/v1/jobs/some-id")
        assert reply.status_code == 405
        assert reply.headers["Allow"] == "DELETE, GET"  # two routes share the path
        spec = (await client.get("/openapi.json")).json()
        digits = spec["paths"]["/v1/models/digits/predict"]["post"]
        assert digits["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/DigitsPredict"
        )
        assert {"400", "401", "404", "408", "413", "429", "503"} <= set(digits["responses"])
        assert "Retry-After" in digits["responses"]["503"]["headers"]
        assert spec["paths"]["/healthz"]["get"]["security"] == []
        metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        assert list(metrics) == ["text/plain"]

    _run(tmp_path, check)
