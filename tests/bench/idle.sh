#!/usr/bin/env bash
# Idle connections: what one costs in memory, how fast they connect, and that an idle broker
# does not spin. This broker (with the shipped plugins of etc/broker.toml loaded) and Mosquitto,
# rounds interleaved on this machine, each on a freshly started broker, medians over ROUNDS.
#
#   bash tests/bench/idle.sh                         # 19 000 connections, 100 at a time
#   CLIENTS=10000 ROUNDS=3 bash tests/bench/idle.sh
#   BEFORE=/path/to/older/broker bash tests/bench/idle.sh   # adds that binary as a column
#   SUBSCRIBE=1 bash tests/bench/idle.sh             # each device also subscribes (QoS 1) to
#                                                    # devices/<id>/cmd, its own command topic
#
# Reported per broker: RSS at start with no client (SETTLE_SECS after its listeners are up:
# start-up's own allocations are given back by then), RSS growth per connection (KiB, from 0
# to CLIENTS), connects per second, the broker's CPU time per connect while they connect
# (user and system, from /proc: what a connect costs it whatever the load generator's own speed
# on this machine), CPU used while the connections sit idle for IDLE_SECS
# (percent of one core), and RSS LEFT_SECS after every client has gone (what an idle broker
# keeps of the memory the connections used). Needs mosquitto (apt-get install mosquitto);
# builds the release binaries itself.
# The file limit here is 20 000: keep CLIENTS below it.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-19000}
ROUNDS=${ROUNDS:-3}
IDLE_SECS=${IDLE_SECS:-5}
LEFT_SECS=${LEFT_SECS:-5}
SETTLE_SECS=${SETTLE_SECS:-3}
CONCURRENCY=${CONCURRENCY:-100}
SUBSCRIBE=${SUBSCRIBE:-0}
subscribe=false; [ "$SUBSCRIBE" = 1 ] && subscribe=true
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
ulimit -n 20000 2>/dev/null || true
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# One round against the broker running as $1 on port $2: prints
# "rss0 per_conn_kib rate cpu_pct rss_after_clients_left".
round() {
  local pid=$1 port=$2 out="$work/bench.out"
  rm -f "$out"
  sleep "$SETTLE_SECS"
  local rss0; rss0=$(rss_kib "$pid")
  local c0; c0=$(cpu_ticks "$pid")
  "$BIN/mqtt-bench" --port "$port" --mode idle --clients "$CLIENTS" --window "$CONCURRENCY" \
    --subscribe "$subscribe" --messages $((IDLE_SECS + 20)) > "$out" &
  local bench=$!
  for _ in $(seq 600); do grep -q connects_per_sec "$out" 2>/dev/null && break; sleep 0.1; done
  local rate; rate=$(sed -n 's/.*connects_per_sec=\([0-9]*\).*/\1/p' "$out")
  local connected; connected=$(sed -n 's/.* connected=\([0-9]*\).*/\1/p' "$out")
  local c1; c1=$(cpu_ticks "$pid")
  sleep 1
  local rss1; rss1=$(rss_kib "$pid")
  local t0; t0=$(cpu_ticks "$pid")
  sleep "$IDLE_SECS"
  local t1; t1=$(cpu_ticks "$pid")
  kill "$bench" 2>/dev/null; wait "$bench" 2>/dev/null || true
  sleep "$LEFT_SECS"
  local rss2; rss2=$(rss_kib "$pid")
  local hz; hz=$(getconf CLK_TCK)
  awk -v r0="$rss0" -v r1="$rss1" -v n="$connected" -v rate="$rate" -v t0="$t0" -v t1="$t1" \
      -v hz="$hz" -v s="$IDLE_SECS" -v r2="$rss2" -v c0="$c0" -v c1="$c1" \
    'BEGIN { printf "%d %.2f %d %.1f %d %.1f\n", r0, (n > 0 ? (r1 - r0) / n : 0), rate, 100 * (t1 - t0) / hz / s, r2, (n > 0 ? 1e6 * (c1 - c0) / hz / n : 0) }'
}

# Each round runs against a freshly started broker: some of the memory a broker has once used
# stays with it (the last row says how much), and a second round on the same process would
# start from there.
# start_one NAME: starts broker NAME (ours, before, mosquitto); sets $pid and $port.
start_one() {
  port=$(free_port)
  case $1 in
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\nlog_type error\n' \
        "$port" > "$work/mosquitto.conf"
      mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
      pid=$!; pids="$pids $pid"
      sleep 0.5 ;;
    *)
      local bin=$BIN/broker
      [ "$1" = before ] && bin=$BEFORE
      rm -rf "$work/$1"
      BIN_BROKER=$bin start_broker "$work/$1" "$port" '[plugins]
enabled = ["retainer", "presence", "dashboard"]'
      pid=$broker_pid ;;
  esac
}

names=(ours)
[ -n "${BEFORE:-}" ] && names+=(before)
names+=(mosquitto)
for _ in $(seq "$ROUNDS"); do
  for name in "${names[@]}"; do
    start_one "$name"
    round "$pid" "$port" >> "$work/$name.rounds"
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  done
done

col() { awk -v c="$1" '{print $c}' "$work/$2.rounds" | median; }
label="idle, $CLIENTS connections"; [ "$SUBSCRIBE" = 1 ] && label="$label, subscribed"
printf '%-30s' "$label"; for n in "${names[@]}"; do printf ' %12s' "$n"; done
printf ' %10s\n' "ours/mosq"
for row in "1 RSS at start (KiB)" "2 RSS per connection (KiB)" "3 connects/s" "6 CPU per connect (us)" \
  "4 CPU while idle (% core)" "5 RSS after clients left (KiB)"; do
  c=${row%% *}; name=${row#* }
  printf '%-30s' "$name"
  for n in "${names[@]}"; do printf ' %12s' "$(col "$c" "$n")"; done
  a=$(col "$c" ours); b=$(col "$c" mosquitto)
  printf ' %10s\n' "$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
done
