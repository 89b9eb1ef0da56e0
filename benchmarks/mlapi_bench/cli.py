"""Command line of the harness.

    python -m mlapi_bench sweep              # quick default sweep (what `make bench` runs)
    python -m mlapi_bench sweep --full       # longer: more levels, longer windows, rate sweep
    python -m mlapi_bench study              # batching study (dynamic batching off/on, instances)
    python -m mlapi_bench capacity           # how fast the harness itself can drive requests
    python -m mlapi_bench locust             # locust scenarios, headless, fixed duration
    python -m mlapi_bench perf-analyzer      # perf_analyzer sweeps (--compare: the harness too)
    python -m mlapi_bench config-search      # measured search of batching/instance configs

The server under test is the one at TRITON_HTTP_PORT/TRITON_GRPC_PORT (8000/8001) when it is
ready, with the identity model loaded into it; otherwise the harness starts its own.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from mlapi_bench.config_search_runs import ConfigSearchError, SearchSettings
from mlapi_bench.measure import MeasurementError, Phases
from mlapi_bench.perf_analyzer_runs import PerfAnalyzerError
from mlapi_bench.report import results_dir
from mlapi_bench.stack import ROOT, StackError, stack
from mlapi_bench.study import FULL_VARIANTS, QUICK_VARIANTS, StudyError

log = logging.getLogger("mlapi_bench")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _words(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def _search_settings(args: argparse.Namespace) -> SearchSettings:
    from mlapi_bench.config_search import Grid

    return SearchSettings(
        models=args.models,
        grid=Grid(
            args.instances,
            args.queue_delays_us,
            tuple(tuple(int(x) for x in sizes.split(":")) for sizes in args.preferred),
        ),
        concurrency=args.concurrency,
        measurement_ms=args.measurement_ms,
        via=tuple((model, target) for model, _, target in (p.partition(":") for p in args.via)),
        budget_ms=args.budget_ms,
        apply=args.apply,
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mlapi_bench", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    host = os.environ.get("TRITON_HOST", "127.0.0.1")
    common.add_argument(
        "--http-url", default=f"{host}:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    )
    common.add_argument(
        "--grpc-url", default=f"{host}:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
    )
    common.add_argument(
        "--own-server", action="store_true", help="always start a server of our own"
    )
    common.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="results base folder (a dated subfolder is created)",
    )
    common.add_argument("--backend-dir", type=Path, default=ROOT / "build" / "bench-backends")
    common.add_argument("--warmup-s", type=float, default=None)
    common.add_argument("--window-s", type=float, default=None)
    common.add_argument("--processes", type=int, default=1, help="load-generating processes")

    sweep = sub.add_parser(
        "sweep", parents=[common], help="concurrency (and rate) sweep of the shipped configs"
    )
    sweep.add_argument(
        "--full", action="store_true", help="longer sweep: levels 1..32, 5 s windows, rate sweep"
    )
    sweep.add_argument("--models", type=_words, default=("digits", "digits_classifier"))
    sweep.add_argument("--protocols", type=_words, default=("grpc", "http"))
    sweep.add_argument("--concurrency", type=_ints, default=None)
    sweep.add_argument("--request-rates", type=_floats, default=None, help="open-loop rates, req/s")
    sweep.add_argument(
        "--image-side", type=int, default=8, help="digits image side (multiple of 8)"
    )

    study = sub.add_parser("study", parents=[common], help="dynamic batching / instance study")
    study.add_argument("--quick", action="store_true", help="3 variants instead of 8")
    study.add_argument("--models", type=_words, default=("digits_classifier", "digits"))
    study.add_argument("--concurrency", type=_ints, default=(1, 2, 4, 8, 16, 32))
    study.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    study.add_argument(
        "--via", default="", help="send the load to this model instead (e.g. digits)"
    )
    study.add_argument("--repeats", type=int, default=1, help="rounds; each point keeps its best")

    capacity = sub.add_parser(
        "capacity", parents=[common], help="the harness's own request rate (identity model)"
    )
    capacity.add_argument("--concurrency", type=int, default=64)
    capacity.add_argument("--max-processes", type=int, default=max(2, os.cpu_count() or 1))
    capacity.add_argument(
        "--wrk", action="store_true", help="also drive HTTP with wrk (if installed)"
    )

    pa = sub.add_parser(
        "perf-analyzer", parents=[common], help="perf_analyzer sweeps over HTTP and gRPC"
    )
    pa.add_argument("--models", type=_words, default=("digits", "digits_classifier"))
    pa.add_argument("--streaming-models", type=_words, default=("text_generator",))
    pa.add_argument("--protocols", type=_words, default=("grpc", "http"))
    pa.add_argument("--concurrency", type=_ints, default=(1, 4, 16))
    pa.add_argument("--measurement-ms", type=int, default=2000)
    pa.add_argument(
        "--compare", action="store_true", help="the harness on the same points, in the same run"
    )

    search = sub.add_parser(
        "config-search",
        parents=[common],
        help="measured search of instance count, batch size and queue delay per model",
    )
    search.add_argument(
        "--models", type=_words, default=("digits", "digits_classifier", "text_embedder_encoder")
    )
    search.add_argument("--instances", type=_ints, default=(1, 2))
    search.add_argument("--queue-delays-us", type=_ints, default=(0, 100, 500, 2000))
    search.add_argument(
        "--preferred", type=_words, default=("4:8",), help="preferred size sets, e.g. 4:8,8:16"
    )
    search.add_argument("--concurrency", type=_ints, default=(1, 4, 16))
    search.add_argument("--measurement-ms", type=int, default=1000)
    search.add_argument(
        "--via", type=_words, default=(), help="model:target, e.g. digits_classifier:digits"
    )
    search.add_argument("--budget-ms", type=float, default=0.0, help="p99 budget (0: per model)")
    search.add_argument(
        "--apply", action="store_true", help="write the chosen values to model_repository"
    )

    locust = sub.add_parser(
        "locust", parents=[common], help="locust scenarios, headless, fixed duration"
    )
    locust.add_argument("--users", type=int, default=16)
    locust.add_argument("--spawn-rate", type=int, default=8)
    locust.add_argument("--duration-s", type=int, default=30)
    locust.add_argument(
        "--gateway-url",
        default=os.environ.get("MLAPI_GATEWAY_URL", ""),
        help="also drive the gateway at this base URL",
    )
    locust.add_argument("--gateway-key", default=os.environ.get("MLAPI_GATEWAY_KEY", ""))
    return top


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the block runs, so cleanup (finally) still happens.

    Python's default for SIGTERM ends the process at once: a benchmark stopped by ``kill`` or
    a CI timeout would leave the identity model loaded in a user's server.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    with sigterm_as_exit():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    from mlapi_bench import runs

    out = results_dir(args.out)
    http_url, grpc_url = (None, None) if args.own_server else (args.http_url, args.grpc_url)
    exit_status = 0
    try:
        with stack(http_url, grpc_url, args.backend_dir) as server:
            if args.command == "sweep":
                full = args.full
                phases = Phases(
                    args.warmup_s if args.warmup_s is not None else (2.0 if full else 1.0),
                    args.window_s if args.window_s is not None else (5.0 if full else 2.0),
                )
                settings = runs.SweepSettings(
                    models=args.models,
                    protocols=args.protocols,
                    concurrency=args.concurrency or ((1, 2, 4, 8, 16, 32) if full else (1, 4, 16)),
                    request_rates=args.request_rates
                    if args.request_rates is not None
                    else ((50, 100, 200, 400, 800) if full else ()),
                    phases=phases,
                    processes=args.processes,
                    in_process_s=2.0 if full else 0.5,
                    image_side=args.image_side,
                )
                summary = runs.run_sweep(server, settings, out)
            elif args.command == "study":
                phases = Phases(
                    args.warmup_s if args.warmup_s is not None else 1.0,
                    args.window_s if args.window_s is not None else 3.0,
                )
                settings_s = runs.StudySettings(
                    models=args.models,
                    variants=QUICK_VARIANTS if args.quick else FULL_VARIANTS,
                    concurrency=args.concurrency,
                    protocol=args.protocol,
                    phases=phases,
                    processes=args.processes,
                    repeats=args.repeats,
                    via=args.via,
                )
                summary = runs.run_study(server, settings_s, out)
            elif args.command == "perf-analyzer":
                from mlapi_bench.perf_analyzer_runs import PerfAnalyzerSettings
                from mlapi_bench.perf_analyzer_runs import run as run_perf_analyzer

                summary = run_perf_analyzer(
                    server,
                    PerfAnalyzerSettings(
                        models=args.models,
                        streaming_models=args.streaming_models,
                        protocols=args.protocols,
                        concurrency=args.concurrency,
                        measurement_ms=args.measurement_ms,
                        compare=args.compare,
                        phases=Phases(
                            args.warmup_s if args.warmup_s is not None else 1.0,
                            args.window_s if args.window_s is not None else 3.0,
                        ),
                    ),
                    out,
                )
            elif args.command == "config-search":
                from mlapi_bench.config_search_runs import run as run_config_search

                summary = run_config_search(server, _search_settings(args), out)
            elif args.command == "locust":
                from mlapi_bench.locust_run import LocustSettings, problems, run_locust

                summary, totals, status = run_locust(
                    server.http_url,
                    LocustSettings(
                        args.users,
                        args.spawn_rate,
                        args.duration_s,
                        args.gateway_url,
                        args.gateway_key,
                    ),
                    out,
                )
                failed = problems(totals, status)
                for problem in failed:
                    log.error("locust run failed: %s", problem)
                exit_status = 1 if failed else 0
            else:
                from mlapi_bench.capacity import CapacitySettings, run_capacity

                phases = Phases(
                    args.warmup_s if args.warmup_s is not None else 1.0,
                    args.window_s if args.window_s is not None else 3.0,
                )
                summary = run_capacity(
                    server,
                    CapacitySettings(args.concurrency, args.max_processes, phases, args.wrk),
                    out,
                )
    except (StackError, StudyError, MeasurementError, PerfAnalyzerError, ConfigSearchError) as exc:
        log.error("%s", exc)
        return 2
    print(summary)
    print(f"results: {out}")
    return exit_status
