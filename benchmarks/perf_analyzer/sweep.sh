#!/usr/bin/env bash
# perf_analyzer concurrency sweeps of the public models over HTTP and gRPC, one CSV per model
# and protocol (perf_analyzer's own columns), using the held-out digits in this folder as input.
# A baseline: NVIDIA's C++ client, not the project's (python -m mlapi_bench measures that one).
#
# perf_analyzer is not on PyPI: it ships in the NGC SDK container of the pinned release.
#   docker run --rm -it --net=host -v "$PWD:/work" -w /work \
#       nvcr.io/nvidia/tritonserver:24.10-py3-sdk bash benchmarks/perf_analyzer/sweep.sh
# Settings (environment): TRITON_HOST, TRITON_HTTP_PORT, TRITON_GRPC_PORT, MODELS,
# STREAMING_MODELS (decoupled models, run over gRPC with --streaming; default text_generator,
# empty to skip), CONCURRENCY, MEASUREMENT_MS, OUT.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if ! command -v perf_analyzer >/dev/null 2>&1; then
    cat <<'HELP'
perf_analyzer is not on PATH. It ships in the NGC SDK container of the server release:
  docker run --rm -it --net=host -v "$PWD:/work" -w /work \
      nvcr.io/nvidia/tritonserver:24.10-py3-sdk bash benchmarks/perf_analyzer/sweep.sh
(with `make serve` running on the host). Without Docker, the project's own harness measures
the same things and writes perf_analyzer's CSV columns: `make bench`.
HELP
    exit 0
fi

host=${TRITON_HOST:-127.0.0.1}
http_url="$host:${TRITON_HTTP_PORT:-8000}"
grpc_url="$host:${TRITON_GRPC_PORT:-8001}"
models=${MODELS:-digits digits_classifier}
streaming_models=${STREAMING_MODELS-text_generator}
levels=${CONCURRENCY:-1 2 4 8 16 32}
interval_ms=${MEASUREMENT_MS:-3000}
out=${OUT:-benchmarks/results/$(date -u +%Y-%m-%d)/perf_analyzer}
mkdir -p "$out"

# Triton's access key (mlapi_client.access): every API but health needs it.
key=${MLAPI_TRITON_KEY:-$(cat "${MLAPI_TRITON_KEY_FILE:-${XDG_STATE_HOME:-$HOME/.local/state}/mlapi/triton.key}" 2>/dev/null || true)}

sweep() {  # model protocol url [extra flags...]
    local model=$1 protocol=$2 url=$3
    shift 3
    local header=mlapi-triton-key
    [[ $protocol == grpc ]] && header=triton-grpc-protocol-mlapi-triton-key
    [[ -n $key ]] && set -- "$@" -H "$header:$key"
    local csv="$out/${model}_${protocol}.csv"
    rm -f "$csv"
    for level in $levels; do
        perf_analyzer -m "$model" -i "$protocol" -u "$url" \
            --input-data "$here/$model.json" \
            --concurrency-range "$level:$level" --measurement-interval "$interval_ms" \
            --percentile 99 -f "$out/.part.csv" "$@"
        if [[ -f "$csv" ]]; then tail -n +2 "$out/.part.csv" >>"$csv"; else cp "$out/.part.csv" "$csv"; fi
    done
    rm -f "$out/.part.csv"
    echo "wrote $csv"
}

for model in $models; do
    sweep "$model" http "$http_url"
    sweep "$model" grpc "$grpc_url"
done
for model in $streaming_models; do
    sweep "$model" grpc "$grpc_url" --streaming
done
