"""Concurrent digits predictions sharing Triton requests (mlapi_client.coalesce), for real.

Two gateways on the session's Triton: one that joins concurrent calls (at most one request out,
so that calls must wait and share), one that sends every call alone. The same images, sent
concurrently through both, get the same answers; Triton counts fewer requests than images for
the first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlapi_client import Client
from mlapi_tools.build.digits_data import DigitsSplit
from mlapi_tools.local.triton_process import TritonServer

from .conftest import gateway_env
from .harness import Gateway

CALLS = 96
CONCURRENCY = 16


@pytest.fixture(scope="module")
def gateways(
    triton: TritonServer,
    tmp_path_factory: pytest.TempPathFactory,
    gateway_dir: Path,
    keys: dict[str, str],
) -> Iterator[dict[str, Gateway]]:
    started: dict[str, Gateway] = {}
    try:
        for name, overrides in {
            "joined": {"coalesce_max_in_flight": 1, "coalesce_max_rows": 8},
            "alone": {"coalesce_models": "[]"},
        }.items():
            workdir: Path = tmp_path_factory.mktemp(f"gateway-{name}")
            (workdir / "keys.json").write_bytes((gateway_dir / "keys.json").read_bytes())
            env = gateway_env(triton, workdir, **overrides)
            started[name] = Gateway(env, workdir / "gateway.log").start()
        yield started
    finally:
        for gateway in started.values():
            gateway.stop()


def _answers(url: str, key: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers to ``bodies``, sent by CONCURRENCY callers at once (keep-alive each)."""

    async def main() -> list[dict[str, Any]]:
        answers: list[dict[str, Any]] = [{}] * len(bodies)
        queue = list(enumerate(bodies))
        headers = {"Authorization": f"Bearer {key}"}
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=60, limits=limits
        ) as client:

            async def caller() -> None:
                while queue:
                    n, body = queue.pop()
                    reply = await client.post("/v1/models/digits/predict", json=body)
                    assert reply.status_code == 200, reply.text
                    answers[n] = reply.json()

            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        return answers

    return asyncio.run(main())


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in answer["metadata"].items() if k not in ("cost", "latency_ms")}
    return {**answer, "metadata": metadata, "request_id": None}


def _digits_requests(triton: TritonServer) -> tuple[int, int]:
    """(requests, images) Triton's digits has answered successfully so far."""
    with Client(triton.http_url, protocol="http") as client:
        stats = client.inference_statistics("digits")["model_stats"]
    success = sum(int(s["inference_stats"]["success"]["count"]) for s in stats)
    images = sum(int(s["inference_count"]) for s in stats)
    return success, images


def test_joined_calls_get_the_answers_of_separate_calls(
    gateways: dict[str, Gateway], keys: dict[str, str], split: DigitsSplit
) -> None:
    bodies = [  # top_k varies: only calls with equal top_k share (the model reads one a request)
        {"pixels": split.test_images[n % len(split.test_images)].tolist(), "top_k": 1 + n % 3}
        for n in range(CALLS)
    ]
    alone = _answers(gateways["alone"].url, keys["predict"], bodies)
    joined = _answers(gateways["joined"].url, keys["predict"], bodies)
    assert [_comparable(a) for a in joined] == [_comparable(a) for a in alone]
    log = gateways["joined"].log()
    assert "failed together" not in log, log


def test_triton_answers_fewer_requests_than_calls(
    gateways: dict[str, Gateway], keys: dict[str, str], split: DigitsSplit, triton: TritonServer
) -> None:
    bodies = [{"pixels": split.test_images[n].tolist()} for n in range(CALLS)]
    before = _digits_requests(triton)
    answers = _answers(gateways["joined"].url, keys["predict"], bodies)
    deadline = time.monotonic() + 30  # Triton counts a request once its response is out
    while (after := _digits_requests(triton))[1] - before[1] < CALLS:
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.1)
    requests, images = after[0] - before[0], after[1] - before[1]
    assert images == CALLS, (requests, images)  # every image once: nothing sent twice
    # 16 callers and one request out at a time: calls wait and share requests.
    assert requests < CALLS * 0.75, (requests, images)
    labels = [a["predictions"][0]["label"] for a in answers]
    assert (
        sum(label == str(y) for label, y in zip(labels, split.test_y, strict=False)) > CALLS * 0.8
    )


def test_a_pinned_version_is_never_joined_with_another(
    gateways: dict[str, Gateway], keys: dict[str, str], split: DigitsSplit
) -> None:
    url = gateways["joined"].url
    image = split.test_images[0].tolist()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        replies = list(
            pool.map(
                lambda n: httpx.post(
                    f"{url}/v1/models/digits/versions/{1 + n % 2}/predict",
                    json={"pixels": image},
                    headers={"Authorization": f"Bearer {keys['predict']}"},
                    timeout=60,
                ),
                range(48),
            )
        )
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies][:3]
    assert [r.json()["model_version"] for r in replies] == [str(1 + n % 2) for n in range(48)]
