#!/usr/bin/env bash
# Regenerate docs/flower-tasks.png: Flower's task page after a few real tool calls and a report.
#
#   scripts/flower-screenshot.sh [OUTPUT.png]
#
# Runs everything on the embedded default in a throwaway data folder (SQLite + Kombu's file
# broker; no Postgres or Redis needed): the demo MCP server, one Celery worker and Flower on
# free loopback ports, then headless Chromium (apt-get install chromium). Flower runs without
# auth here because it listens on loopback only and lives for a minute; never do that in
# production. Everything started is stopped on exit, by process id.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/docs/flower-tasks.png}")"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
[ -x "$PY" ] || { echo "no python at $PY (make dev, or set PYTHON)" >&2; exit 2; }
[ -n "$CHROMIUM" ] || { echo "chromium not found (apt-get install chromium)" >&2; exit 2; }

WORK="$(mktemp -d -t mcp-worker-shot-XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        # A warm shutdown lets Celery close its pool; past 20 s the process is killed.
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The embedded default, whatever this shell has configured.
unset DATABASE_URL CELERY_BROKER_URL CELERY_RESULT_BACKEND DEVELOPMENT_MODE MCP_CONFIG_FILE
export MCP_DATA_DIR="$WORK/data"
export MCP_CONNECT_TIMEOUT=10 MCP_CALL_TIMEOUT=20 MCP_TASK_SOFT_TIME_LIMIT=60 MCP_MAX_RETRIES=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    for _ in $(seq 1 $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "timed out after ${seconds}s waiting for $what (logs in $WORK)" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    exit 1
}
cli() { "$PY" -m worker.cli "$@"; }

echo "data folder: $MCP_DATA_DIR"
cli db upgrade >/dev/null

MCP_PORT="$(free_port)"
TOKEN="demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
"$PY" -m worker.demo.server --transport streamable-http --port "$MCP_PORT" --token "$TOKEN" \
    >"$WORK/demo-server.log" 2>&1 &
PIDS+=($!)
wait_for 30 "the demo MCP server" "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $MCP_PORT), 1)"

for user in alice bob; do
    printf %s "$TOKEN" | cli services add --user "$user" --desc openproject --mode http \
        --url "http://127.0.0.1:$MCP_PORT/mcp" --params '{"project_id": 1}' --api-key-file - >/dev/null
done

"$PY" -m celery -A worker worker -n "shot-$$@%h" -Q mcp.tools,mcp.reports,mcp.schedule -c 2 \
    --loglevel INFO --without-gossip >"$WORK/worker.log" 2>&1 &
PIDS+=($!)

FLOWER_PORT="$(free_port)"
FLOWER_UNAUTHENTICATED_API=true "$PY" -m celery -A worker flower --address=127.0.0.1 --port="$FLOWER_PORT" \
    >"$WORK/flower.log" 2>&1 &
PIDS+=($!)
FLOWER="http://127.0.0.1:$FLOWER_PORT"
wait_for 60 "Flower" "$PY" -c "import urllib.request; urllib.request.urlopen('$FLOWER/healthcheck', timeout=2)"
wait_for 60 "the worker" "$PY" -c "
import json, urllib.request
workers = json.load(urllib.request.urlopen('$FLOWER/api/workers?refresh=1', timeout=10))
assert any(name.startswith('shot-$$@') for name in workers)"

# A few calls while Flower watches: successes, a failure, and a weekly report.
cli call alice openproject fetch_weekly_report --args '{"week": "2026-W47"}' --wait --timeout 60 >/dev/null
cli call bob openproject fetch_weekly_report --args '{"project_id": 5}' --wait --timeout 60 >/dev/null
cli call alice openproject echo --args '{"message": "hello from mcp-worker"}' --wait --timeout 60 >/dev/null
cli call bob openproject list_projects --wait --timeout 60 >/dev/null
cli call alice openproject no_such_tool --wait --timeout 60 >/dev/null || true
cli report alice openproject --template executive_summary.j2 --wait --timeout 60 >/dev/null

wait_for 60 "Flower to list six finished tasks" "$PY" -c "
import json, urllib.request
tasks = json.load(urllib.request.urlopen('$FLOWER/api/tasks', timeout=10))
assert sum(t['state'] in ('SUCCESS', 'FAILURE') for t in tasks.values()) >= 6"

mkdir -p "$(dirname "$OUT")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$WORK/chromium" --window-size=1280,800 \
    --virtual-time-budget=5000 --screenshot="$OUT" "$FLOWER/tasks" >"$WORK/chromium.log" 2>&1
[ -s "$OUT" ] || { echo "chromium wrote no screenshot" >&2; cat "$WORK/chromium.log" >&2; exit 1; }
echo "wrote $OUT"
