#!/usr/bin/env bash
# Fan-in throughput with retainer + presence + rewrite loaded, against no plugins, in one run.
# The rewrite rule does not match the benchmark's topics (the usual case: most traffic passes
# the rules untouched) but is evaluated for every message.
#
#   bash tests/bench/plugin_overhead.sh        ROUNDS=5 MESSAGES=200000 bash tests/bench/plugin_overhead.sh
#   PLUGINS='["presence"]' bash tests/bench/plugin_overhead.sh     (another set of plugins)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-200000}
PLUGINS=${PLUGINS:-'["retainer", "presence", "rewrite"]'}
cargo build --release -j2 -p broker -p broker-tests -p retainer -p presence -p rewrite >/dev/null
. tests/bench/common.sh
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

mkdir -p "$work/plugins"
printf '[[rules]]\naction = "all"\nsource_topic = "x/#"\nre = "^x/y/(.+)$"\ndest_topic = "z/y/$1"\n' > "$work/plugins/rewrite.toml"
printf 'storage = "ram"\n' > "$work/plugins/retainer.toml"

start() { # $1 = name, $2 = enabled plugins (TOML array); sets $port
  port=$(free_port)
  mkdir -p "$work/$1"
  cat > "$work/$1/broker.toml" <<TOML
data_dir = "$work/$1/data"
plugin_dir = "$BIN"
[plugins]
enabled = $2
config_dir = "$work/plugins"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$port"
[admin]
bind = "127.0.0.1:0"
[limits]
max_queued_messages = 1000000
[log]
level = "warn"
TOML
  "$BIN/broker" --config "$work/$1/broker.toml" >/dev/null 2>"$work/$1/broker.log" &
  pids="$pids $!"
  for _ in $(seq 100); do [ -f "$work/$1/data/listeners.json" ] && break; sleep 0.05; done
}
start base '[]'; base_port=$port
start with "$PLUGINS"; with_port=$port
rate() { "$BIN/mqtt-bench" --port "$1" --mode fan-in --qos "$2" --clients 10 --messages "$MESSAGES" | sed -n 's/.*rate=\([0-9]*\).*/\1/p'; }

# Rounds alternate between the two brokers so that drift in the machine's load hits both.
printf '%-4s %14s %26s %7s\n' qos "no plugins" "$PLUGINS" ratio
for qos in 0 1; do
  : > "$work/base.$qos"; : > "$work/with.$qos"
  for _ in $(seq "$ROUNDS"); do
    rate "$base_port" "$qos" >> "$work/base.$qos"
    rate "$with_port" "$qos" >> "$work/with.$qos"
  done
  base=$(median < "$work/base.$qos"); with=$(median < "$work/with.$qos")
  printf '%-4s %14s %26s %7s\n' "$qos" "$base" "$with" "$(awk -v a="$with" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
done
