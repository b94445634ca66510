#!/usr/bin/env bash
# Hostile clients against everyone else's latency: FLOODERS connections send PINGREQ (then
# SUBSCRIBE/UNSUBSCRIBE pairs) as fast as the broker takes them, while one client measures its
# publish → receive round trip, first without the flood and then during it. The ratio of the
# two is what matters (the machine is shared and noisy); ROUNDS rounds, medians reported.
#
#   bash tests/bench/flood.sh          FLOODERS=4 SECONDS_EACH=2 ROUNDS=5 bash tests/bench/flood.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
FLOODERS=${FLOODERS:-1}
SECONDS_EACH=${SECONDS_EACH:-2}
ROUNDS=${ROUNDS:-5}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

port=$(free_port)
start_broker "$work" "$port"
pid=$broker_pid
for mode in flood-ping flood-subscribe; do
  echo "== $mode, $FLOODERS flooder(s), $ROUNDS rounds of ${SECONDS_EACH}s"
  for _ in $(seq "$ROUNDS"); do
    "$BIN/mqtt-bench" --port "$port" --mode "$mode" --clients "$FLOODERS" --messages $((SECONDS_EACH * 1000))
  done | tee "$work/$mode.txt"
  for key in p50_ratio p99_ratio requests_written_per_s; do
    printf '%s median: ' "$key"
    grep -o "$key=[0-9.]*" "$work/$mode.txt" | cut -d= -f2 | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
  done
done
kill "$pid"; wait "$pid" 2>/dev/null || true; pids=""
