# One Makefile for people and CI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
REPO := model_repository
CLASSIFIER_FILES := $(REPO)/digits_classifier/1/model.onnx $(REPO)/digits_classifier/2/model.onnx $(REPO)/digits_classifier/3/model.onnx \
	$(REPO)/digits_classifier/4/model.onnx $(REPO)/digits_classifier/5/model.onnx
BUILD_SOURCES := $(addprefix tools/mlapi_tools/build/,digits_data.py digits_models.py __main__.py \
	digits_cnn.py digits_v3_data.py v3_calibration.py augment.py handwriting.py not_digits.py fonts.py quantize.py) \
	python_backend/mlapi_backend/preprocessing.py python_backend/mlapi_backend/digit_normalise.py \
	python_backend/mlapi_backend/image_ops.py
# Typed digits and glyphs for classifier version 3 (mlapi_tools.build.fonts lists the same
# packages; about 33 MB to download).
FONT_PACKAGES := fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 fonts-croscore \
	fonts-crosextra-carlito fonts-crosextra-caladea fonts-open-sans fonts-roboto-unhinted fonts-lato \
	fonts-cantarell fonts-go fonts-comic-neue fonts-inconsolata fonts-hack fonts-ebgaramond \
	fonts-quicksand fonts-league-spartan fonts-oxygen fonts-sil-gentium fonts-linuxlibertine
TEXT_LM_FILES := $(REPO)/text_decoder/1/model.onnx $(REPO)/text_prefill/1/model.onnx
TEXT_LM_SOURCES := tools/mlapi_tools/build/text_lm.py tools/mlapi_tools/build/text_prefill.py python_backend/mlapi_backend/tokenizer.py

.PHONY: help install models backends serve test test-unit lint format clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(INSTALLED) ## Create .venv and install the project with its extras (idempotent)

# Versions 1 and 2 retrain in about 40 s; version 3 is skipped when its fingerprint (data and
# training inputs) is unchanged, and its data are cached under build/digits_v3. The touch marks
# every version fresh for make.
$(CLASSIFIER_FILES) &: $(BUILD_SOURCES) | $(INSTALLED) system-deps
	$(BIN)/python -m mlapi_tools.build --only digits --repository $(REPO)
	@touch $(CLASSIFIER_FILES)

# The text LM build skips training when its fingerprint (corpus, vocabulary, settings, recipe
# version) is unchanged, and text_prefill (the decode step's weights over a whole prompt) when
# the decode step is; the touch then marks both fresh for make.
$(TEXT_LM_FILES) &: $(TEXT_LM_SOURCES) | $(INSTALLED)
	$(BIN)/python -m mlapi_tools.build.text_lm --repository $(REPO)
	@touch $(TEXT_LM_FILES)

# Drift reference profiles of the built classifier versions (held-out digits through the served
# preparation and each exported graph, ~4 s); the touch marks them fresh when nothing changed.
PROFILE_FILES := $(CLASSIFIER_FILES:model.onnx=drift_profile.json)
$(PROFILE_FILES) &: $(CLASSIFIER_FILES) tools/mlapi_tools/build/drift_profiles.py python_backend/mlapi_backend/drift_monitor.py | $(INSTALLED)
	$(BIN)/python -m mlapi_tools.build.drift_profiles --repository $(REPO)
	@touch $(PROFILE_FILES)

models: $(CLASSIFIER_FILES) $(PROFILE_FILES) $(TEXT_LM_FILES) ## Train and export the default models (only when missing or stale)

backends: $(INSTALLED) ## Assemble build/backends for the local tritonserver
	@$(BIN)/python -m mlapi_tools.local backends --backend-dir build/backends

serve: models backends ## Build what is missing, then run Triton and the gateway in the foreground (Ctrl-C stops)
	$(BIN)/python -m mlapi_tools.local serve --repository $(REPO) --backend-dir build/backends

test: models backends ## Run the whole test suite (unit + integration against a real tritonserver)
	$(BIN)/python -m pytest

test-unit: $(INSTALLED) ## Unit tests only (no server)
	$(BIN)/python -m pytest tests/unit

lint: $(INSTALLED) ## ruff, mypy and codespell (the pre-commit hooks run the same)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/codespell

format: $(INSTALLED) ## Apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove built models and backends (keeps .venv)
	rm -rf build $(REPO)/*/[0-9]*/*.onnx $(REPO)/*/[0-9]*/metrics.json

# --- Benchmarks (benchmarks/, docs/benchmarks.md) ---
.PHONY: bench bench-full perf-analyzer config-search bench-tools
BENCH_ARGS ?=

bench: models $(INSTALLED) ## Quick sweep (~75 s): uses Triton on TRITON_HTTP_PORT if ready, else starts one; prints the table
	$(BIN)/python -m mlapi_bench sweep $(BENCH_ARGS)

bench-full: models $(INSTALLED) ## Long sweep + batching study + harness capacity + locust (~20 min)
	$(BIN)/python -m mlapi_bench sweep --full $(BENCH_ARGS)
	$(BIN)/python -m mlapi_bench study $(BENCH_ARGS)
	$(BIN)/python -m mlapi_bench capacity $(if $(shell command -v wrk),--wrk) $(BENCH_ARGS)
	$(BIN)/python -m mlapi_bench locust $(BENCH_ARGS)

perf-analyzer: models $(INSTALLED) system-deps ## perf_analyzer sweeps of the public models over HTTP and gRPC, the harness beside it: CSV, table, PNG
	$(BIN)/python -m mlapi_bench perf-analyzer --compare $(BENCH_ARGS)

config-search: models $(INSTALLED) system-deps ## Measured search (~10 min) of instances, batch size, queue delay per model with perf_analyzer: CSV, frontier PNG, chosen config (--apply writes it)
	$(BIN)/python -m mlapi_bench config-search $(BENCH_ARGS)

.PHONY: bench-digits
bench-digits: models backends system-deps ## wrk (~2.5 min): digits vs its classifier version direct at 1/16/64 connections; req/s, p50/p99, server CPU per request
	$(BIN)/python benchmarks/wrk/digits_bench.py $(BENCH_ARGS)

bench-tools: ## Install Debian's wrk (HTTP load from C, for `mlapi_bench capacity --wrk`)
	apt-get install -y wrk

# --- API gateway (gateway/, docs/gateway.md) ---
.PHONY: gateway bench-gateway system-deps
GATEWAY_PORT ?= 8080
# Gateway workers of `make serve`, `make gateway` and `make bench-gateway`: the benchmark
# measures the count serve runs (docs/gateway.md, Speed).
GATEWAY_WORKERS ?= 1
export GATEWAY_WORKERS

# Idempotent and tolerant: does nothing when the tools and the packages (FONT_PACKAGES for the
# digits build, libb64-0d for perf_analyzer, chromium for the browser-client tests) are there; without root or apt-get it only warns
# (the Redis, Prometheus and perf_analyzer tests then skip, naming the reason; the gateway
# benchmark needs wrk; the digits build stops, naming the font packages to install).
system-deps: ## Install Debian's redis-server, wrk, prometheus, libb64, chromium and fonts when missing (root + apt-get; else a warning)
	@missing=""; for tool in redis-server wrk prometheus; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	for pkg in $(FONT_PACKAGES) libb64-0d chromium; do \
		dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q "ok installed" || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null \
			|| echo "WARNING: apt-get could not install$$missing; tests that need them will skip"; \
	else \
		echo "WARNING:$$missing missing and apt-get unavailable or not root; tests that need them will skip"; \
	fi

test: system-deps

gateway: $(INSTALLED) ## Run the API gateway alone on GATEWAY_PORT in front of a running Triton
	GATEWAY_PORT=$(GATEWAY_PORT) $(BIN)/python -m mlapi_gateway

bench-gateway: models $(INSTALLED) system-deps ## wrk: gateway (auth, validation, limits) vs direct Triton; p50 @1 conn, req/s @16
	$(BIN)/python benchmarks/gateway/run.py $(BENCH_ARGS)

# --- Images and the Helm chart (docker/, deploy/, docs/deploy.md) ---
-include docker/images.mk
-include deploy/chart.mk
-include tools/eval.mk
-include tools/embedder.mk

# INT8 graphs of the text encoder (mlapi_tools.build.quantize, dynamic and static QDQ), for the
# in-process comparison only: under build/quantized, not served. After the include above, which
# defines EMBEDDER_FILES.
ENCODER_INT8_FILES := $(addprefix build/quantized/text_embedder_encoder/,dynamic/model.onnx static/model.onnx)
$(ENCODER_INT8_FILES) &: $(EMBEDDER_FILES) tools/mlapi_tools/build/quantize.py | $(INSTALLED)
	$(BIN)/python -m mlapi_tools.build.quantize --only encoder --repository $(REPO)
	@touch $(ENCODER_INT8_FILES)

models: $(ENCODER_INT8_FILES)
