# --- Helm chart and monitoring rules (deploy/, docs/deploy.md) ---
.PHONY: chart-tools chart-check

CHART := deploy/helm/triton-mlapi
# checkov pins packaging<24, which other tools of .venv outgrow: it gets a venv of its own.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := build/tools/checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV_VENV)/.installed: deploy/chart.mk
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@echo "installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (once; ~1 min)"
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	@touch $@

chart-tools: $(CHECKOV_VENV)/.installed ## Install checkov into build/tools/checkov (idempotent)

test: chart-tools

chart-check: $(INSTALLED) chart-tools system-deps ## Chart and rules proofs only: render matrix, schemas, checkov, promtool, real Prometheus (~2 min)
	$(BIN)/python -m pytest tests/deploy/test_chart_render.py tests/deploy/test_chart_checkov.py tests/deploy/test_monitoring_rules.py tests/deploy/test_monitoring_prometheus.py

# --- Monitoring beside `make serve` (docs/observability.md) ---
.PHONY: monitor
monitor: $(INSTALLED) system-deps ## Prometheus beside a running `make serve`, chart rules loaded, on MONITOR_PORT (9090)
	$(BIN)/python -m mlapi_tools.local.monitor
