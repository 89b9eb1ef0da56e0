"""Streaming benchmark of ``text_generator``: TTFT, inter-token latency and tokens/s vs streams.

Not a test. Starts its own tritonserver on free ports (or uses ``--url``), runs N concurrent
streams through the project's client (``AsyncClient.stream`` over HTTP: SSE, ``generate_stream``)
for each N, and measures per stream the time to first token
and the gaps between tokens, plus the aggregate tokens/s. The in-process decode loop (the same
library loop over ONNX Runtime, no server) is the limit it is compared with. With
``--compare-coalescing`` it reloads text_generator with ``coalesce_decode_steps`` off (one BLS
request per stream per token, batching left to text_decoder's dynamic batcher) and runs again;
with ``--compare-prefill`` it also runs with ``prefill_model`` empty (the prompt fed one decode step
per character) and as served before text_prefill and the send queue (``queue_sends`` off too);
``--compare-instances`` with two text_generator instances. The settings take turns level by
level (``--repeats`` turns each, in rotated order), so that all see the same machine load.

    .venv/bin/python benchmarks/streaming_bench.py [--streams 1 4 16] [--max-tokens 128]
        [--prompt "The "] [--compare-prefill] [--compare-coalescing] [--repeats 3]

The TTFT target of the streaming work (p50 at one stream <= 2 decode steps + 5 ms, a decode
step being that level's per-stream ms/token) is printed under the table.

Writes benchmarks/results/streaming-<time>.json (git revision, settings, every figure) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlapi_backend.generation import LocalDecoder, LocalPrefill, collect, generate
from mlapi_backend.generation_request import GenerationLimits, parse_request
from mlapi_client import NO_RETRY, AsyncClient, Client, access
from mlapi_tools.local.triton_process import Ports, TritonServer

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = "text_generator"
log = logging.getLogger("streaming_bench")


@dataclass
class Row:
    setting: str
    streams: int
    tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    # per stream (last event - first event) / (events - 1), median over streams: unlike the
    # gap percentiles it does not fall to ~0 when a busy client reads events in bursts
    ms_per_token_p50: float


# One stream may run for minutes on a busy machine at the largest levels.
STREAM_TIMEOUT_S = 600.0


def stream_inputs(text: str, max_tokens: int, seed: int | None = None) -> dict[str, np.ndarray]:
    """text_generator's request tensors."""
    inputs = {
        "text_input": np.array([text], dtype=np.object_),
        "max_tokens": np.array([max_tokens], dtype=np.int32),
    }
    if seed is not None:
        inputs["seed"] = np.array([seed], dtype=np.int64)
    return inputs


async def one_stream(
    client: AsyncClient, inputs: dict[str, np.ndarray]
) -> tuple[float, list[float], int]:
    """(time to first token, inter-token gaps, tokens) of one stream, in seconds."""
    started = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async for response in client.stream(GENERATOR, inputs, timeout_s=STREAM_TIMEOUT_S):
        arrivals.append(time.perf_counter())
        if "completion_tokens" in response.outputs:
            tokens = int(response["completion_tokens"][0])
    if not arrivals:
        raise RuntimeError(f"{GENERATOR} answered a stream with no response")
    return arrivals[0] - started, list(np.diff(arrivals)), tokens


@dataclass
class Samples:
    """What one setting's runs at one level measured (added up over interleaved repeats)."""

    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    per_token: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0

    def row(self, setting: str, streams: int) -> Row:
        def ms(values: list[float], q: float) -> float:
            return round(float(np.percentile(values, q)) * 1000, 2)

        return Row(
            setting,
            streams,
            self.tokens,
            round(self.wall_s, 3),
            round(self.tokens / self.wall_s, 1),
            ms(self.ttfts, 50),
            ms(self.ttfts, 99),
            ms(self.gaps, 50),
            ms(self.gaps, 99),
            ms(self.per_token, 50),
        )


async def run_level(
    url: str, streams: int, max_tokens: int, rounds: int, prompt: str, samples: Samples
) -> None:
    """``rounds`` times ``streams`` concurrent streams; adds what they measured to ``samples``."""
    async with AsyncClient(url, protocol="http", retry=NO_RETRY) as client:
        await one_stream(client, stream_inputs("Warm up", 8))
        started = time.perf_counter()
        for round_index in range(rounds):
            requests = [
                stream_inputs(prompt, max_tokens, seed=round_index * streams + i)
                for i in range(streams)
            ]
            for ttft, stream_gaps, tokens in await asyncio.gather(
                *(one_stream(client, inputs) for inputs in requests)
            ):
                samples.ttfts.append(ttft)
                samples.gaps.extend(stream_gaps)
                samples.per_token.append(float(np.mean(stream_gaps)) if stream_gaps else 0.0)
                samples.tokens += tokens
        samples.wall_s += time.perf_counter() - started


def in_process_limits(
    repository: Path, max_tokens: int, batch: int, prompt: str
) -> dict[str, float]:
    """Tokens/s of the library loop over ONNX Runtime (one stream) and of raw batched steps."""
    decoder = LocalDecoder(repository / "text_decoder" / "1" / "model.onnx")
    prefill = LocalPrefill(repository / "text_prefill" / "1" / "model.onnx").prefill
    request = parse_request(
        {
            "text_input": np.array([prompt.encode()], dtype=np.object_),
            "max_tokens": np.array([max_tokens], dtype=np.int32),
            "seed": np.array([0], dtype=np.int64),
        },
        GenerationLimits(),
    )
    asyncio.run(collect(generate(request, decoder.step, decoder.state_shape)))  # warm up
    repeats = 5
    started = time.perf_counter()
    for _ in range(repeats):
        asyncio.run(collect(generate(request, decoder.step, decoder.state_shape)))
    loop_tps = repeats * max_tokens / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(repeats):
        asyncio.run(collect(generate(request, decoder.step, decoder.state_shape, prefill=prefill)))
    prefill_tps = repeats * max_tokens / (time.perf_counter() - started)
    tokens = np.ones((batch, 1), dtype=np.int64)
    states = np.zeros((batch, *decoder.state_shape), dtype=np.float32)
    steps = 500
    started = time.perf_counter()
    for _ in range(steps):
        _, states = decoder.run(tokens, states)
    batched_tps = steps * batch / (time.perf_counter() - started)
    return {
        "loop_tokens_per_s_1_stream": round(loop_tps, 1),
        "loop_with_prefill_tokens_per_s_1_stream": round(prefill_tps, 1),
        f"raw_step_tokens_per_s_batch_{batch}": round(batched_tps, 1),
    }


# setting name -> text_generator parameters it reloads with (explicit model control);
# INSTANCES sets its instance count (the shipped config's when absent)
INSTANCES = "instances"
SHIPPED = {"coalesce_decode_steps": "true", "prefill_model": "text_prefill", "queue_sends": "true"}
SETTINGS: dict[str, dict[str, str]] = {
    "shipped": SHIPPED,
    "per-stream BLS": {**SHIPPED, "coalesce_decode_steps": "false"},
    "prompt by steps": {**SHIPPED, "prefill_model": ""},
    "sends on the loop": {**SHIPPED, "queue_sends": "false"},
    # what was served before text_prefill and the send queue
    "before (steps, sends on the loop)": {**SHIPPED, "prefill_model": "", "queue_sends": "false"},
    "2 generator instances": {**SHIPPED, INSTANCES: "2"},
}


def apply_setting(url: str, setting: str, shipped_instances: int) -> None:
    """Reload text_generator with the parameters (and instance count) of ``setting``."""
    with Client(url, protocol="http", timeout_s=120) as client:
        config = client.model_config(GENERATOR)
        values = dict(SETTINGS[setting])
        config["instance_group"][0]["count"] = int(values.pop(INSTANCES, shipped_instances))
        for key, value in values.items():
            config["parameters"][key] = {"string_value": value}
        client.load_model(GENERATOR, config=config)


def instance_count(url: str) -> int:
    """text_generator's instance count as loaded (the shipped config)."""
    with Client(url, protocol="http", timeout_s=120) as client:
        return int(client.model_config(GENERATOR)["instance_group"][0]["count"])


def ttft_target(rows: list[Row], setting: str) -> str:
    """The 1-stream TTFT target (p50 <= 2 decode steps + 5 ms) for ``setting``, as a line."""
    one = next((r for r in rows if r.setting == setting and r.streams == 1), None)
    if one is None:
        return f"{setting}: no 1-stream level, no TTFT target"
    limit = 2 * one.ms_per_token_p50 + 5
    verdict = "met" if one.ttft_p50_ms <= limit else "NOT met"
    return (
        f"{setting}: TTFT p50 {one.ttft_p50_ms} ms at 1 stream vs target 2 x "
        f"{one.ms_per_token_p50} + 5 = {limit:.2f} ms: {verdict}"
    )


@contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory() as workdir:
        triton = TritonServer(
            [ROOT / "model_repository"],
            backend_dir=Path(workdir) / "backends",
            ports=Ports.free(),
            exit_timeout_s=5,
            access_key=access.ensure_key(),
        )
        with (Path(workdir) / "tritonserver.log").open("wb") as log_file:
            triton.start(log_file)
            try:
                triton.wait_ready(timeout_s=180)
                yield f"http://{triton.http_url}"
            finally:
                triton.stop()


def markdown(rows: list[Row], limits: dict[str, float]) -> str:
    lines = [
        "| setting | streams | tokens/s | x 1 stream | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms | ms/token per stream |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = list(dict.fromkeys(r.setting for r in rows))
    for row in sorted(rows, key=lambda r: (order.index(r.setting), r.streams)):
        first = min(r.streams for r in rows if r.setting == row.setting)
        base = next(r.tokens_per_s for r in rows if r.setting == row.setting and r.streams == first)
        lines.append(
            f"| {row.setting} | {row.streams} | {row.tokens_per_s:.0f} | {row.tokens_per_s / base:.1f} | "
            f"{row.ttft_p50_ms} | {row.ttft_p99_ms} | {row.itl_p50_ms} | {row.itl_p99_ms} | "
            f"{row.ms_per_token_p50} |"
        )
    lines.append("")
    lines.extend(ttft_target(rows, setting) for setting in dict.fromkeys(r.setting for r in rows))
    lines.extend(f"in-process {name}: {value:.0f}" for name, value in limits.items())
    return "\n".join(lines)


def plot(rows: list[Row], limits: dict[str, float], path: Path) -> None:
    """tokens/s against concurrent streams, one line per setting (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for setting in dict.fromkeys(r.setting for r in rows):
        mine = [r for r in rows if r.setting == setting]
        axis.plot(
            [r.streams for r in mine], [r.tokens_per_s for r in mine], marker="o", label=setting
        )
    axis.axhline(
        limits["loop_tokens_per_s_1_stream"],
        linestyle="--",
        color="grey",
        label="in-process loop, 1 stream",
    )
    axis.set(
        xlabel="concurrent streams",
        ylabel="tokens/s (all streams)",
        xscale="log",
        yscale="log",
        title="text_generator over SSE",
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running Triton (http://host:port); default: start one")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=2, help="batches of concurrent streams per level"
    )
    parser.add_argument("--prompt", default="The ", help="every stream's prompt")
    parser.add_argument(
        "--repeats", type=int, default=1, help="turns each setting takes per level (interleaved)"
    )
    parser.add_argument("--compare-coalescing", action="store_true")
    parser.add_argument(
        "--compare-prefill", action="store_true", help="also feed the prompt by decode steps"
    )
    parser.add_argument(
        "--compare-instances", action="store_true", help="also run 2 text_generator instances"
    )
    parser.add_argument(
        "--compare-sends",
        action="store_true",
        help="also send the responses on the event loop (queue_sends off)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    limits = in_process_limits(
        ROOT / "model_repository", args.max_tokens, max(args.streams), args.prompt
    )
    rows: list[Row] = []
    settings = ["shipped"]
    settings += (
        ["prompt by steps", "before (steps, sends on the loop)"] if args.compare_prefill else []
    )
    settings += ["per-stream BLS"] if args.compare_coalescing else []
    settings += ["2 generator instances"] if args.compare_instances else []
    settings += ["sends on the loop"] if args.compare_sends else []
    with server(args.url) as url:
        shipped = instance_count(url)
        for streams in args.streams:
            samples = {name: Samples() for name in settings}
            # the settings take turns, in a rotated order each repeat, so that a change in the
            # machine's load falls on all of them
            for repeat in range(args.repeats):
                turn = repeat % len(settings)
                for name in settings[turn:] + settings[:turn]:
                    if len(settings) > 1:
                        apply_setting(url, name, shipped)
                    asyncio.run(
                        run_level(
                            url, streams, args.max_tokens, args.rounds, args.prompt, samples[name]
                        )
                    )
            for name in settings:
                rows.append(samples[name].row(name, streams))
                log.info("%s", asdict(rows[-1]))
        if len(settings) > 1:
            apply_setting(url, "shipped", shipped)
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"streaming-{time.strftime('%Y%m%dT%H%M%S')}.json"
    settings_out = {k: str(v) for k, v in vars(args).items()}
    path.write_text(
        json.dumps(
            {
                "git_revision": revision,
                "settings": settings_out,
                "in_process": limits,
                "rows": [asdict(r) for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    plot(rows, limits, path.with_suffix(".png"))
    print(markdown(rows, limits))
    print(f"\nresults: {path} (and .png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
