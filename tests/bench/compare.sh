#!/usr/bin/env bash
# Whole-broker throughput: this broker and Mosquitto, side by side, on this machine.
#
#   bash tests/bench/compare.sh            # 3 rounds per scenario, medians and ratios
#   ROUNDS=5 MESSAGES=200000 bash tests/bench/compare.sh
#   BEFORE=/path/to/older/broker bash tests/bench/compare.sh   # adds that binary (A/B)
#   RUMQTTD=$(command -v rumqttd) bash tests/bench/compare.sh   # adds rumqttd (cargo install rumqttd)
#   MODES= bash tests/bench/compare.sh     # latency only (MODES="fan-in" for one throughput mode)
#
# Then end-to-end and PUBACK latency at light load (LAT_RATE=2000 msg/s QoS 1, LAT_MESSAGES).
#
# Needs mosquitto (apt-get install mosquitto); builds the release binaries itself.
# The machine is shared and noisy: compare the ratio, not the absolute numbers. Rounds of the
# brokers alternate, in an order rotated every round, so drift in the machine's load hits them
# alike.
# All brokers get the same limits: INFLIGHT (100) QoS 1 messages in flight towards each client
# and queues large enough that nothing is dropped, so "rate" is deliveries per second with
# every message delivered. 100 because rumqttd 0.20 has no setting for it: its window towards
# a client is fixed at 100 (`MAX_INFLIGHT` in its router; its `max_inflight_count` sizes the
# reads from a client). With a window of W, fan-in QoS 1 moves at most W messages per round
# trip to the one subscriber, so the brokers must share it. INFLIGHT=32 gives the window of the
# shipped configuration to this broker and Mosquitto (rumqttd keeps 100).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
CLIENTS=${CLIENTS:-10}
INFLIGHT=${INFLIGHT:-100}
command -v mosquitto >/dev/null || { echo "mosquitto not installed (apt-get install mosquitto)" >&2; exit 1; }
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

# ours_toml DIR PORT: the configuration of one of our brokers.
ours_toml() {
  cat <<TOML
data_dir = "$1/data"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$2"
[admin]
bind = "127.0.0.1:0"
[limits]
max_queued_messages = 1000000
max_queued_bytes = 4294967296
memory_high_watermark = 0
max_inflight = $INFLIGHT
[log]
level = "warn"
TOML
}

declare -A port
names=(ours)
[ -n "${BEFORE:-}" ] && names+=(before)
names+=(mosquitto)
[ -n "${RUMQTTD:-}" ] && names+=(rumqttd)
for who in "${names[@]}"; do
  port[$who]=$(free_port)
  mkdir -p "$work/$who"
  case $who in
    mosquitto)
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages %s\nlog_type error\n' \
        "${port[$who]}" "$INFLIGHT" > "$work/$who/mosquitto.conf"
      mosquitto -c "$work/$who/mosquitto.conf" 2>"$work/$who/log" & ;;
    rumqttd)
      # rumqttd 0.20: one MQTT 3.1.1 server, room for every client; its window towards a
      # client is 100 whatever the configuration (see above).
      cat > "$work/$who/rumqttd.toml" <<TOML
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:${port[$who]}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 20480
max_inflight_count = 32
dynamic_filters = true
TOML
      "$RUMQTTD" --config "$work/$who/rumqttd.toml" >"$work/$who/log" 2>&1 & ;;
    *)
      bin=$BIN/broker; [ "$who" = before ] && bin=$BEFORE
      ours_toml "$work/$who" "${port[$who]}" > "$work/$who/broker.toml"
      "$bin" --config "$work/$who/broker.toml" 2>"$work/$who/log" & ;;
  esac
  pids="$pids $!"
done
# Wait until every broker accepts connections.
for who in "${names[@]}"; do
  up=""
  for _ in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/${port[$who]}") 2>/dev/null; then up=1; break; fi
    sleep 0.05
  done
  [ -n "$up" ] || { echo "$who did not start:" >&2; cat "$work/$who/log" >&2; exit 1; }
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The brokers in the order of round $1: rotated every round, so that none always runs first
# (in fan-in QoS 1 the broker run first in every round measured 20-25 % below a build no
# different on that path run second).
order() { local n=${#names[@]} i; for ((i = 0; i < n; i++)); do echo "${names[$(( ($1 + i) % n ))]}"; done; }

printf '%-8s %-4s' mode qos; for who in "${names[@]}"; do printf ' %12s' "$who"; done
printf ' %10s' ours/mosq; [ -n "${BEFORE:-}" ] && printf ' %12s' ours/before
[ -n "${RUMQTTD:-}" ] && printf ' %12s' ours/rumqttd; echo
for mode in ${MODES-fan-in fan-out}; do
  for qos in 0 1; do
    msgs=$MESSAGES
    [ "$mode" = fan-out ] && msgs=$((MESSAGES / CLIENTS))
    for who in "${names[@]}"; do : > "$work/$who.rates"; done
    for round in $(seq "$ROUNDS"); do
      for who in $(order "$round"); do
        "$BIN/mqtt-bench" --port "${port[$who]}" --mode "$mode" --qos "$qos" --clients "$CLIENTS" \
          --messages "$msgs" | tee -a "$work/$who.raw" \
          | sed -n 's/.*rate=\([0-9]*\).*/\1/p' >> "$work/$who.rates"
      done
    done
    declare -A med
    for who in "${names[@]}"; do med[$who]=$(median < "$work/$who.rates"); done
    ratio() { awk -v o="$1" -v t="$2" 'BEGIN { if (t > 0) printf "%.2f", o / t; else print "n/a" }'; }
    printf '%-8s %-4s' "$mode" "$qos"
    for who in "${names[@]}"; do printf ' %12s' "${med[$who]}"; done
    printf ' %10s' "$(ratio "${med[ours]}" "${med[mosquitto]}")"
    [ -n "${BEFORE:-}" ] && printf ' %12s' "$(ratio "${med[ours]}" "${med[before]}")"
    [ -n "${RUMQTTD:-}" ] && printf ' %12s' "$(ratio "${med[ours]}" "${med[rumqttd]}")"
    echo
  done
done

# Latency at light load: one publisher at LAT_RATE msg/s QoS 1, one subscriber.
LAT_RATE=${LAT_RATE:-2000}
LAT_MESSAGES=${LAT_MESSAGES:-10000}
echo
echo "latency, QoS 1 at $LAT_RATE msg/s (ms, medians of $ROUNDS): e2e p50 / p99, PUBACK p50 / p99"
for who in "${names[@]}"; do : > "$work/$who.lat"; done
for round in $(seq "$ROUNDS"); do
  for who in $(order "$round"); do
    "$BIN/mqtt-bench" --port "${port[$who]}" --mode latency --qos 1 --rate "$LAT_RATE" \
      --messages "$LAT_MESSAGES" | tee -a "$work/$who.raw" >> "$work/$who.lat"
  done
done
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" "$2" | median; }
for who in "${names[@]}"; do
  printf '%-10s %8s / %8s   %8s / %8s\n' "$who" \
    "$(field e2e_p50_ms "$work/$who.lat")" "$(field e2e_p99_ms "$work/$who.lat")" \
    "$(field puback_p50_ms "$work/$who.lat")" "$(field puback_p99_ms "$work/$who.lat")"
done
echo
for who in "${names[@]}"; do echo "raw runs ($who):"; cat "$work/$who.raw"; done
