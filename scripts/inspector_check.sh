#!/usr/bin/env bash
# Check memalign-mcp with the official MCP Inspector in CLI mode, over stdio and over streamable HTTP.
#
# Needs Node/npm and the npm registry (npx fetches @modelcontextprotocol/inspector); not part of `make test`.
# Each transport gets tools/list and a tools/call of list_judges against a server on a throw-away data dir.
# Usage: scripts/inspector_check.sh [PORT]   (PORT for the HTTP server, default 8765)
set -euo pipefail

cd "$(dirname "$0")/.."
SERVER="$PWD/.venv/bin/memalign-mcp"
PORT="${1:-8765}"
INSPECTOR=(npx -y @modelcontextprotocol/inspector --cli)
DATA_DIR="$(mktemp -d)"
HTTP_PID=""

cleanup() {
    if [[ -n "$HTTP_PID" ]]; then
        kill "$HTTP_PID" 2>/dev/null || true
        wait "$HTTP_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

[[ -x "$SERVER" ]] || { echo "no $SERVER: run 'make install' first" >&2; exit 1; }
# Keep litellm and the embedder offline; the hashing embedder keeps the check quick.
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
export MEMALIGN_DATA_DIR="$DATA_DIR" MEMALIGN_EMBEDDING_MODEL=hashing

expect() {  # expect NEEDLE LABEL: fail unless stdin contains NEEDLE
    local out
    out="$(cat)"
    if grep -q -- "$1" <<<"$out"; then
        echo "ok   $2"
    else
        echo "FAIL $2: '$1' not in the Inspector's output:" >&2
        echo "$out" >&2
        exit 1
    fi
}

echo "== stdio"
STDIO_ENV=(-e "MEMALIGN_DATA_DIR=$DATA_DIR/stdio" -e MEMALIGN_EMBEDDING_MODEL=hashing -e LITELLM_LOCAL_MODEL_COST_MAP=True)
"${INSPECTOR[@]}" "${STDIO_ENV[@]}" "$SERVER" serve --method tools/list | expect '"score_response"' "tools/list"
"${INSPECTOR[@]}" "${STDIO_ENV[@]}" "$SERVER" serve --method tools/call --tool-name list_judges \
    | expect '"helpfulness"' "tools/call list_judges"

echo "== streamable HTTP on 127.0.0.1:$PORT"
MEMALIGN_DATA_DIR="$DATA_DIR/http" "$SERVER" serve --transport http --port "$PORT" --log-level WARNING &
HTTP_PID=$!
for _ in $(seq 1 300); do  # up to ~30 s for the port to open
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    kill -0 "$HTTP_PID" 2>/dev/null || { echo "the HTTP server exited early" >&2; exit 1; }
    sleep 0.1
done
URL="http://127.0.0.1:$PORT/mcp"
"${INSPECTOR[@]}" "$URL" --transport http --method tools/list | expect '"score_response"' "tools/list"
"${INSPECTOR[@]}" "$URL" --transport http --method tools/call --tool-name list_judges \
    | expect '"helpfulness"' "tools/call list_judges"
echo "all Inspector checks passed"
