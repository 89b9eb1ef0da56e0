"""The text generator's metrics: streams, tokens, time to first token, gaps, length.

Each stream keeps a StreamTiming and its summary is observed once, when the stream ends: a
Python-backend metric update is a message to the server process, too costly to send per
token. The inter-token figure is therefore each stream's mean gap, not every gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlapi_backend.generation import Chunk, FinishReason

# Histogram buckets (seconds, tokens) of the generator's metrics: a 64-token stream of this
# project's character model takes ~2-20 ms per token on 2 shared CPUs.
TTFT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INTER_TOKEN_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LENGTH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class StreamSummary:
    """What one finished stream took."""

    time_to_first_token_s: float | None  # None: the stream sent nothing
    inter_token_s: float | None  # mean gap; None under two tokens
    completion_tokens: int


@dataclass
class StreamTiming:
    """The times a stream's responses left, from when the model took the request."""

    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    first: float | None = None
    last: float | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def sent(self) -> None:
        """Note a response (carrying one or more tokens) sent now."""
        now = self.clock()
        if self.first is None:
            self.first = now
        self.last = now

    def summary(self, completion_tokens: int) -> StreamSummary:
        """Summarise the stream once it has ended with ``completion_tokens`` generated."""
        ttft = None if self.first is None else self.first - self.started
        gap = None
        if self.first is not None and self.last is not None and completion_tokens >= 2:
            gap = (self.last - self.first) / (completion_tokens - 1)
        return StreamSummary(ttft, gap, completion_tokens)


class GeneratorMetrics:
    """The generator's metric families on Triton's metrics port.

    ``pb_utils`` is passed in: this library never imports triton_python_backend_utils.
    """

    def __init__(self, pb_utils: Any) -> None:
        family = pb_utils.MetricFamily
        counter, histogram, gauge = family.COUNTER, family.HISTOGRAM, family.GAUGE
        specs = {
            "streams": ("mlapi_text_generator_streams_total",
                        "Finished text_generator streams by finish reason", counter),
            "tokens": ("mlapi_text_generator_tokens_total",
                       "Tokens processed by text_generator (prompt or completion)", counter),
            "ttft": ("mlapi_text_generator_time_to_first_token_seconds",
                     "From the model taking a stream to its first response", histogram),
            "gap": ("mlapi_text_generator_inter_token_seconds",
                    "Mean time between a stream's tokens (one observation per stream)", histogram),
            "length": ("mlapi_text_generator_completion_tokens",
                       "Tokens generated per finished stream", histogram),
            "active": ("mlapi_text_generator_active_streams", "Streams being generated", gauge),
        }  # fmt: skip
        # The families must outlive their metrics.
        self.families = {
            key: family(name=name, description=text, kind=kind)
            for key, (name, text, kind) in specs.items()
        }
        streams, tokens = self.families["streams"], self.families["tokens"]
        self.finished = {r: streams.Metric(labels={"finish_reason": r.value}) for r in FinishReason}
        self.tokens = {k: tokens.Metric(labels={"kind": k}) for k in ("prompt", "completion")}
        self.ttft = self.families["ttft"].Metric(labels={}, buckets=list(TTFT_BUCKETS_S))
        self.gap = self.families["gap"].Metric(labels={}, buckets=list(INTER_TOKEN_BUCKETS_S))
        lengths = [float(b) for b in LENGTH_BUCKETS]
        self.length = self.families["length"].Metric(labels={}, buckets=lengths)
        self.active = self.families["active"].Metric(labels={})

    def stream_started(self) -> StreamTiming:
        """Count a stream in flight; its timing starts now."""
        self.active.increment(1)
        return StreamTiming()

    def stream_ended(self) -> None:
        """Count the stream out of flight (finished, failed or cancelled)."""
        self.active.increment(-1)

    def stream_finished(self, chunk: Chunk, timing: StreamTiming) -> None:
        """Record a stream's last chunk: finish reason, token counts and its timing."""
        assert chunk.finish_reason is not None
        self.finished[chunk.finish_reason].increment(1)
        self.tokens["prompt"].increment(chunk.prompt_tokens)
        self.tokens["completion"].increment(chunk.completion_tokens)
        summary = timing.summary(chunk.completion_tokens)
        self.length.observe(float(summary.completion_tokens))
        if summary.time_to_first_token_s is not None:
            self.ttft.observe(summary.time_to_first_token_s)
        if summary.inter_token_s is not None:
            self.gap.observe(summary.inter_token_s)
