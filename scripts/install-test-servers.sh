#!/usr/bin/env bash
# Install the third-party MCP servers the tests talk to (tests/mcp/test_everything.py) into
# .cache/node (ignored by git). Needs node >= 18 and npm; re-running is cheap and idempotent.
#
#   scripts/install-test-servers.sh          install the pinned versions
#   scripts/install-test-servers.sh --help   this text
set -euo pipefail

EVERYTHING_VERSION="2026.8.31"   # @modelcontextprotocol/server-everything, stdio + streamable HTTP

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.cache/node"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is not installed; install Node.js >= 18 (e.g. apt-get install nodejs npm)" >&2
        exit 1
    fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if (( major < 18 )); then
    echo "error: node $(node --version) is too old; @modelcontextprotocol/server-everything needs >= 18" >&2
    exit 1
fi

mkdir -p "$prefix"
# The lock file pins every transitive dependency, so a new machine installs what was tested.
cp "$root/scripts/test-servers/package.json" "$root/scripts/test-servers/package-lock.json" "$prefix/"
npm ci --prefix "$prefix" --no-audit --no-fund --loglevel=error

bin="$prefix/node_modules/.bin/mcp-server-everything"
test -x "$bin" || { echo "error: $bin was not installed" >&2; exit 1; }
echo "installed @modelcontextprotocol/server-everything@$EVERYTHING_VERSION -> $bin"
