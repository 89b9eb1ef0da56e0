"""The Grafana dashboard of triton-mlapi, generated from the panel list below.

``python -m mlapi_tools.dashboard`` writes it to the chart (``files/grafana/triton-mlapi.json``,
shipped as a ConfigMap for Grafana's dashboard sidecar); ``--check`` fails when that file is not
what this module generates. Every expression is tested against a real Prometheus scraping a real
tritonserver and gateway (tests/deploy/test_monitoring_prometheus.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_FILE = (
    Path(__file__).resolve().parents[2]
    / "deploy"
    / "helm"
    / "triton-mlapi"
    / "files"
    / "grafana"
    / "triton-mlapi.json"
)
RATE = "$__rate_interval"  # Grafana's rate window: at least four scrape intervals
UID = "triton-mlapi"


@dataclass(frozen=True)
class Panel:
    """One time-series panel: its queries as (PromQL, legend) pairs."""

    title: str
    description: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    # True: the metric exists only once its event happened (e.g. a heal); an empty answer is
    # then no data, not a broken query.
    on_event: bool = False


def _quantiles(metric: str, by: str, selector: str = "") -> tuple[tuple[str, str], ...]:
    return tuple(
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}{selector}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    )


ROWS: tuple[tuple[str, tuple[Panel, ...]], ...] = (
    (
        "Gateway",
        (
            Panel(
                "Requests by model and version",
                "Answers of the model routes per second, by model and served version.",
                "reqps",
                (
                    (
                        "sum by (model, version) (rate(mlapi_gateway_requests_total"
                        f'{{route=~"/v1/models/.*"}}[{RATE}]))',
                        "{{model}} v{{version}}",
                    ),
                ),
            ),
            Panel(
                "Errors by type",
                "Error answers per second by kind (validation, auth, rate_limit, timeout, "
                "unavailable, model_error, cancelled, ...) and status class.",
                "reqps",
                (
                    (
                        f"sum by (type, status_class) (rate(mlapi_gateway_errors_total[{RATE}]))",
                        "{{type}} {{status_class}}",
                    ),
                ),
                on_event=True,
            ),
            Panel(
                "Predict latency by version",
                "Served predictions, request to response start: p50, p95 and p99.",
                "s",
                _quantiles("mlapi_gateway_predict_duration_seconds_bucket", "version"),
            ),
            Panel(
                "Predict p99 by input size",
                "p99 of served predictions by the request body's size bucket.",
                "s",
                (
                    (
                        "histogram_quantile(0.99, sum by (le, input_size) "
                        f"(rate(mlapi_gateway_predict_duration_seconds_bucket[{RATE}])))",
                        "{{input_size}}",
                    ),
                ),
            ),
            Panel(
                "5xx share and requests in flight",
                "Share of API answers that were 5xx (recording rule, 5 min) and average "
                "requests in flight per gateway pod (Little's law, 1 min).",
                "short",
                (
                    ("mlapi:gateway_5xx_ratio:rate5m", "5xx share"),
                    ("mlapi:gateway_in_flight:rate1m", "in flight {{pod}}"),
                ),
            ),
        ),
    ),
    (
        "Triton",
        (
            Panel(
                "Inferences by model and version",
                "Successful inference requests per second inside Triton (direct callers too).",
                "reqps",
                (
                    (
                        f"sum by (model, version) (rate(nv_inference_request_success[{RATE}]))",
                        "{{model}} v{{version}}",
                    ),
                ),
            ),
            Panel(
                "Failed inferences",
                "Failed inference requests per second inside Triton.",
                "reqps",
                (
                    (
                        f"sum by (model, version) (rate(nv_inference_request_failure[{RATE}]))",
                        "{{model}} v{{version}}",
                    ),
                ),
            ),
            Panel(
                "Queue vs compute per request",
                "Microseconds a successful request waits in the model's queue and computes.",
                "µs",
                tuple(
                    (
                        f"sum by (model) (rate(nv_inference_{counter}_duration_us[{RATE}])) / "
                        "clamp_min(sum by (model) "
                        f"(rate(nv_inference_request_success[{RATE}])), 1e-9)",
                        f"{name} {{{{model}}}}",
                    )
                    for counter, name in (("queue", "queue"), ("compute_infer", "compute"))
                ),
            ),
            Panel(
                "Batch size",
                "Inferences per model execution: what dynamic batching achieves.",
                "short",
                (
                    (
                        f"sum by (model) (rate(nv_inference_count[{RATE}])) / "
                        f"clamp_min(sum by (model) (rate(nv_inference_exec_count[{RATE}])), 1e-9)",
                        "{{model}}",
                    ),
                ),
            ),
            Panel(
                "Queue/compute ratio",
                "Queue time per unit of compute time per pod: the Triton autoscaler's metric.",
                "short",
                (("mlapi:triton_queue_compute_ratio:rate1m", "{{pod}}"),),
            ),
        ),
    ),
    (
        "Generation",
        (
            Panel(
                "Tokens per second",
                "Completion tokens text_generator generates per second, and streams in flight.",
                "short",
                (
                    (
                        'sum(rate(mlapi_text_generator_tokens_total{kind="completion"}'
                        f"[{RATE}]))",
                        "tokens/s",
                    ),
                    ("sum(mlapi_text_generator_active_streams)", "streams in flight"),
                ),
            ),
            Panel(
                "Time to first token",
                "From text_generator taking a stream to its first response: p50, p95, p99.",
                "s",
                tuple(
                    (
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f"mlapi_text_generator_time_to_first_token_seconds_bucket[{RATE}])))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95, 0.99)
                ),
            ),
            Panel(
                "Inter-token latency",
                "Each stream's mean gap between tokens: p50 and p99 over streams.",
                "s",
                tuple(
                    (
                        f"histogram_quantile({q}, sum by (le) (rate("
                        f"mlapi_text_generator_inter_token_seconds_bucket[{RATE}])))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ),
            ),
            Panel(
                "Finish reasons",
                "Finished streams per second by why they ended (length, stop, cancelled).",
                "reqps",
                (
                    (
                        "sum by (finish_reason) "
                        f"(rate(mlapi_text_generator_streams_total[{RATE}]))",
                        "{{finish_reason}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Predictions and drift",
        (
            Panel(
                "Drift flag",
                "1 while a classifier version's live window (500 images per digits instance) "
                "differs from the version's reference profile on held-out data.",
                "short",
                (("max by (model, version) (mlapi_drift_flag)", "{{model}} v{{version}}"),),
            ),
            Panel(
                "Drift p-values",
                "Lowest p-value per feature and test over the instances (chi-square on "
                "categories, KS on numbers); the flag rises under 0.001 / tests per window.",
                "short",
                (
                    (
                        "min by (version, feature, test) (mlapi_drift_p_value)",
                        "v{{version}} {{feature}} {{test}}",
                    ),
                ),
            ),
            Panel(
                "Low-confidence rate",
                "Share of served images flagged low-confidence, by classifier version.",
                "percentunit",
                (
                    (
                        "sum by (model, version) (rate(mlapi_low_confidence_images_total"
                        f"[{RATE}])) / clamp_min(sum by (model, version) "
                        f"(rate(mlapi_predictions_total[{RATE}])), 1e-9)",
                        "{{model}} v{{version}}",
                    ),
                ),
            ),
            Panel(
                "Top-1 score",
                "p5 and p50 of the top-1 score of served images, by classifier version.",
                "percentunit",
                tuple(
                    (
                        f"histogram_quantile({q}, sum by (le, version) "
                        f"(rate(mlapi_top1_score_bucket[{RATE}])))",
                        f"p{round(q * 100)} v{{{{version}}}}",
                    )
                    for q in (0.05, 0.5)
                ),
            ),
            Panel(
                "Predicted classes",
                "Served images per second by classifier version and predicted label.",
                "reqps",
                (
                    (
                        f"sum by (version, label) (rate(mlapi_predictions_total[{RATE}]))",
                        "v{{version}} {{label}}",
                    ),
                ),
            ),
            Panel(
                "Low-confidence reasons, blank and rejected inputs",
                "Flagged images per second by reason, blank images, and requests refused as "
                "invalid by the input named (out-of-range sizes are field image).",
                "reqps",
                (
                    (
                        f"sum by (version, reason) (rate(mlapi_low_confidence_total[{RATE}]))",
                        "v{{version}} {{reason}}",
                    ),
                    (
                        f"sum by (field) (rate(mlapi_rejected_inputs_total[{RATE}]))",
                        "rejected {{field}}",
                    ),
                ),
                on_event=True,
            ),
        ),
    ),
    (
        "Self-healing",
        (
            Panel(
                "Stub reloads",
                "Reloads of models whose Python stub died, by outcome (the stub supervisor).",
                "short",
                (
                    (
                        "sum by (model, outcome) (increase(mlapi_supervisor_reloads_total[1h]))",
                        "{{model}} {{outcome}}",
                    ),
                ),
                on_event=True,
            ),
        ),
    ),
)


def panels() -> list[Panel]:
    """Every panel, in dashboard order."""
    return [panel for _, row in ROWS for panel in row]


def dashboard() -> dict[str, Any]:
    """The dashboard in Grafana's JSON model (schema 39), two panels per row."""
    items: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for title, row in ROWS:
        items.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                      "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})  # fmt: skip
        next_id += 1
        y += 1
        for index, panel in enumerate(row):
            items.append(
                {
                    "type": "timeseries",
                    "id": next_id,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": datasource,
                    "gridPos": {"x": 12 * (index % 2), "y": y + 8 * (index // 2), "w": 12, "h": 8},
                    "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                    "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                    "targets": [
                        {
                            "refId": chr(ord("A") + n),
                            "expr": expr,
                            "legendFormat": legend,
                            "datasource": datasource,
                        }
                        for n, (expr, legend) in enumerate(panel.queries)
                    ],
                }
            )
            next_id += 1
        y += 8 * ((len(row) + 1) // 2)
    return {
        "uid": UID,
        "title": "triton-mlapi",
        "tags": ["triton-mlapi"],
        "schemaVersion": 39,
        "editable": False,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
            ]
        },
        "panels": items,
    }


def render() -> str:
    """The dashboard file's text."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard file, or with ``--check`` compare it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    parser.add_argument("--out", type=Path, default=DASHBOARD_FILE)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            sys.stderr.write(f"{args.out} is stale: run python -m mlapi_tools.dashboard\n")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
