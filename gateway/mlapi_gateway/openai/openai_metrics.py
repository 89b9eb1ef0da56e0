"""Metrics of the OpenAI-compatible routes, in the gateway's registry (its /metrics).

Requests and their latency are already in ``mlapi_gateway_requests_total`` (route label
``/openai/v1/...``); these add what is particular to generation: tokens (tokens/s is the
rate of the completion tokens), time to first token, finished generations by reason.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TOKENS = Counter(
    "mlapi_gateway_openai_tokens_total",
    "Tokens of the OpenAI-compatible routes by kind (prompt, completion, embedded)",
    ("route", "model", "kind"),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "mlapi_gateway_openai_time_to_first_token_seconds",
    "Streamed completions: time from the request to its first token sent",
    ("route", "model"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FINISHED = Counter(
    "mlapi_gateway_openai_completions_total",
    "Finished completions and chat completions by finish reason",
    ("route", "model", "finish_reason"),
)


def count_usage(route: str, model: str, prompt: int, completion: int, finish_reason: str) -> None:
    """Record one finished generation."""
    TOKENS.labels(route, model, "prompt").inc(prompt)
    TOKENS.labels(route, model, "completion").inc(completion)
    FINISHED.labels(route, model, finish_reason).inc()
