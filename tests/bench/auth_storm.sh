#!/usr/bin/env bash
# A slow authentication plugin under a connection storm:
#   1 000 clients send CONNECT at once to a broker whose authentication plugin (the `probe`
#   fixture, auth = "allow") takes AUTH_DELAY_MS per call, while an already-connected client
#   measures its publish round trip. Run without the plugin first, as the baseline.
#
#   bash tests/bench/auth_storm.sh          CLIENTS=2000 AUTH_DELAY_MS=100 bash tests/bench/auth_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-1000}
AUTH_DELAY_MS=${AUTH_DELAY_MS:-100}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

run() { # $1 = label, $2 = enabled plugins (TOML array)
  local port; port=$(free_port)
  rm -rf "$work/data"; mkdir -p "$work/plugins"
  printf 'auth = "allow"\nauth_delay_ms = %s\n' "$AUTH_DELAY_MS" > "$work/plugins/probe.toml"
  cat > "$work/broker.toml" <<TOML
data_dir = "$work/data"
plugin_dir = "$BIN"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$port"
[admin]
bind = "127.0.0.1:0"
[plugins]
enabled = $2
[log]
level = "warn"
TOML
  "$BIN/broker" --config "$work/broker.toml" 2>"$work/broker.log" &
  pid=$!; pids=$pid
  for _ in $(seq 100); do [ -f "$work/data/listeners.json" ] && break; sleep 0.05; done
  echo "== $1"
  "$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pids=""
}
run "no authentication plugin" '[]'
run "probe plugin, ${AUTH_DELAY_MS} ms per authentication" '["probe"]'
