"""The supervisor's pure decisions: dead-stub detection, the crash-loop limiter, probe verdicts,
the reload config, probe inputs, settings and the /proc reader (on a fake /proc)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlapi_client.errors import (
    ConnectionFailedError,
    InferenceTimeoutError,
    InvalidInputError,
    ModelCrashedError,
    ModelNotFoundError,
    ModelUnavailableError,
    ServerError,
    ServerOverloadedError,
)
from mlapi_tools.local import stubs
from mlapi_tools.local.healing import (
    ReloadLimiter,
    StubTracker,
    Verdict,
    confirmed_dead,
    instance_count,
    reload_config,
    verdict,
)
from mlapi_tools.local.probes import ProbeUnsupportedError, is_decoupled, probe_inputs
from mlapi_tools.local.stubs import StubProcess
from mlapi_tools.local.supervisor import _Probes
from mlapi_tools.local.supervisor_settings import SupervisorSettings


def stub(pid: int, model: str, version: str = "1", instance: str | None = None) -> StubProcess:
    return StubProcess(pid, model, version, instance or f"{model}_0_0")


# --- StubTracker -----------------------------------------------------------------------------


def test_a_stub_that_disappears_is_reported_once() -> None:
    tracker = StubTracker()
    assert tracker.update([stub(10, "digits"), stub(11, "digits_classifier", "2")]) == []
    assert tracker.update([stub(10, "digits")]) == [("digits_classifier", "2")]
    assert tracker.update([stub(10, "digits")]) == []


def test_a_replaced_stub_is_not_a_death() -> None:
    tracker = StubTracker()
    tracker.update([stub(10, "digits")])
    # Triton's reload starts the new stub before the old one exits.
    tracker.update([stub(10, "digits"), stub(20, "digits")])
    assert tracker.update([stub(20, "digits")]) == []


def test_versions_sharing_an_instance_name_are_told_apart() -> None:
    tracker = StubTracker()
    tracker.update([stub(1, "c", "1", "c_0_0"), stub(2, "c", "2", "c_0_0")])
    assert tracker.update([stub(1, "c", "1", "c_0_0")]) == [("c", "2")]


def test_forget_treats_the_next_stubs_as_new() -> None:
    tracker = StubTracker()
    tracker.update([stub(10, "digits")])
    tracker.forget()
    assert tracker.update([stub(30, "digits")]) == []


def test_only_ready_versions_are_confirmed_dead() -> None:
    index = [
        {"name": "digits", "version": "1", "state": "READY"},
        {"name": "c", "version": "2", "state": "UNLOADING"},
        {"name": "c", "version": "1", "state": "READY"},
    ]
    assert confirmed_dead([("digits", "1"), ("c", "2"), ("gone", "1")], index) == [("digits", "1")]


# --- ReloadLimiter ---------------------------------------------------------------------------


def test_the_first_reload_is_immediate_then_backoff_doubles_up_to_the_cap() -> None:
    limiter = ReloadLimiter(max_reloads=5, window_s=100, initial_backoff_s=1, max_backoff_s=3)
    assert limiter.delay_s("m", 0.0) == 0.0
    limiter.record("m", 0.0)
    assert limiter.delay_s("m", 0.0) == 1.0
    assert limiter.delay_s("m", 0.4) == pytest.approx(0.6)
    limiter.record("m", 1.0)
    assert limiter.delay_s("m", 1.0) == 2.0
    limiter.record("m", 3.0)
    assert limiter.delay_s("m", 3.0) == 3.0  # 4 s capped at 3
    assert limiter.delay_s("other", 3.0) == 0.0  # per model


def test_past_the_limit_a_model_is_not_reloaded_until_the_window_passes() -> None:
    limiter = ReloadLimiter(max_reloads=2, window_s=60, initial_backoff_s=0, max_backoff_s=0)
    limiter.record("m", 0.0)
    limiter.record("m", 5.0)
    assert limiter.delay_s("m", 10.0) is None
    assert limiter.blocked_until("m", 10.0) == 60.0
    assert limiter.delay_s("m", 59.9) is None
    assert limiter.delay_s("m", 60.0) == 0.0  # the first reload left the window
    assert limiter.blocked_until("m", 60.0) == 60.0


# --- verdicts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, Verdict.ALIVE),
        (InvalidInputError("1x1 image"), Verdict.ALIVE),
        (ServerError("the model raised"), Verdict.ALIVE),
        (ServerOverloadedError("queue full"), Verdict.UNKNOWN),
        (ModelCrashedError("Stub process 'm_0_0' is not healthy."), Verdict.DEAD),
        (ModelNotFoundError("unknown"), Verdict.ABSENT),
        (ModelUnavailableError("not ready"), Verdict.ABSENT),
        (ConnectionFailedError("refused"), Verdict.UNKNOWN),
        (InferenceTimeoutError("slow"), Verdict.UNKNOWN),
        (RuntimeError("bug"), Verdict.UNKNOWN),
    ],
)
def test_probe_verdicts(error: BaseException | None, expected: Verdict) -> None:
    assert verdict(error) is expected


# --- reload config ---------------------------------------------------------------------------


def test_reload_config_toggles_an_inert_rate_limiter_and_leaves_the_rest() -> None:
    config = {
        "name": "digits",
        "parameters": {"traffic_policy": {"string_value": '{"weights": {"1": 100}}'}},
        "instance_group": [{"name": "digits_0", "kind": "KIND_CPU", "count": 1}],
    }
    first = reload_config(config)
    assert first["instance_group"][0]["rate_limiter"] == {"priority": 0}
    assert "rate_limiter" not in config["instance_group"][0]  # the input is not changed
    assert first["parameters"] == config["parameters"]
    # Triton reports the limiter back filled in; the next reload removes it.
    first["instance_group"][0]["rate_limiter"] = {"resources": [], "priority": 0}
    second = reload_config(first)
    assert "rate_limiter" not in second["instance_group"][0]
    assert second == config


def test_instance_count_tells_whether_a_probe_can_judge_a_reload() -> None:
    assert instance_count({}) == 1
    assert instance_count({"instance_group": [{"count": 1}]}) == 1
    assert instance_count({"instance_group": [{"count": 2}, {"kind": "KIND_CPU"}]}) == 3


# --- probe inputs ----------------------------------------------------------------------------


def test_probe_inputs_follow_the_config() -> None:
    config = {
        "name": "digits",
        "max_batch_size": 64,
        "input": [
            {"name": "image", "data_type": "TYPE_UINT8", "dims": ["-1", "-1"]},
            {"name": "top_k", "data_type": "TYPE_INT32", "dims": ["1"], "optional": True},
        ],
    }
    inputs = probe_inputs(config)
    assert list(inputs) == ["image"]
    assert inputs["image"].shape == (1, 8, 8)
    assert inputs["image"].dtype == np.uint8
    generator = {
        "name": "text_generator",
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": True},
        "input": [{"name": "text_input", "data_type": "TYPE_STRING", "dims": ["1"]}],
    }
    assert probe_inputs(generator)["text_input"].tolist() == [b""]
    assert is_decoupled(generator)
    assert not is_decoupled(config)


def test_probe_inputs_refuse_a_type_they_cannot_make() -> None:
    config = {"name": "m", "input": [{"name": "x", "data_type": "TYPE_BF16", "dims": ["2"]}]}
    with pytest.raises(ProbeUnsupportedError, match="'x'"):
        probe_inputs(config)


# --- settings --------------------------------------------------------------------------------


def test_settings_come_from_the_environment_then_overrides() -> None:
    env = {
        "TRITON_GRPC_PORT": "9100",
        "MLAPI_SUPERVISOR_METRICS_PORT": "9200",
        "MLAPI_SUPERVISOR_WATCH_PROCESSES": "false",
        "MLAPI_SUPERVISOR_MAX_RELOADS": "7",
        "MLAPI_SUPERVISOR_PROBE_INTERVAL_S": "0.5",
    }
    settings = SupervisorSettings.from_env(env, max_reloads=2)
    assert settings.triton_url == "grpc://127.0.0.1:9100"
    assert settings.metrics_port == 9200
    assert settings.watch_processes is False
    assert settings.probe_interval_s == 0.5
    assert settings.max_reloads == 2
    assert SupervisorSettings.from_env({"MLAPI_SUPERVISOR_METRICS_PORT": ""}).metrics_port is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_RELOADS", "many", "MLAPI_SUPERVISOR_MAX_RELOADS='many': expected int"),
        ("WATCH_PROCESSES", "maybe", "MLAPI_SUPERVISOR_WATCH_PROCESSES='maybe': expected bool"),
        ("METRICS_PORT", "x", "MLAPI_SUPERVISOR_METRICS_PORT='x': expected int or empty"),
        ("WINDOW_S", "0", "window_s must be positive"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        SupervisorSettings.from_env({f"MLAPI_SUPERVISOR_{name}": value})
    assert str(refused.value) == message


# --- /proc -----------------------------------------------------------------------------------


def fake_process(proc: Path, pid: int, ppid: int, args: list[str], state: str = "S") -> None:
    entry = proc / str(pid)
    entry.mkdir()
    (entry / "stat").write_text(f"{pid} (odd) name) {state} {ppid} 1 1\n")
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")


def stub_args(model_file: str, instance: str) -> list[str]:
    return ["/b/python/triton_python_backend_stub", model_file, "shm", "1", "1", "100",
            "/b/python", "336", instance, "DEFAULT"]  # fmt: skip


def test_the_proc_reader_finds_the_servers_living_stubs(tmp_path: Path) -> None:
    fake_process(tmp_path, 100, 1, ["/x/bin/tritonserver", "--http-port=8123"])
    fake_process(tmp_path, 101, 100, stub_args("/r/digits/1/model.py", "digits_0_0"))
    fake_process(tmp_path, 102, 100, stub_args("/r/c/2/model.onnx", "c_0_0"))
    fake_process(tmp_path, 103, 100, [], state="Z")  # a killed stub, not yet reaped
    fake_process(tmp_path, 104, 999, stub_args("/r/other/1/model.py", "other_0_0"))
    assert stubs.find_server_pid(8123, tmp_path) == 100
    assert stubs.find_server_pid(8124, tmp_path) is None
    fake_process(tmp_path, 200, 1, ["/x/bin/tritonserver", "--http-port=1", "--grpc-port=8125"])
    assert stubs.find_server_pid(8125, tmp_path) == 200
    assert sorted(stubs.list_stubs(100, tmp_path), key=lambda s: s.pid) == [
        StubProcess(101, "digits", "1", "digits_0_0"),
        StubProcess(102, "c", "2", "c_0_0"),
    ]
    assert stubs.server_alive(100, tmp_path)
    assert not stubs.server_alive(103, tmp_path)
    assert not stubs.server_alive(555, tmp_path)


# --- probes while healing --------------------------------------------------------------------


def test_overlapping_probes_answer_as_soon_as_a_new_instance_does() -> None:
    """Probes sent while a dead instance holds earlier ones: the first live answer wins."""
    switched = asyncio.Event()  # the new instances serve from here on
    sent: list[bool] = []

    async def send() -> Verdict:
        if switched.is_set():
            sent.append(True)
            return Verdict.ALIVE
        sent.append(False)
        await asyncio.Event().wait()  # reached a dead instance: answered much later
        return Verdict.DEAD

    async def heal() -> tuple[Verdict | None, int]:
        probes = _Probes(send)
        probes.send()
        await asyncio.sleep(0)
        assert probes.answer() is None  # the first probe still waits on the dead instance
        switched.set()
        answer = None
        while answer is None:
            probes.send()  # spaced: at most one per _PROBE_SPACING_S
            await asyncio.sleep(0.01)
            answer = probes.answer()
        await probes.cancel()
        return answer, len(sent)

    answer, count = asyncio.run(asyncio.wait_for(heal(), timeout=30))
    assert answer is Verdict.ALIVE
    assert count == 2  # the stuck probe and the one that answered
