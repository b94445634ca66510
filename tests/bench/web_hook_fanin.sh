#!/usr/bin/env bash
# Fan-in QoS 0 throughput with web_hook sending every message.publish event, as a ratio to no
# plugin, in one run: (1) web_hook posting to a fast local service (http-sink, batches of BATCH),
# (2) web_hook pointed at a port where nothing listens (every request fails, events are
# retried then dropped). Three brokers; rounds alternate between them.
#
#   bash tests/bench/web_hook_fanin.sh        ROUNDS=5 MESSAGES=200000 bash tests/bench/web_hook_fanin.sh
#   QUEUE=1000000 bash tests/bench/web_hook_fanin.sh   # a queue the burst fits in: nothing dropped
#   BATCH=1000 bash tests/bench/web_hook_fanin.sh      # events per request
#
# The drop counts printed at the end say how much of the burst the bounded queue let go.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-200000}
BATCH=${BATCH:-100}     # events per request
QUEUE=${QUEUE:-10000}   # queue_capacity: events waiting beyond it are dropped (and counted)
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$BIN/http-sink" > "$work/sink.port" & pids="$pids $!"
for _ in $(seq 100); do [ -s "$work/sink.port" ] && break; sleep 0.05; done
sink=$(cat "$work/sink.port")
dead=$(free_port)

start() { # $1 = name, $2 = web_hook url ("" = no plugin); sets $port
  port=$(free_port)
  mkdir -p "$1"
  local enabled='[]'
  if [ -n "$2" ]; then
    enabled='["web_hook"]'
    mkdir -p "$1/plugins"
    printf 'url = "%s"\nbatch_size = %s\nqueue_capacity = %s\npool_size = 8\nmax_retries = 2\nretry_backoff_ms = 100\n[[rule]]\nevent = "message.publish"\n' "$2" "$BATCH" "$QUEUE" > "$1/plugins/web_hook.toml"
  fi
  start_broker "$1" "$port" "[plugins]
enabled = $enabled
config_dir = \"$1/plugins\"
[limits]
max_queued_messages = 1000000
max_queued_bytes = 4294967296
memory_high_watermark = 0"
}
start "$work/none" ""; none_port=$port
start "$work/up" "http://127.0.0.1:$sink/hook"; up_port=$port
start "$work/down" "http://127.0.0.1:$dead/hook"; down_port=$port

run() { # $1 = name, $2 = port
  "$BIN/mqtt-bench" --port "$2" --mode fan-in --qos 0 --clients 4 --messages "$MESSAGES" \
    | sed -n 's/.*rate=\([0-9]*\).*/\1/p' >> "$work/$1.rates"
}
# After a run with the service up, its requests still in flight would take CPU from the next
# run: wait until the events sent and dropped stop changing.
settle() { # $1 = broker dir
  local last="" now
  for _ in $(seq 60); do
    now=$("$BIN/brokerctl" --config "$1/broker.toml" metrics \
      | awk '/^broker_plugin_web_hook_(sent|dropped)_total/ {n += $2} END {print n + 0}')
    [ "$now" = "$last" ] && return 0
    last=$now; sleep 0.6
  done
}
# The order rotates every round: the first run of a round can measure lower.
for round in $(seq "$ROUNDS"); do
  case $((round % 3)) in
    1) run none "$none_port"; run up "$up_port"; settle "$work/up"; run down "$down_port" ;;
    2) run up "$up_port"; settle "$work/up"; run down "$down_port"; run none "$none_port" ;;
    0) run down "$down_port"; run none "$none_port"; run up "$up_port"; settle "$work/up" ;;
  esac
done
none=$(median < "$work/none.rates"); up=$(median < "$work/up.rates"); down=$(median < "$work/down.rates")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "fan-in QoS 0, 4 publishers, $MESSAGES messages, median of $ROUNDS rounds (msg/s):"
echo "  no plugin                 $none"
echo "  web_hook, service up      $up   ratio $(ratio "$up" "$none")"
echo "  web_hook, service down    $down   ratio $(ratio "$down" "$none")"
metrics() { "$BIN/brokerctl" --config "$1/broker.toml" metrics | grep '^broker_plugin_web_hook' | tr '\n' ' '; }
echo "  up:   $(metrics "$work/up")"
echo "  down: $(metrics "$work/down")"
