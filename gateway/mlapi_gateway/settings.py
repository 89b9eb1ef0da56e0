"""Every gateway setting, read once from the environment (prefix ``MLAPI_GATEWAY_``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Plan(BaseModel):
    """A rate-limit plan: a token bucket refilled at ``rate_per_s`` holding at most ``burst``."""

    rate_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)


DEFAULT_PLANS = {
    "default": Plan(rate_per_s=100.0, burst=200),
    "free": Plan(rate_per_s=5.0, burst=10),
    # Open mode and benchmarks: effectively unlimited, but still going through the limiter.
    "unlimited": Plan(rate_per_s=1e9, burst=1_000_000_000),
}


class GatewaySettings(BaseSettings):
    """Configuration of one gateway process. Nested values (plans, lists) are JSON in the env."""

    model_config = SettingsConfigDict(env_prefix="MLAPI_GATEWAY_", extra="ignore")

    # Triton: HTTP (keep-alive connections) for inference, the repository and traffic-policy
    # reads; one gRPC channel per worker for streams.
    # Default: localhost on TRITON_GRPC_PORT / TRITON_HTTP_PORT (the project's port variables).
    triton_grpc_url: str = Field(
        default_factory=lambda: f"localhost:{os.environ.get('TRITON_GRPC_PORT', '8001')}"
    )
    triton_http_url: str = Field(
        default_factory=lambda: f"localhost:{os.environ.get('TRITON_HTTP_PORT', '8000')}"
    )
    # Protocol of the unary calls (predict, jobs, discovery). http answers sooner (lean
    # keep-alive connections); grpc propagates the deadline, so Triton drops a request whose
    # caller has already had its 504 (HTTP has no server-side cancellation). Streams: gRPC.
    triton_infer_protocol: Literal["http", "grpc"] = "http"
    # Models the gateway exposes; others on the server stay internal (e.g. the classifiers).
    models: list[str] = ["digits", "text_generator", "text_embedder"]
    # Concurrent predictions of these models share Triton requests while Triton is busy
    # (mlapi_client.coalesce): a call goes at once while fewer than coalesce_max_in_flight
    # requests of its kind are out, else with the others that wait, up to coalesce_max_rows
    # rows a request. Empty: every call alone. Only models whose rows are independent; inputs
    # that a model reads once per request (digits' top_k) must be equal for calls to share.
    coalesce_models: list[str] = ["digits"]
    coalesce_max_rows: int = Field(default=8, ge=1)
    coalesce_max_in_flight: int = Field(default=2, ge=1)
    coalesce_uniform_inputs: list[str] = ["top_k"]

    # Authentication: "keys" (Bearer API keys) or "open" (no auth; loudly logged at start).
    auth_mode: Literal["keys", "open"] = "keys"
    keys_file: Path = Path("build/gateway/keys.json")
    # Extra keys in the keys-file format (JSON), e.g. injected from a secret store.
    keys_json: str | None = None
    keys_reload_interval_s: float = Field(default=1.0, ge=0)

    # Rate limits per key plan; Redis (``redis://host:port/0``) shares the buckets across replicas.
    plans: dict[str, Plan] = Field(default_factory=lambda: dict(DEFAULT_PLANS))
    open_mode_plan: str = "default"
    redis_url: str | None = None

    # Requests. A body over max_body_bytes is refused (413) when its Content-Length says so or
    # once that many bytes have arrived; one still arriving after body_timeout_s is 408.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    body_timeout_s: float = Field(default=10.0, gt=0)
    # Overload: requests to /v1 routes one worker serves at once (more: 503 + Retry-After),
    # and open streams per caller (more: 429 + Retry-After). /healthz, /readyz, /metrics are
    # never shed.
    max_in_flight: int = Field(default=128, ge=1)
    max_streams_per_key: int = Field(default=8, ge=1)
    # Images (digits): sides and pixels are checked from the header before anything is
    # decoded, against the model's own limits (read from its config). These may only lower
    # them (unset: the model's); decoding runs in image_decode_threads threads.
    image_max_side_px: int | None = Field(default=None, ge=8)
    image_max_pixels: int | None = Field(default=None, ge=64)
    image_decode_threads: int = Field(default=2, ge=1)
    # Readiness (/readyz): how long Triton and Redis each get to answer.
    ready_timeout_s: float = Field(default=2.0, gt=0)
    deadline_s: float = Field(default=10.0, ge=5.0, le=30.0)
    # Bounds of the per-request override (``?timeout_s=``).
    deadline_min_s: float = Field(default=0.1, gt=0)
    deadline_max_s: float = Field(default=30.0, gt=0)
    retry_after_s: int = Field(default=5, ge=1)
    metadata_cache_s: float = Field(default=5.0, ge=0)
    # One JSON line per request on the logger ``mlapi.access`` (stdout under
    # ``python -m mlapi_gateway``); false turns it off (request ids stay).
    access_log: bool = True

    # Async jobs: SQLite (one host; every process opening the file shares the jobs) or Redis
    # (``redis_url``; replicas on several hosts).
    jobs_store: Literal["sqlite", "redis"] = "sqlite"
    jobs_db: Path = Path("build/gateway/jobs.sqlite3")
    jobs_max_inputs: int = Field(default=256, ge=1)
    jobs_concurrency: int = Field(default=2, ge=1)
    jobs_item_timeout_s: float = Field(default=30.0, gt=0)
    jobs_lease_s: float = Field(default=15.0, gt=0)
    jobs_poll_s: float = Field(default=0.2, gt=0)
    jobs_result_ttl_s: float = Field(default=3600.0, gt=0)
    # An input that finds Triton unavailable (connection refused, 503) is retried with
    # exponential backoff and jitter for up to jobs_retry_budget_s; then the job goes back to
    # the queue with its finished inputs kept. Triton restarting with the full repository took
    # ~16 s (measured on a 2-CPU host), so the default leaves ample margin. After
    # jobs_max_attempts claims (crashes and re-queues together) the rest of the job fails with
    # 503 problems.
    jobs_retry_budget_s: float = Field(default=120.0, gt=0)
    jobs_retry_backoff_s: float = Field(default=0.5, gt=0)
    jobs_retry_backoff_max_s: float = Field(default=10.0, gt=0)
    jobs_max_attempts: int = Field(default=5, ge=1)

    # Webhooks.
    # The HMAC key of the signatures. No default: without it, a job asking for a webhook is
    # refused (400) and jobs without one still run.
    webhook_secret: str | None = Field(default=None, min_length=16)
    # Networks (CIDR) allowed besides public addresses, e.g. ["10.2.0.0/16"] for receivers
    # inside the cluster.
    webhook_allow: list[str] = []
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_backoff_s: float = Field(default=1.0, ge=0)
    webhook_max_redirects: int = Field(default=3, ge=0)

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """Read an empty value (as a chart leaves an unset secret) as no secret."""
        return None if value == "" else value

    # Server-sent events.
    sse_heartbeat_s: float = Field(default=10.0, gt=0)
    sse_buffer_events: int = Field(default=64, ge=1)
    sse_slow_client_s: float = Field(default=30.0, gt=0)
    sse_max_duration_s: float = Field(default=300.0, gt=0)
    # A stream whose model sends nothing for this long (e.g. its Python stub died) ends with an
    # error event (status 503) instead of heartbeats until sse_max_duration_s.
    sse_idle_timeout_s: float = Field(default=15.0, gt=0)

    # OpenAI-compatible routes (/openai/v1, docs/openai.md): the exposed models each route
    # serves, and per-minute budgets per key plan on top of the plan's own rate limit (a plan
    # not named here has no such budget): requests, and tokens (prompt plus max_tokens taken
    # when a request starts, the unused part given back when it ends).
    openai_generation_models: list[str] = ["text_generator"]
    openai_embedding_models: list[str] = ["text_embedder"]
    openai_requests_per_min: dict[str, int] = {}
    openai_tokens_per_min: dict[str, int] = {}

    # Browser clients. CORS: origins allowed to call the gateway from a page (exact
    # "scheme://host[:port]"; none by default: every cross-origin request is refused), whether
    # their requests may carry credentials, and the answer headers their scripts may read.
    cors_allow_origins: list[str] = []
    cors_allow_credentials: bool = False
    cors_expose_headers: list[str] = [
        "X-Model-Version", "Retry-After", "X-Request-ID", "X-Cache", "X-Cost-USD",
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
    ]  # fmt: skip
    cors_max_age_s: int = Field(default=600, ge=0)
    # Stream tokens (GET .../stream?token=, for EventSource): how long a minted token stays
    # usable. Kept in Redis when redis_url is set, else in the minting worker's memory only.
    stream_token_ttl_s: float = Field(default=30.0, gt=0, le=300)

    # Exact cache of predictions (docs/caching.md): the models whose answers are a function of
    # the request (empty: off; e.g. ["digits", "text_embedder"]), the store ("auto": Redis when
    # redis_url is set, shared by the replicas; else this worker's memory), its bounds and the
    # time an answer is kept.
    exact_cache_models: list[str] = []
    exact_cache_store: Literal["auto", "memory", "redis"] = "auto"
    exact_cache_max_entries: int = Field(default=10_000, ge=1)
    exact_cache_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    exact_cache_max_entry_bytes: int = Field(default=1024 * 1024, ge=1024)
    exact_cache_ttl_s: float = Field(default=300.0, gt=0)
    # Semantic cache of deterministic generations (temperature 0 or a seed): the models (empty:
    # off; e.g. ["text_generator"]), the embedding model, the cosine a hit needs (chosen on the labelled prompt pairs:
    # F1 at most, false hits <= 1 % at the 95 % upper bound; docs/caching.md), the bounds
    # (generations kept per worker, events per generation) and the time one is kept.
    semantic_cache_models: list[str] = []
    semantic_cache_embedder: str = "text_embedder"
    semantic_cache_threshold: float = Field(default=0.9515, gt=0, le=1)
    semantic_cache_max_entries: int = Field(default=2_000, ge=1)
    semantic_cache_max_events: int = Field(default=1_100, ge=1)
    semantic_cache_ttl_s: float = Field(default=600.0, gt=0)

    @field_validator("webhook_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if not self.deadline_min_s <= self.deadline_s <= self.deadline_max_s:
            raise ValueError("deadline_s must lie within [deadline_min_s, deadline_max_s]")
        if self.jobs_store == "redis" and not self.redis_url:
            raise ValueError("jobs_store 'redis' needs redis_url")
        if self.exact_cache_store == "redis" and not self.redis_url:
            raise ValueError("exact_cache_store 'redis' needs redis_url")
        if self.open_mode_plan not in self.plans:
            raise ValueError(f"open_mode_plan {self.open_mode_plan!r} is not in plans")
        return self
