"""Prometheus metrics of the gateway's caches (summed over workers like the gateway's own)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EXACT_REQUESTS = Counter(
    "mlapi_gateway_exact_cache_requests_total",
    "Predictions of cacheable models by what the exact cache did (hit, miss, bypass)",
    ("model", "outcome"),
)
EXACT_ENTRIES = Gauge(
    "mlapi_gateway_exact_cache_entries",
    "Answers in the exact cache's memory store (0 with the Redis store: see Redis)",
    multiprocess_mode="livesum",
)
EXACT_BYTES = Gauge(
    "mlapi_gateway_exact_cache_bytes",
    "Bytes of answers in the exact cache's memory store",
    multiprocess_mode="livesum",
)
SEMANTIC_REQUESTS = Counter(
    "mlapi_gateway_semantic_cache_requests_total",
    "Generation requests by what the semantic cache did (hit, miss, bypass)",
    ("model", "outcome"),
)
SEMANTIC_ENTRIES = Gauge(
    "mlapi_gateway_semantic_cache_entries",
    "Generations held by the semantic cache",
    multiprocess_mode="livesum",
)
SEMANTIC_SIMILARITY = Histogram(
    "mlapi_gateway_semantic_cache_nearest_similarity",
    "Cosine similarity of a lookup's nearest cached prompt (lookups that found any)",
    ("model",),
    buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0),
)
