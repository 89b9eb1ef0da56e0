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
                        f"(rate(mlapi_top1_score_images_total[{RATE}])))",
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
                "Cost",
                "Estimated serving cost in USD per hour by version, per 1000 images, and per "
                "API key at the gateway (measured compute time x the server's CPU per compute "
                "second x prices).",
                "currencyUSD",
                (
                    (
                        f"sum by (model, version) (rate(mlapi_cost_usd_total[{RATE}])) * 3600",
                        "{{model}} v{{version}} per hour",
                    ),
                    (
                        f"sum by (model, version) (rate(mlapi_cost_usd_total[{RATE}])) * 1000"
                        " / clamp_min(sum by (model, version) "
                        f"(rate(mlapi_predictions_total[{RATE}])), 1e-9)",
                        "{{model}} v{{version}} per 1000 images",
                    ),
                    (
                        f"sum by (model, key) (rate(mlapi_gateway_cost_usd_total[{RATE}])) * 3600",
                        "{{model}} key {{key}} per hour (gateway)",
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


# The panels ``--png`` draws: the dashboard's main ones, by title.
PNG_PANELS = (
    "Inferences by model and version",
    "Drift flag",
    "Drift p-values",
    "Low-confidence rate",
    "Top-1 score",
    "Cost",
)


def query_range(
    prometheus_url: str, expr: str, start: float, end: float, step_s: float
) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
    """Each series ``expr`` returns over [start, end] (a Prometheus range query)."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": f"{step_s}s"}
    )
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/query_range?{query}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return [
        (row["metric"], [(float(t), float(v)) for t, v in row["values"]])
        for row in body["data"]["result"]
    ]


def _legend(template: str, labels: dict[str, str]) -> str:
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def plot_png(
    prometheus_url: str,
    out: Path,
    minutes: float,
    rate_window: str = "1m",
    step_s: float = 5,
    end: float | None = None,
) -> int:
    """Draw ``PNG_PANELS`` from a real Prometheus's ``minutes`` up to ``end`` (default: now).

    Return the number of series drawn.
    """
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [p for p in panels() if p.title in PNG_PANELS]
    end = time.time() if end is None else end
    start = end - minutes * 60
    figure, axes = plt.subplots(3, 2, figsize=(13, 10), constrained_layout=True)
    drawn = 0
    for axis, panel in zip(axes.flat, chosen, strict=False):
        for expr, legend in panel.queries:
            for labels, values in query_range(
                prometheus_url, expr.replace(RATE, rate_window), start, end, step_s
            ):
                xs = [(t - start) / 60 for t, _ in values]
                ys = [v for _, v in values]
                axis.plot(xs, ys, label=_legend(legend, labels), linewidth=1.2)
                drawn += 1
        if panel.title == "Drift p-values":  # down to 1e-30: the alarm is at 2e-4
            axis.set_yscale("log")
            axis.set_ylim(1e-30, 2)
        axis.set_title(panel.title)
        axis.set_xlabel("minutes")
        axis.set_ylabel(panel.unit)
        if axis.lines:
            axis.legend(fontsize=6, ncol=2, loc="best")
    figure.suptitle("triton-mlapi dashboard: main panels, from a real Prometheus")
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return drawn


def render() -> str:
    """The dashboard file's text."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard file, or with ``--check`` compare it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    parser.add_argument("--out", type=Path, default=DASHBOARD_FILE)
    parser.add_argument("--png", type=Path, help="draw the main panels from --prometheus here")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=15, help="time range of --png")
    parser.add_argument("--end", type=float, help="end of --png's range (Unix time; now)")
    args = parser.parse_args(argv)
    if args.png:
        drawn = plot_png(args.prometheus, args.png, args.minutes, end=args.end)
        return 0 if drawn else 1
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
