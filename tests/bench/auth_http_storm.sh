#!/usr/bin/env bash
# auth_http against a slow service: CLIENTS (500) CONNECTs at once while the HTTP service takes
# DELAY_S (2) seconds per request; an already-connected client measures its publish round trip
# meanwhile. The service is Python's threading HTTP server (python3 is on the machine).
#
#   bash tests/bench/auth_http_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-500}
DELAY_S=${DELAY_S:-2}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

http_port=$(free_port)
cat > "$work/slow.py" <<PY
import time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep($DELAY_S)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
ThreadingHTTPServer.request_queue_size = 4096
ThreadingHTTPServer(("127.0.0.1", $http_port), H).serve_forever()
PY
python3 "$work/slow.py" & pids="$pids $!"

port=$(free_port)
mkdir -p "$work/plugins"
printf 'timeout_ms = 10000\n[auth_req]\nurl = "http://127.0.0.1:%s/auth"\nparams = { clientid = "%%c" }\n' "$http_port" > "$work/plugins/auth_http.toml"
cat > "$work/broker.toml" <<TOML
data_dir = "$work/data"
plugin_dir = "$BIN"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$port"
[admin]
bind = "127.0.0.1:0"
[plugins]
enabled = ["auth_http"]
[log]
level = "warn"
TOML
"$BIN/broker" --config "$work/broker.toml" >/dev/null 2>"$work/broker.log" & pids="$pids $!"
for _ in $(seq 100); do [ -f "$work/data/listeners.json" ] && break; sleep 0.05; done
echo "== auth_http, service taking ${DELAY_S} s per request, $CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS"
