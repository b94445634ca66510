#!/usr/bin/env bash
# The cluster plugin's cost, in one run: the same load on one broker without the plugin, on one
# node of a two-node cluster (publishers and subscribers on node 1), and across nodes
# (publishers on node 1, subscribers on node 2, through a local nats-server).
#
#   bash tests/bench/cluster.sh            # 3 rounds per scenario, medians
#   ROUNDS=5 MESSAGES=200000 bash tests/bench/cluster.sh
#
# Scenarios: fan-in (4 publishers → 1 subscriber) and fan-out (1 → 10) at QoS 0 and 1, then
# end-to-end latency at LAT_RATE msg/s QoS 1. Needs nats-server (apt-get install nats-server);
# builds the release binaries itself. The machine is shared and noisy: read the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
LAT_RATE=${LAT_RATE:-2000}
LAT_MESSAGES=${LAT_MESSAGES:-10000}
command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install nats-server)" >&2; exit 1; }
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids="$pids $!"
limits='[limits]
max_queued_messages = 1000000
max_queued_bytes = 4294967296
memory_high_watermark = 0
max_inflight = 32'
cluster_node() { # DIR PORT NAME
  mkdir -p "$1/plugins"
  printf 'servers = ["nats://127.0.0.1:%s"]\noutbound_queue = 1000000\n' "$nats_port" > "$1/plugins/cluster.toml"
  TOP="node_name = \"$3\"" start_broker "$1" "$2" "$limits
[plugins]
enabled = [\"cluster\"]"
}
single=$(free_port); start_broker "$work/single" "$single" "$limits"
n1=$(free_port); cluster_node "$work/n1" "$n1" n1
n2=$(free_port); cluster_node "$work/n2" "$n2" n2
for _ in $(seq 200); do
  "$BIN/brokerctl" --config "$work/n1/broker.toml" cluster status 2>/dev/null | grep -q "nodes: 2" && break
  sleep 0.1
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" | median; }
# run NAME ARGS…: one round of mqtt-bench, its output line appended to $work/NAME.
run() { local name=$1; shift; "$BIN/mqtt-bench" "$@" >> "$work/$name.out"; }

printf '%-8s %-4s %12s %12s %12s %8s\n' mode qos single cluster-1 cross-node cross/single
for mode in fan-in fan-out; do
  clients=4; [ "$mode" = fan-out ] && clients=10
  for qos in 0 1; do
    msgs=$MESSAGES; [ "$mode" = fan-out ] && msgs=$((MESSAGES / 10))
    common=(--mode "$mode" --qos "$qos" --clients "$clients" --messages "$msgs")
    rm -f "$work"/{single,local,cross}.out
    for _ in $(seq "$ROUNDS"); do
      run single --port "$single" "${common[@]}"
      run local --port "$n1" "${common[@]}"
      run cross --port "$n1" --sub-port "$n2" --settle-ms 500 "${common[@]}"
    done
    s=$(field rate < "$work/single.out"); l=$(field rate < "$work/local.out"); c=$(field rate < "$work/cross.out")
    printf '%-8s %-4s %12s %12s %12s %8.2f\n' "$mode" "$qos" "$s" "$l" "$c" "$(awk -v c="$c" -v s="$s" 'BEGIN {print (s > 0 ? c / s : 0)}')"
    lost=$(awk '{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}; if (v["received"]!=v["expected"]) print "round lost " v["expected"]-v["received"]}' "$work/cross.out")
    [ -z "$lost" ] || echo "  cross-node: $lost"
  done
done

echo
echo "latency, QoS 1 at $LAT_RATE msg/s (ms, medians of $ROUNDS): e2e p50 / p99"
rm -f "$work"/{single,local,cross}.out
for _ in $(seq "$ROUNDS"); do
  lat=(--mode latency --qos 1 --rate "$LAT_RATE" --messages "$LAT_MESSAGES")
  run single --port "$single" "${lat[@]}"
  run local --port "$n1" "${lat[@]}"
  run cross --port "$n1" --sub-port "$n2" --settle-ms 500 "${lat[@]}"
done
for who in single local cross; do
  printf '%-8s %s / %s\n' "$who" "$(field e2e_p50_ms < "$work/$who.out")" "$(field e2e_p99_ms < "$work/$who.out")"
done
