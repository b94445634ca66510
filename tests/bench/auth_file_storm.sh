#!/usr/bin/env bash
# auth_file under a connection storm: CLIENTS (1000) CONNECTs at once, each checked against a
# password file written by the real mosquitto_passwd ($7$, PBKDF2-SHA512, 101 iterations),
# while an already-connected client measures its publish round trip. Two runs on one broker:
# no authentication plugin (baseline), then auth_file. Needs mosquitto_passwd
# (apt-get install mosquitto).
#
#   bash tests/bench/auth_file_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-1000}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

mosquitto_passwd -c -b "$work/passwd" bench bench
port=$(free_port)
start_broker "$work" "$port"
mkdir -p "$work/plugins"
printf 'password_file = "%s"\n' "$work/passwd" > "$work/plugins/auth_file.toml"
ctl() { "$BIN/brokerctl" --config "$work/broker.toml" "$@" >/dev/null; }

echo "== no authentication plugin, $CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS" --username bench --password bench
ctl plugins load auth_file
echo "== auth_file (\$7\$, 101 iterations), $CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS" --username bench --password bench
