#!/bin/sh
# Container entrypoint of the triton and triton-cpu images: tritonserver with exactly the flags
# `make serve` gives it (mlapi_tools.local.triton_process, TritonServer.command(); the test
# tests/deploy/test_images.py runs this script and compares). Two things differ by design:
# it listens on every interface (the cluster's NetworkPolicy guards the ports) and the access
# key comes from MLAPI_TRITON_KEY or the file MLAPI_TRITON_KEY_FILE (mlapi_client.access).
# Extra arguments (the image's CMD or the pod's args) are appended, as the launcher's extra_args.
set -eu

: "${TRITON_ROOT:?names the tritonserver install (bin/, caches/)}"
: "${MLAPI_BACKEND_DIR:?names the backend directory}"

key="${MLAPI_TRITON_KEY:-}"
if [ -z "$key" ] && [ -n "${MLAPI_TRITON_KEY_FILE:-}" ]; then
    key="$(tr -d ' \t\r\n' <"$MLAPI_TRITON_KEY_FILE")"
fi
if [ -z "$key" ]; then
    echo "triton-entrypoint: no access key: set MLAPI_TRITON_KEY or MLAPI_TRITON_KEY_FILE" \
        "(every API but health is restricted to it)" >&2
    exit 64
fi

# mlapi_client.access.RESTRICTED_APIS and KEY_HEADER.
apis=metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging
header=mlapi-triton-key
bind="${TRITON_BIND_ADDRESS:-0.0.0.0}"

exec "$TRITON_ROOT/bin/tritonserver" \
    --model-repository="${MLAPI_MODEL_REPOSITORY:-/models}" \
    --backend-directory="$MLAPI_BACKEND_DIR" \
    --cache-directory="$TRITON_ROOT/caches" \
    --cache-config="local,size=${TRITON_RESPONSE_CACHE_BYTES:-67108864}" \
    --http-address="$bind" \
    --http-port="${TRITON_HTTP_PORT:-8000}" \
    --grpc-address="$bind" \
    --grpc-port="${TRITON_GRPC_PORT:-8001}" \
    --metrics-address="$bind" \
    --metrics-port="${TRITON_METRICS_PORT:-8002}" \
    --http-restricted-api="$apis:$header=$key" \
    --grpc-restricted-protocol="$apis:$header=$key" \
    --model-control-mode=explicit \
    '--load-model=*' \
    --exit-on-error=false \
    --strict-readiness=false \
    --disable-auto-complete-config \
    --exit-timeout-secs=10 \
    "$@"
