#!/usr/bin/env bash
# auth_mysql under a connection storm: CLIENTS (1000) CONNECTs at once, each checked against a
# private MariaDB (started here in a temporary directory, like the tests do), while an
# already-connected client measures its publish round trip. Three runs on one broker: no
# authentication plugin (baseline), auth_mysql with sha256, auth_mysql with bcrypt (cost 10,
# BCRYPT_CLIENTS (200) CONNECTs: each check costs tens of milliseconds of CPU by design).
#
#   bash tests/bench/auth_mysql_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-1000}
BCRYPT_CLIENTS=${BCRYPT_CLIENTS:-200}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh

# A private MariaDB.
small="--innodb-log-file-size=4M --innodb-data-file-path=ibdata1:4M:autoextend --innodb-buffer-pool-size=64M --performance-schema=OFF --skip-name-resolve"
as_root=""; [ "$(id -u)" = 0 ] && as_root="--user=root"
db_port=$(free_port)
mkdir -p "$work/tmp"
mariadb-install-db --no-defaults --datadir="$work/db" --tmpdir="$work/tmp" --auth-root-authentication-method=normal --skip-test-db $small $as_root >/dev/null 2>&1
mariadbd --no-defaults --datadir="$work/db" --tmpdir="$work/tmp" --port="$db_port" --bind-address=127.0.0.1 \
  --socket="$work/db.sock" --pid-file="$work/db.pid" --log-error="$work/db.log" $small $as_root & pids="$pids $!"
sql() { mariadb --no-defaults --socket="$work/db.sock" --user=root "$@"; }
for _ in $(seq 600); do sql -e 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
sql -e "create database mqtt; create user 'broker'@'%' identified by 'pw'; grant select on mqtt.* to 'broker'@'%'"
sql mqtt < etc/plugins/auth_mysql.sql
sql mqtt -e "insert into mqtt_user (username, password) values ('bench', sha2('bench', 256)),
  ('bench-bcrypt', '\$2b\$10\$FE7/.Tc7ARoBJjnZmkp83uuW3XzH.SZcscUr0lEsq1K6drGxtspNq')"

port=$(free_port)
mkdir -p "$work/plugins"
cat > "$work/broker.toml" <<TOML
data_dir = "$work/data"
plugin_dir = "$BIN"
[[listener]]
name = "tcp"
bind = "127.0.0.1:$port"
[admin]
bind = "127.0.0.1:0"
[log]
level = "warn"
TOML
"$BIN/broker" --config "$work/broker.toml" >/dev/null 2>"$work/broker.log" & pids="$pids $!"
for _ in $(seq 100); do [ -f "$work/data/listeners.json" ] && break; sleep 0.05; done
ctl() { "$BIN/brokerctl" --config "$work/broker.toml" "$@" >/dev/null; }
plugin_config() {
  printf 'server = "127.0.0.1:%s"\nusername = "broker"\npassword = "pw"\npassword_hash = "%s"\npool_size = 8\nquery_timeout_ms = 30000\n' \
    "$db_port" "$1" > "$work/plugins/auth_mysql.toml"
}

echo "== no authentication plugin, $CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS" --username bench --password bench
plugin_config sha256
ctl plugins load auth_mysql
echo "== auth_mysql, sha256, $CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS" --username bench --password bench
plugin_config bcrypt
ctl plugins reload auth_mysql
echo "== auth_mysql, bcrypt cost 10, $BCRYPT_CLIENTS CONNECTs at once"
"$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$BCRYPT_CLIENTS" --username bench-bcrypt --password bench
