#!/usr/bin/env bash
# What durability costs: fan-in QoS 1 (CLIENTS publishers → 1 persistent subscriber) against
# this broker with [session] durability = "none" and = "ack", and against Mosquitto with
# `persistence true`, all running at once, rounds interleaved; medians of ROUNDS.
# Reports messages/s, PUBACK p50 / p99, fsyncs (store commits) per second and bytes written to
# disc per message (from /proc/<pid>/io).
#
#   bash tests/bench/durability.sh            ROUNDS=5 MESSAGES=100000 bash tests/bench/durability.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-50000}
CLIENTS=${CLIENTS:-10}
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

start_ours() { # $1 = durability; sets ${1}_pid and ${1}_port
  local port; port=$(free_port)
  start_broker "$work/$1" "$port" "[limits]
max_queued_messages = 1000000
max_queued_bytes = 4294967296
max_inflight = 32
[session]
durability = \"$1\""
  printf -v "${1}_pid" '%s' "$broker_pid"
  printf -v "${1}_port" '%s' "$port"
}
start_ours none
start_ours ack
mosq_port=$(free_port)
mkdir -p "$work/mosq"
cat > "$work/mosq/mosquitto.conf" <<CONF
listener $mosq_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/mosq/
max_queued_messages 1000000
max_inflight_messages 32
log_type error
CONF
mosquitto -c "$work/mosq/mosquitto.conf" 2>"$work/mosq/mosquitto.log" &
mosq_pid=$!; pids="$pids $mosq_pid"
sleep 0.3

written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
commits() { "$BIN/brokerctl" --config "$work/ack/broker.toml" metrics | awk '/^broker_store_commits_total/ {print $2}'; }

for round in $(seq "$ROUNDS"); do
  for who in none ack mosquitto; do
    case $who in
      none) port=$none_port; pid=$none_pid ;;
      ack) port=$ack_port; pid=$ack_pid ;;
      mosquitto) port=$mosq_port; pid=$mosq_pid ;;
    esac
    w0=$(written "$pid"); c0=0; [ "$who" = ack ] && c0=$(commits)
    line=$("$BIN/mqtt-bench" --port "$port" --mode fan-in --qos 1 --clients "$CLIENTS" --messages "$MESSAGES" --persistent true)
    w1=$(written "$pid"); c1=0; [ "$who" = ack ] && c1=$(commits)
    secs=$(sed -n 's/.*secs=\([0-9.]*\).*/\1/p' <<<"$line")
    echo "$who round=$round $line fsyncs_per_s=$(awk -v c=$((c1 - c0)) -v s="$secs" 'BEGIN {printf "%.0f", c / s}') bytes_written_per_msg=$(( (w1 - w0) / MESSAGES ))" | tee -a "$work/raw.txt"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-10s %10s %12s %12s %10s %14s\n' broker msgs/s puback_p50 puback_p99 fsyncs/s bytes/message
for who in none ack mosquitto; do
  col() { grep "^$who " "$work/raw.txt" | grep -o "$1=[0-9.]*" | cut -d= -f2 | median; }
  printf '%-10s %10s %10sms %10sms %10s %14s\n' "$who" "$(col rate)" "$(col puback_p50_ms)" "$(col puback_p99_ms)" "$(col fsyncs_per_s)" "$(col bytes_written_per_msg)"
done
none_rate=$(grep "^none " "$work/raw.txt" | grep -o "rate=[0-9]*" | cut -d= -f2 | median)
ack_rate=$(grep "^ack " "$work/raw.txt" | grep -o "rate=[0-9]*" | cut -d= -f2 | median)
echo "ack / none throughput: $(awk -v a="$ack_rate" -v n="$none_rate" 'BEGIN {printf "%.2f", a / n}')"
