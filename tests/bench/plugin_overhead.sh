#!/usr/bin/env bash
# Throughput and the broker's CPU time per message with the shipped plugins (retainer,
# presence, dashboard) plus rewrite and auth_http loaded, against no plugins, in one run:
# fan-in (10 publishers -> 1 subscriber) and fan-out (1 -> 10) at QoS 0 and 1.
# The rewrite rule does not match the benchmark's topics (the usual case: most traffic passes
# the rules untouched) but is evaluated for every message. auth_http asks a local HTTP service
# (http-sink, answering 200) to authenticate every client and authorise every topic, with its
# result cache on and the broker's ACL cache at its default.
#
#   bash tests/bench/plugin_overhead.sh        ROUNDS=5 MESSAGES=200000 bash tests/bench/plugin_overhead.sh
#   PLUGINS='["presence"]' bash tests/bench/plugin_overhead.sh     (another set of plugins)
#   MODES=fan-in bash tests/bench/plugin_overhead.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-200000}
PLUGINS=${PLUGINS:-'["retainer", "presence", "dashboard", "rewrite", "auth_http"]'}
MODES=${MODES:-fan-in fan-out}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

mkdir -p "$work/plugins"
printf '[[rules]]\naction = "all"\nsource_topic = "x/#"\nre = "^x/y/(.+)$"\ndest_topic = "z/y/$1"\n' > "$work/plugins/rewrite.toml"
printf 'storage = "ram"\n' > "$work/plugins/retainer.toml"
printf 'bind = "127.0.0.1:0"\n' > "$work/plugins/dashboard.toml"
"$BIN/http-sink" > "$work/sink.port" &
pids="$pids $!"
for _ in $(seq 100); do [ -s "$work/sink.port" ] && break; sleep 0.05; done
sink=http://127.0.0.1:$(cat "$work/sink.port")
cat > "$work/plugins/auth_http.toml" <<TOML
cache_ttl_secs = 300
[auth_req]
url = "$sink/mqtt/auth"
method = "post"
params = { clientid = "%c", username = "%u", password = "%P" }
[acl_req]
url = "$sink/mqtt/acl"
method = "get"
params = { access = "%A", username = "%u", clientid = "%c", topic = "%t" }
TOML

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
max_queued_bytes = 4294967296
memory_high_watermark = 0
[log]
level = "warn"
TOML
  "$BIN/broker" --config "$work/$1/broker.toml" >/dev/null 2>"$work/$1/broker.log" &
  pid=$!; pids="$pids $pid"
  for _ in $(seq 100); do [ -f "$work/$1/data/listeners.json" ] && break; sleep 0.05; done
}
start base '[]'; base_port=$port; base_pid=$pid
start with "$PLUGINS"; with_port=$port; with_pid=$pid
# Every plugin must be active, or the comparison means nothing.
listed=$("$BIN/brokerctl" --config "$work/with/broker.toml" plugins list)
for name in $(echo "$PLUGINS" | tr -d '[],"'); do
  echo "$listed" | grep -q "Plugin($name,.*state=active" || { echo "plugin $name is not active: $listed" >&2; exit 1; }
done
# CPU time the broker has used, in ns, summed over its threads.
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }
# Appends "<messages per second> <broker CPU ns per message>" for one run to $work/<name>.<qos>.
run() { # $1 = name, $2 = port, $3 = pid, $4 = mode, $5 = qos
  local before after rate
  before=$(cpu_ns "$3")
  rate=$("$BIN/mqtt-bench" --port "$2" --mode "$4" --qos "$5" --clients 10 --messages "$MESSAGES" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
  after=$(cpu_ns "$3")
  echo "$rate $(( (after - before) / MESSAGES ))" >> "$work/$1.$4.$5"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# Rounds alternate between the two brokers so that drift in the machine's load hits both.
# Throughput on a shared 2-core machine is noisy (the load generator competes for the same
# cores); the broker's CPU time per message is the steadier figure.
printf '%-8s %-4s %12s %12s %7s %16s %16s %7s\n' mode qos "msg/s none" "msg/s with" ratio "cpu ns/msg none" "cpu ns/msg with" ratio
for mode in $MODES; do
  for qos in 0 1; do
    : > "$work/base.$mode.$qos"; : > "$work/with.$mode.$qos"
    for round in $(seq "$ROUNDS"); do
      # Which runs first alternates: the first run of a round can measure lower.
      if [ $((round % 2)) = 1 ]; then
        run base "$base_port" "$base_pid" "$mode" "$qos"
        run with "$with_port" "$with_pid" "$mode" "$qos"
      else
        run with "$with_port" "$with_pid" "$mode" "$qos"
        run base "$base_port" "$base_pid" "$mode" "$qos"
      fi
    done
    base=$(cut -d' ' -f1 "$work/base.$mode.$qos" | median); with=$(cut -d' ' -f1 "$work/with.$mode.$qos" | median)
    base_cpu=$(cut -d' ' -f2 "$work/base.$mode.$qos" | median); with_cpu=$(cut -d' ' -f2 "$work/with.$mode.$qos" | median)
    printf '%-8s %-4s %12s %12s %7s %16s %16s %7s\n' "$mode" "$qos" "$base" "$with" "$(ratio "$with" "$base")" \
      "$base_cpu" "$with_cpu" "$(ratio "$with_cpu" "$base_cpu")"
  done
done
echo "with = $PLUGINS"
