"""The Grafana dashboard: generated from mlapi_tools.dashboard, shipped by the chart as the
ConfigMap Grafana's sidecar loads. Its queries run on a real Prometheus in
test_monitoring_prometheus.py."""

from __future__ import annotations

import json
import re

from mlapi_tools.dashboard import DASHBOARD_FILE, dashboard, main, panels

from .chart_render import render_file


def test_the_checked_in_dashboard_is_what_the_generator_writes(tmp_path) -> None:
    assert main(["--check"]) == 0, "run: python -m mlapi_tools.dashboard"
    stale = tmp_path / "stale.json"
    stale.write_text("{}\n")
    assert main(["--check", "--out", str(stale)]) == 1


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD_FILE.read_text())
    items = board["panels"]
    ids = [item["id"] for item in items]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    charts = [item for item in items if item["type"] == "timeseries"]
    assert len(charts) == len(panels()) and all(chart["targets"] for chart in charts)
    for chart in charts:
        assert chart["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in chart["targets"]]
        assert len(refs) == len(set(refs))
        for target in chart["targets"]:
            # Only Grafana's rate window is templated: the test substitutes it to run the query.
            assert set(re.findall(r"\$\w+", target["expr"])) <= {"$__rate_interval"}
    # No two panels overlap on Grafana's 24-column grid.
    cells = set()
    for item in items:
        pos = item["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{item['title']} overlaps another panel"
                cells.add((x, y))
    assert board == dashboard()


def test_the_chart_ships_it_as_a_configmap_for_grafanas_sidecar() -> None:
    rendered = render_file("default-values.yaml")
    config_map = rendered.one("ConfigMap", "-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["triton-mlapi.json"]) == dashboard()
    assert render_file("monitoring-off-values.yaml").find("ConfigMap", "-dashboard") is None
