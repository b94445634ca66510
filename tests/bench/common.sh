# Shared by the benchmark scripts, sourced from the repository root: the release binaries, a
# temporary directory and background processes (add their pids to $pids) cleaned up at exit,
# and free_port.
BIN=$PWD/target/release
work=$(mktemp -d)
pids=""
cleanup() { [ -n "$pids" ] && { kill $pids 2>/dev/null || true; }; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_broker DIR PORT [TOML]: writes DIR/broker.toml for a broker on 127.0.0.1:PORT with its
# data in DIR/data, the plugins of $BIN and warn-level logs, plus TOML (whole tables), starts it
# (log in DIR/broker.log), adds it to $pids, sets $broker_pid and waits for its listeners.
# BIN_BROKER, when set, is the broker binary to run (plugins still come from $BIN); TOP, when
# set, is put first (top-level keys such as node_name).
start_broker() {
  local dir=$1 port=$2 extra=${3:-}
  mkdir -p "$dir"
  cat > "$dir/broker.toml" <<TOML
${TOP:-}
data_dir = "$dir/data"
plugin_dir = "$BIN"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$port"
[admin]
bind = "127.0.0.1:0"
[log]
level = "warn"
$extra
TOML
  "${BIN_BROKER:-$BIN/broker}" --config "$dir/broker.toml" 2>"$dir/broker.log" &
  broker_pid=$!; pids="$pids $broker_pid"
  for _ in $(seq 100); do [ -f "$dir/data/listeners.json" ] && return 0; sleep 0.05; done
  echo "broker in $dir did not start: $(cat "$dir/broker.log")" >&2; return 1
}
