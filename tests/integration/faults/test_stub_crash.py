"""A killed Python stub under steady load: the supervisor reloads its model, callers see a
retryable "unavailable" meanwhile, and other versions keep serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from mlapi_client import Client
from mlapi_client.errors import InferenceTimeoutError, ModelCrashedError
from mlapi_tools.local.triton_process import TritonServer

from .conftest import IMAGE, RECOVERY_BOUND_S, RELOADS, SteadyLoad, kill_stub, sample, wait_until

PIXELS = {"pixels": np.zeros((1, 64), dtype=np.float32)}
PROMPT = {"text_input": np.array([b"hello"], dtype=object), "max_tokens": np.array([4], np.int32)}


@pytest.fixture(scope="module")
def retrying_client(own_triton: TritonServer) -> Iterator[Client]:
    with Client(own_triton.http_url) as client:
        yield client


def calls(client: Client, retry: bool) -> dict[str, Callable[[], object]]:
    return {
        "digits": lambda: client.digits(IMAGE, retry=retry),
        "digits_classifier": lambda: client.infer("digits_classifier", PIXELS, 2, retry=retry),
        # A stream in flight when its stub dies gets no more responses: bounded by timeout_s.
        "text_generator": lambda: list(
            client.stream("text_generator", PROMPT, timeout_s=5, retry=retry)
        ),
    }


@pytest.mark.parametrize(
    ("model", "version"), [("digits", "1"), ("digits_classifier", "2"), ("text_generator", "1")]
)
def test_a_dead_stub_is_healed_under_steady_load(
    own_triton, start_supervisor, raw_client, retrying_client, report_figure, model, version
):
    supervisor = start_supervisor(probe_interval_s=0)
    healed_before = sample(supervisor, RELOADS, model=model, outcome="reloaded")
    other_version = SteadyLoad(
        lambda: raw_client.infer("digits_classifier", PIXELS, 1, retry=False)
    )
    with (
        SteadyLoad(calls(raw_client, retry=False)[model]) as raw,
        SteadyLoad(calls(retrying_client, retry=True)[model]) as retried,
        other_version,
    ):
        wait_until(lambda: raw.served_since(0.0), 60, f"{model} to serve before the kill")
        killed = kill_stub(own_triton, model, version)
        wait_until(
            lambda: sample(supervisor, RELOADS, model=model, outcome="reloaded") > healed_before,
            RECOVERY_BOUND_S,
            f"the supervisor to reload {model}",
        )
        healed_s = time.monotonic() - killed
        recovery_s = first_served_after(killed, calls(raw_client, retry=False)[model])
        # The dead instances leave Triton's scheduler only when the load returns; until then
        # they can still take a request and fail it, so the outage is read after that.
        wait_until(
            lambda: not supervisor.supervisor.load_pending(model),
            RECOVERY_BOUND_S,
            f"Triton to finish the load that heals {model}",
        )
        finished = time.monotonic()
        wait_until(lambda: raw.served_since(finished), RECOVERY_BOUND_S, f"{model} to serve again")
        wait_until(lambda: retried.served_since(killed), RECOVERY_BOUND_S, "retried calls")
    # Recovery as callers see it: from the kill until requests succeed again after the last
    # failure (steady load, no retry). The heal time is the supervisor's own (until its reload
    # is confirmed), which can end after callers are served again by the other instance.
    outage_s, failures = raw.outage(killed)
    _, retried_failures = retried.outage(killed)
    slowest_s = max(a.end - a.start for a in raw.attempts if a.end > killed)
    report_figure(f"stub kill {model} v{version}: healed by the supervisor (s)", round(healed_s, 2))
    report_figure(f"stub kill {model} v{version}: recovery seen by callers (s)", round(outage_s, 2))
    report_figure(f"stub kill {model} v{version}: first call served after the heal (s)",
                  round(recovery_s, 2))  # fmt: skip
    report_figure(f"stub kill {model} v{version}: failed requests without retry", len(failures))
    report_figure(f"stub kill {model} v{version}: failed requests with the client's retry",
                  len(retried_failures))  # fmt: skip
    report_figure(f"stub kill {model} v{version}: slowest request meanwhile (s)",
                  round(slowest_s, 2))  # fmt: skip
    assert recovery_s < RECOVERY_BOUND_S and outage_s < RECOVERY_BOUND_S
    # Callers are told "unavailable, retry" (503 + Retry-After at the gateway), never a 500;
    # a stream already running on the dead stub ends at its own deadline.
    kinds = {type(a.error) for a in failures}
    assert kinds <= {ModelCrashedError, InferenceTimeoutError}, failures[:3]
    if model == "digits_classifier":
        _, other_failures = other_version.outage(killed)
        assert other_failures == [], "version 1 must keep serving while version 2 is healed"


def first_served_after(killed: float, call: Callable[[], object]) -> float:
    """Seconds from the kill until a request sent after it is served (one at a time)."""
    deadline = killed + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        try:
            call()
        except (ModelCrashedError, InferenceTimeoutError):
            continue
        return time.monotonic() - killed
    pytest.fail(f"nothing served within {RECOVERY_BOUND_S:.0f} s of the kill")
