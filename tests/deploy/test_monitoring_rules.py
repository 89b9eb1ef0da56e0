"""The chart's Prometheus rules (one file, also the PrometheusRule's spec) pass
`promtool check rules` and the unit tests in deploy/monitoring/rules.test.yaml, and the
prometheus-adapter values expose exactly the metrics the HPAs ask for."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from .chart_render import ADAPTER_VALUES, ROOT, RULES_FILE, render_file

PROMTOOL = shutil.which("promtool")
RULE_TESTS = ROOT / "deploy" / "monitoring" / "rules.test.yaml"
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make system-deps` installs Debian's prometheus"
)


def _promtool(*args: str) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    out = _promtool("check", "rules", str(RULES_FILE))
    assert "SUCCESS: 16 rules found" in out, out


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    out = _promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in out and "FAILED" not in out, out


def test_every_alert_of_the_design_has_a_unit_test() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    design = {
        "MlapiModelNotReady",
        "MlapiTritonErrorRate",
        "MlapiQueueTimeHigh",
        "MlapiPredictLatencyP99High",
        "MlapiPredictionDrift",
        "MlapiCostBudget",
    }
    assert design <= alerts
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts == tested, alerts - tested


def test_adapter_values_serve_the_metrics_the_hpas_use() -> None:
    records = {
        r["record"]
        for g in yaml.safe_load(RULES_FILE.read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {}
    for rule in adapter:
        series = rule["seriesQuery"].split("{")[0]
        assert series in records, series
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        served[rule["name"]["as"]] = series
    wanted = set()
    for name in ("default-values.yaml", "ha-gateway-values.yaml"):
        for hpa in render_file(name).of_kind("HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Pods":
                    wanted.add(metric["pods"]["metric"]["name"])
    assert wanted == set(served), (wanted, served)
