#!/bin/sh
# Start Triton with the same restricted admin APIs as the embedded server (server/embedded.py):
# model load/unload + repository index, shared-memory registration, and log/trace settings need
# the header `triton-admin-key` (gRPC: `triton-grpc-protocol-triton-admin-key`).
# The key comes from $TRITON_ADMIN_KEY, else from the compose secret, which is the host's
# .triton/admin_key (`python -m server admin-key` creates it), so the project's clients work unchanged.
set -eu

key="${TRITON_ADMIN_KEY:-}"
if [ -z "$key" ] && [ -r /run/secrets/triton_admin_key ]; then
    key="$(tr -d '[:space:]' < /run/secrets/triton_admin_key)"
fi
if [ -z "$key" ]; then
    echo "triton: no admin key; set TRITON_ADMIN_KEY or run 'python -m server admin-key' on the host" >&2
    exit 64
fi
case "$key" in
    *[!A-Za-z0-9._~-]*) echo "triton: the admin key may only hold A-Z a-z 0-9 . _ ~ -" >&2; exit 64 ;;
esac

apis="model-repository,shared-memory,logging,trace"
exec tritonserver \
    --http-restricted-api="${apis}:triton-admin-key=${key}" \
    --grpc-restricted-protocol="${apis}:triton-admin-key=${key}" \
    "$@"
