"""A bug inside one request's ``execute`` fails that request only (a real tritonserver).

Test models (tests/integration/models/repository) answer through mlapi_backend's shared
wrappers and raise for marked requests: four concurrent requests share one dynamic batch of
``batch_faults``; ``stream_faults`` streams concurrently on one instance.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlapi_client import AsyncClient
from mlapi_client.errors import (
    InvalidInputError,
    MlapiError,
    ModelUnavailableError,
    ServerError,
)
from mlapi_tools.local.triton_process import TritonServer
from tests.conftest import own_triton

REPOSITORY = Path(__file__).parent / "repository"
MODELS = ("batch_faults", "stream_faults")
BUG_READING, BUG_IN_BATCH, INVALID, UNAVAILABLE = -1, -2, -3, -4
BUG_REPEATED, BUG_MARK, BUG_EVERY_STEP = -5, -6, -7
LOG_WAIT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path]]:
    workdir = tmp_path_factory.mktemp("isolation")
    with own_triton(workdir, repositories=[REPOSITORY], models=MODELS) as triton:
        yield triton, workdir / "tritonserver.log"


def _url(triton: TritonServer, protocol: str) -> str:
    return triton.http_url if protocol == "http" else triton.grpc_url


async def _batch(url: str, protocol: str, values: list[int], prefix: str) -> list:
    """Send one request per value at once; each result or the MlapiError it raised."""
    async with AsyncClient(url, protocol=protocol) as client:
        calls = [
            client.infer(
                "batch_faults",
                {"value": np.array([[value]], dtype=np.int32)},
                request_id=f"{prefix}-{index}",
                retry=False,
            )
            for index, value in enumerate(values)
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))


def _served(result: object, value: int, batch: int = 4) -> None:
    assert not isinstance(result, BaseException), result
    assert result["doubled"].tolist() == [[2 * value]]  # type: ignore[index]
    assert result["batch_size"].tolist() == [[batch]]  # type: ignore[index]


def _logged(log: Path, pattern: str) -> list[str]:
    return [
        line for line in log.read_text(errors="replace").splitlines() if re.search(pattern, line)
    ]


def _wait_logged(log: Path, pattern: str) -> str:
    """The first log line matching ``pattern`` (a regular expression), once there is one."""
    deadline = time.monotonic() + LOG_WAIT_S
    while time.monotonic() < deadline:
        lines = _logged(log, pattern)
        if lines:
            return lines[0]
        time.sleep(0.05)
    pytest.fail(f"the server log never matched {pattern!r}")


# One traceback per kind of failure per minute: the first protocol's run of a test logs it,
# the other's is counted. Either line proves the bug reached the log at error level.
EITHER = "(http|grpc)"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bug_reading_one_request_fails_it_alone_in_its_batch(server, protocol):
    triton, log = server
    values = [1, BUG_READING, 2, 3]
    first, bug, second, third = asyncio.run(
        _batch(_url(triton, protocol), protocol, values, f"{protocol}-read")
    )
    for result, value in ((first, 1), (second, 2), (third, 3)):
        _served(result, value)  # batch size 4: the bug shared their execute call
    assert isinstance(bug, ServerError), bug
    assert bug.status in ("500", "INTERNAL"), bug.status
    assert f"request '{protocol}-read-1'" in str(bug) and "KeyError" in str(bug)
    logged = _wait_logged(log, f"batch_faults: request '{EITHER}-read-1' failed")
    assert logged.startswith("E"), logged  # an error-level line


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bug_in_the_batched_step_fails_only_the_request_that_provokes_it(server, protocol):
    triton, log = server
    values = [5, BUG_IN_BATCH, 6, INVALID]
    first, bug, second, invalid = asyncio.run(
        _batch(_url(triton, protocol), protocol, values, f"{protocol}-step")
    )
    _served(first, 5)
    _served(second, 6)
    assert isinstance(bug, ServerError) and bug.status in ("500", "INTERNAL"), bug
    assert "ZeroDivisionError" in str(bug) and f"request '{protocol}-step-1'" in str(bug)
    assert isinstance(invalid, InvalidInputError), invalid  # expected errors keep their status
    assert invalid.field == "value" and invalid.status in ("400", "INVALID_ARGUMENT")
    _wait_logged(log, f"batch_faults: request '{EITHER}-step-1' failed")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unavailable_dependency_is_503_for_its_request_and_the_model_keeps_serving(
    server, protocol
):
    triton, _ = server
    url = _url(triton, protocol)
    results = asyncio.run(_batch(url, protocol, [7, UNAVAILABLE, 8, 9], f"{protocol}-dep"))
    unavailable = results.pop(1)
    assert isinstance(unavailable, ModelUnavailableError), unavailable
    assert unavailable.status in ("503", "UNAVAILABLE")
    for result, value in zip(results, (7, 8, 9), strict=True):
        _served(result, value)
    for result, value in zip(
        asyncio.run(_batch(url, protocol, [10, 11, 12, 13], f"{protocol}-after")),
        (10, 11, 12, 13),
        strict=True,
    ):
        _served(result, value)


async def _streams(url: str, protocol: str, fail_at: list[int], count: int) -> list:
    """Run one stream per ``fail_at`` at once; per stream, its indexes and its error (if any)."""

    async def one(client: AsyncClient, index: int, fail: int) -> tuple[list[int], object]:
        inputs = {
            "count": np.array([count], dtype=np.int32),
            "fail_at": np.array([fail], dtype=np.int32),
        }
        received: list[int] = []
        try:
            async for response in client.stream(
                "stream_faults",
                inputs,
                request_id=f"{protocol}-stream-{index}",
                timeout_s=60,
                retry=False,
            ):
                received.append(int(response["index"][0]))
        except MlapiError as exc:
            return received, exc
        return received, None

    async with AsyncClient(url, protocol=protocol) as client:
        return list(await asyncio.gather(*(one(client, i, f) for i, f in enumerate(fail_at))))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_bug_mid_stream_ends_that_stream_with_an_error_and_others_finish(server, protocol):
    triton, log = server
    count = 20
    outcomes = asyncio.run(_streams(_url(triton, protocol), protocol, [-1, 5, -1, -1], count))
    (received, error) = outcomes[1]
    assert received == list(range(5)), received  # what was sent before the bug arrived
    # A server error (a stream error after the first response carries no status to check).
    assert isinstance(error, ServerError), error
    assert "KeyError" in str(error) and f"request '{protocol}-stream-1'" in str(error)
    for received, error in (outcomes[0], *outcomes[2:]):
        assert error is None, error
        assert received == list(range(count))
    _wait_logged(log, f"stream_faults: request '{EITHER}-stream-1' failed")


def test_a_bug_every_request_provokes_logs_one_traceback(server):
    triton, log = server
    url = triton.http_url
    failed = asyncio.run(_batch(url, "http", [BUG_REPEATED] * 4, "repeated"))
    for index, error in enumerate(failed):
        assert isinstance(error, ServerError), error  # each request still gets its own error
        assert f"request 'repeated-{index}'" in str(error) and "RuntimeError" in str(error)
    # A later failure of another kind marks a point: the log has everything before it.
    marked = asyncio.run(_batch(url, "http", [BUG_MARK, 1, 2, 3], "mark"))
    assert isinstance(marked[0], ServerError), marked[0]
    _wait_logged(log, "batch_faults: request 'mark-0' failed")
    assert len(_logged(log, r"batch_faults: request 'repeated-\d' failed")) == 1


def test_a_batched_step_that_always_fails_is_not_rerun_for_every_request(server):
    triton, log = server
    failed = asyncio.run(_batch(triton.http_url, "http", [BUG_EVERY_STEP] * 4, "every"))
    for index, error in enumerate(failed):
        assert isinstance(error, ServerError), error
        assert f"request 'every-{index}'" in str(error) and "ConnectionError" in str(error)
    # The batch, its first request alone, then the other three once more together.
    _wait_logged(log, r"batch_faults: a batch of 4 failed \(ConnectionError.*one by one")
    _wait_logged(log, r"batch_faults: a batch of 3 failed \(ConnectionError.*without rerunning")
