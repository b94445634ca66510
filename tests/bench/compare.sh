#!/usr/bin/env bash
# Whole-broker throughput: this broker and Mosquitto, side by side, on this machine.
#
#   bash tests/bench/compare.sh            # 3 rounds per scenario, medians and ratios
#   ROUNDS=5 MESSAGES=200000 bash tests/bench/compare.sh
#
# Needs mosquitto (apt-get install mosquitto); builds the release binaries itself.
# The machine is shared and noisy: compare the ratio, not the absolute numbers.
# Both brokers get the same limits: 32 messages in flight per client and queues large enough
# that nothing is dropped, so "rate" is deliveries per second with every message delivered.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
CLIENTS=${CLIENTS:-10}
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
cargo build --release -j2 -p broker -p broker-tests >/dev/null
. tests/bench/common.sh

ours_port=$(free_port)
cat > "$work/broker.toml" <<TOML
data_dir = "$work/data"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$ours_port"
[limits]
max_queued_messages = 1000000
max_queued_bytes = 4294967296
memory_high_watermark = 0
max_inflight = 32
[log]
level = "warn"
TOML
"$BIN/broker" --config "$work/broker.toml" 2>"$work/broker.log" &
ours=$!; pids="$pids $ours"

theirs_port=$(free_port)
cat > "$work/mosquitto.conf" <<CONF
listener $theirs_port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
max_inflight_messages 32
log_type error
CONF
mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
theirs=$!; pids="$pids $theirs"
sleep 0.5

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf '%-8s %-4s %12s %12s %7s\n' mode qos broker mosquitto ratio
for mode in fan-in fan-out; do
  for qos in 0 1; do
    msgs=$MESSAGES
    [ "$mode" = fan-out ] && msgs=$((MESSAGES / CLIENTS))
    for who in ours theirs; do
      port=$ours_port; [ "$who" = theirs ] && port=$theirs_port
      for _ in $(seq "$ROUNDS"); do
        "$BIN/mqtt-bench" --port "$port" --mode "$mode" --qos "$qos" --clients "$CLIENTS" --messages "$msgs" \
          | tee -a "$work/$who.raw" | sed -n 's/.*rate=\([0-9]*\).*/\1/p'
      done | median > "$work/$who.median"
    done
    o=$(cat "$work/ours.median"); t=$(cat "$work/theirs.median")
    ratio=$(awk -v o="$o" -v t="$t" 'BEGIN { if (t > 0) printf "%.2f", o / t; else print "n/a" }')
    printf '%-8s %-4s %12s %12s %7s\n' "$mode" "$qos" "$o" "$t" "$ratio"
  done
done
echo
echo "raw runs (this broker):"; cat "$work/ours.raw"
echo "raw runs (mosquitto):"; cat "$work/theirs.raw"
