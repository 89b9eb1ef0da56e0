"""Reload a model whose Python stub died: Triton 2.51 never restarts one on its own.

A dead stub leaves its model answering 500 "Stub process ... is not healthy" to every request
while every readiness endpoint says 200. Two detectors find it:

- the process watch: the server's stub processes in /proc, every ``stub_poll_interval_s``; a
  stub gone (or a zombie) whose model version Triton still calls READY died. Same host, or a
  sidecar in a pod with ``shareProcessNamespace: true``.
- the probe: a synthetic inference of every ready model version every ``probe_interval_s``
  (probes.py); portable, the only detector when Triton's processes are not visible.

Healing a model reloads it through the repository API with its live config changed just
enough to recreate its instances (healing.reload_config), at most ``max_reloads`` per
``window_s`` with exponential backoff, and counts each outcome in
``mlapi_supervisor_reloads_total{model,outcome}``; ``mlapi_supervisor_healing{model}`` and
``mlapi_supervisor_models_healing`` show what is being healed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

from mlapi_client import AsyncClient
from mlapi_client.errors import MlapiError
from mlapi_tools.local import stubs
from mlapi_tools.local.healing import (
    ReloadLimiter,
    StubTracker,
    Verdict,
    confirmed_dead,
    instance_count,
    reload_config,
)
from mlapi_tools.local.probes import ProbeUnsupportedError, probe
from mlapi_tools.local.supervisor_metrics import SupervisorMetrics
from mlapi_tools.local.supervisor_settings import SupervisorSettings

log = logging.getLogger("mlapi.supervisor")
_HEAL_POLL_S = 0.05  # how often a reload is checked for a serving model again
# A reload's load call returns 2-4 s after its new instances serve (digits, 2 instances, 2
# shared CPUs) while Triton finalizes the dead ones; one still pending after this is stuck.
_PREVIOUS_LOAD_WAIT_S = 15.0
# While a model is healed, a probe every 0.1 s, at most 20 unanswered (see _Probes).
_PROBE_SPACING_S = 0.1
_MAX_PROBES = 20


class _Probes:
    """Probes of a model being healed, sent every ``_PROBE_SPACING_S`` while none has answered.

    A probe that reaches the dead instance is answered "not healthy" only after about 1 s (the
    Python backend sleeps 1 s before it reads a stub's health), so waiting for each probe in
    turn would confirm a heal up to a second after the new instances serve. Probes overlap
    instead: the first one sent after the switch to the new instances answers at once.
    """

    def __init__(self, send: Callable[[], Coroutine[Any, Any, Verdict]]) -> None:
        self._send = send
        self._pending: set[asyncio.Task[Verdict]] = set()
        self._last_sent = -_PROBE_SPACING_S

    def send(self) -> None:
        """Send a probe unless one was sent less than the spacing ago or too many are out."""
        now = time.monotonic()
        if now - self._last_sent < _PROBE_SPACING_S or len(self._pending) >= _MAX_PROBES:
            return
        self._last_sent = now
        self._pending.add(asyncio.create_task(self._send()))

    def answer(self) -> Verdict | None:
        """ALIVE or ABSENT as soon as a probe says so; None while none has."""
        for task in [t for t in self._pending if t.done()]:
            self._pending.discard(task)
            answer = task.result() if task.exception() is None else Verdict.UNKNOWN
            if answer in (Verdict.ALIVE, Verdict.ABSENT):
                return answer
        return None

    async def cancel(self) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()


class Supervisor:
    """Watches one Triton server and heals its models; ``run`` until ``stop`` is set.

    ``server_pid`` returns the pid of the server to watch (the launcher knows it, across
    restarts); without it the process watch looks for the tritonserver on the URL's port.
    """

    def __init__(
        self,
        settings: SupervisorSettings,
        server_pid: Callable[[], int | None] | None = None,
        metrics: SupervisorMetrics | None = None,
        restart_server: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or SupervisorMetrics()
        self.limiter = ReloadLimiter(
            settings.max_reloads,
            settings.window_s,
            settings.initial_backoff_s,
            settings.max_backoff_s,
        )
        self._server_pid = server_pid or self._find_server
        self._found_pid: int | None = None
        self._tracker = StubTracker()
        self._watched_pid: int | None = None
        self._healing: dict[str, asyncio.Task[None]] = {}
        # The last reload of each model: Triton runs one load of a model at a time.
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._restart_server = restart_server
        self._given_up: dict[str, float] = {}
        self._client: AsyncClient | None = None
        # Set once the stubs of a running server have been seen (or when there is no process
        # watch): a stub that dies before it was ever seen is left to the probes.
        self.watching = threading.Event()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self._client = AsyncClient(settings.triton_url, timeout_s=settings.probe_timeout_s)
        detectors = ["probe"] if settings.probe_interval_s > 0 else []
        tasks = []
        if settings.probe_interval_s > 0:
            tasks.append(asyncio.create_task(self._probe_loop()))
        if settings.watch_processes:
            detectors.insert(0, "process")
            tasks.append(asyncio.create_task(self._process_loop()))
        else:
            self.watching.set()
        log.info(
            "supervising %s (detectors: %s; at most %d reloads per model per %.0f s)",
            settings.triton_url,
            ", ".join(detectors) or "none",
            settings.max_reloads,
            settings.window_s,
        )
        try:
            await stop.wait()
        finally:
            pending = [*tasks, *self._healing.values(), *self._loads.values()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await self._client.close()

    async def _process_loop(self) -> None:
        announced: bool | None = None
        while True:
            pid = self._server_pid()
            if pid is None or not stubs.server_alive(pid):
                if announced is not False and self._server_pid is self._find_server:
                    log.warning(
                        "no tritonserver process visible for %s: detecting dead stubs by "
                        "probes only (a sidecar needs shareProcessNamespace: true)",
                        self.settings.triton_url,
                    )
                announced = False
                self._found_pid = None
                await asyncio.sleep(self.settings.stub_poll_interval_s)
                continue
            announced = True
            if pid != self._watched_pid:
                self._tracker.forget()  # a new server: its first stubs are not deaths
                self._loads.clear()  # and no load of the old one blocks its models
                self._watched_pid = pid
            lost = self._tracker.update(stubs.list_stubs(pid))
            self.watching.set()
            if lost:
                await self._confirm_and_heal(lost)
            await asyncio.sleep(self.settings.stub_poll_interval_s)

    async def _confirm_and_heal(self, lost: list[tuple[str, str]]) -> None:
        try:
            index = await self._client_or_fail().list_models(retry=False)
        except MlapiError as exc:
            log.warning("stubs of %s stopped, but the index is unreadable: %s", lost, exc)
            return
        rows = [{"name": e.name, "version": e.version, "state": e.state} for e in index]
        for model, version in confirmed_dead(lost, rows):
            self._suspect(model, version, "process")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            try:
                entries = await self._client_or_fail().list_models(retry=False)
            except MlapiError:
                continue  # the server is down or restarting: nothing to heal
            for entry in entries:
                if entry.state != "READY" or entry.name in self._healing:
                    continue
                config = await self._config(entry.name)
                if config is None:
                    continue
                try:
                    answer = await probe(
                        self._client_or_fail(),
                        entry.name,
                        entry.version or "",
                        config,
                        self.settings.probe_timeout_s,
                    )
                except ProbeUnsupportedError:
                    continue
                if answer is Verdict.DEAD:
                    self._suspect(entry.name, entry.version or "", "probe")

    def load_pending(self, model: str) -> bool:
        """Whether Triton still runs this supervisor's last load of ``model``.

        A healing load returns once the dead instances are finalized (about 1 s each): until
        then they can still take requests and fail them.
        """
        load = self._loads.get(model)
        return load is not None and not load.done()

    # --- healing ----------------------------------------------------------------------------

    def _suspect(self, model: str, version: str, detector: str) -> None:
        if model in self._healing:
            return
        if self._given_up.get(model, 0.0) > time.monotonic():
            return
        self.metrics.stub_deaths.labels(model=model, detector=detector).inc()
        log.warning(
            "the stub of %s version %s died (found by the %s watch); healing it",
            model,
            version,
            detector,
        )
        task = asyncio.create_task(self._heal(model, version))
        self._healing[model] = task
        task.add_done_callback(lambda _t: self._healing.pop(model, None))

    async def _heal(self, model: str, version: str) -> None:
        with self.metrics.healing_model(model):
            outcome = await self._reload(model, version)
        self.metrics.reloads.labels(model=model, outcome=outcome).inc()

    async def _wait_for_turn(self, model: str) -> str | None:
        """Wait out the backoff and a previous load; the outcome when no reload may start now."""
        now = time.monotonic()
        delay = self.limiter.delay_s(model, now)
        if delay is None:
            until = self.limiter.blocked_until(model, now)
            self._given_up[model] = until
            log.error(
                "%s keeps crashing: %d reloads in the last %.0f s; leaving it down for "
                "%.0f s (its requests fail with 'not healthy' until then)",
                model,
                self.settings.max_reloads,
                self.settings.window_s,
                until - now,
            )
            return "rate_limited"
        if delay > 0:
            log.info("reloading %s in %.1f s (backoff)", model, delay)
            await asyncio.sleep(delay)
        previous = self._loads.get(model)
        if previous is not None and not previous.done():
            await asyncio.wait({previous}, timeout=_PREVIOUS_LOAD_WAIT_S)
            if not previous.done():
                return self._blocked(model)
        return None

    async def _reload(self, model: str, version: str) -> str:
        refused = await self._wait_for_turn(model)
        if refused is not None:
            return refused
        started = time.monotonic()
        self.limiter.record(model, started)
        config = await self._config(model)
        if config is None:
            return "failed"
        before = self._living_stubs(model, version)
        load = asyncio.create_task(self._load(model, reload_config(config)))
        self._loads[model] = load
        deadline = started + self.settings.heal_timeout_s
        instances = instance_count(config)
        probes = _Probes(lambda: self._probe(model, version, config))
        try:
            while time.monotonic() < deadline:
                if load.done():
                    if load.exception() is not None:
                        log.error("reloading %s failed: %s", model, load.exception())
                        return "failed"
                    log.info("%s reloaded in %.2f s", model, time.monotonic() - started)
                    return "reloaded"
                if self._replaced(model, version, before, instances):
                    probes.send()
                answer = probes.answer()
                if answer is Verdict.ALIVE:
                    log.info("%s version %s serves again, %.2f s after the reload began",
                             model, version, time.monotonic() - started)  # fmt: skip
                    return "reloaded"
                if answer is Verdict.ABSENT:
                    log.warning("%s was unloaded while it was being healed", model)
                    return "failed"
                await asyncio.sleep(_HEAL_POLL_S)
        finally:
            await probes.cancel()
        log.error("%s version %s still does not answer %.0f s after its reload began",
                  model, version, self.settings.heal_timeout_s)  # fmt: skip
        return "timeout"

    async def _probe(self, model: str, version: str, config: dict[str, Any]) -> Verdict:
        try:
            return await probe(
                self._client_or_fail(), model, version, config, self.settings.probe_timeout_s
            )
        except ProbeUnsupportedError:
            return Verdict.UNKNOWN  # only the load's answer can tell

    def _replaced(self, model: str, version: str, before: set[int] | None, instances: int) -> bool:
        """Whether a probe's answer can only come from the new instances.

        With one instance per version, any answer can. With several, a probe may reach a
        sibling that survived the crash, so the new stubs must all be up first; without a
        view of the processes, only the load's own answer tells.
        """
        if instances <= 1:
            return True
        if before is None:
            return False
        now = self._living_stubs(model, version)
        return now is not None and len(now - before) >= instances

    def _living_stubs(self, model: str, version: str) -> set[int] | None:
        pid = self._watched_pid if self.settings.watch_processes else None
        if pid is None:
            return None
        return {s.pid for s in stubs.list_stubs(pid) if (s.model, s.version) == (model, version)}

    def _blocked(self, model: str) -> str:
        # Seen on 2.51: requests that were inside a stub when it died are never answered, so
        # the reload that replaced it never returns (the new instances serve meanwhile), and
        # Triton runs the next load of the same model only after it: a second crash of the
        # model cannot be healed by a reload. Only a server restart clears them.
        log.error(
            "%s died again, but its previous reload still waits for requests that were inside "
            "the dead stub (Triton never answers them): only a tritonserver restart heals it%s",
            model,
            "; asking the launcher for one" if self._restart_server else "",
        )
        if self._restart_server is not None:
            self._restart_server(model)
        return "blocked"

    async def _load(self, model: str, config: dict[str, Any]) -> None:
        # Triton answers a load only once the replaced instances are gone, and an instance
        # with requests stuck in its dead stub goes only when they end (never, for requests
        # that were inside it when it died): the new instances serve long before, so healing
        # watches the model, not this call.
        await self._client_or_fail().load_model(
            model, config, timeout_s=self.settings.load_timeout_s
        )

    async def _config(self, model: str) -> dict[str, Any] | None:
        """The model's live config (Triton's JSON form), or None when it cannot be read.

        Read each time: a reload or a traffic change may have replaced it.
        """
        try:
            return await self._client_or_fail().model_config(model, retry=False)
        except MlapiError as exc:
            log.warning("cannot read the config of %s: %s", model, exc)
            return None

    # --- plumbing ---------------------------------------------------------------------------

    def _client_or_fail(self) -> AsyncClient:
        if self._client is None:
            raise RuntimeError("the supervisor is not running")
        return self._client

    def _find_server(self) -> int | None:
        if self._found_pid is not None and stubs.server_alive(self._found_pid):
            return self._found_pid
        port = urlsplit(self.settings.triton_url).port
        self._found_pid = stubs.find_server_pid(port)
        return self._found_pid


class SupervisorThread:
    """A supervisor on its own thread and event loop, for the synchronous launcher."""

    def __init__(
        self,
        settings: SupervisorSettings,
        server_pid: Callable[[], int | None] | None = None,
        restart_server: Callable[[str], None] | None = None,
    ) -> None:
        self.supervisor = Supervisor(settings, server_pid, restart_server=restart_server)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="mlapi-supervisor", daemon=True)

    def start(self) -> SupervisorThread:
        self.supervisor.metrics.serve(self.supervisor.settings)
        self._thread.start()
        self._started.wait(timeout=10)
        self.supervisor.watching.wait(timeout=10)
        return self

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await self.supervisor.run(self._stop)

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the supervisor stopped on an error")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=timeout_s)
        self.supervisor.metrics.close()
