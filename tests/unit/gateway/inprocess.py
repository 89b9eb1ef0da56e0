"""The assembled app in-process over httpx's ASGI transport, in front of a FakeTriton."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlapi_gateway import GatewaySettings, create_app
from mlapi_gateway.keys import add_key, new_key
from mlapi_gateway.services import Services

from .fake_triton import FakeTriton


@dataclass
class Gateway:
    """An in-process gateway: its HTTP client, a predict key, the services and the fake."""

    http: httpx.AsyncClient
    key: str
    services: Services
    triton: FakeTriton

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


Check = Callable[[Gateway], Awaitable[None]]


def settings_for(tmp_path: Path, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "models": ["digits", "echo"],
        "keys_file": tmp_path / "keys.json",
        "jobs_db": tmp_path / "jobs.sqlite3",
        "jobs_poll_s": 0.01,
        "retry_after_s": 2,
        **overrides,
    }
    return GatewaySettings(**values)


def run(tmp_path: Path, check: Check, triton: FakeTriton | None = None, **overrides: Any) -> None:
    """Start the app (lifespan included) over ``triton`` and run ``check`` against it."""
    key, record = new_key(["predict"])
    add_key(tmp_path / "keys.json", record)
    settings = settings_for(tmp_path, **overrides)
    fake = triton or FakeTriton.default()
    services = Services.build(settings, fake)
    app = create_app(settings, services)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gateway") as http,
        ):
            await check(Gateway(http, key, services, fake))
        assert fake.closed  # the app closed the services it was given

    asyncio.run(main())
