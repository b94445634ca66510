#!/usr/bin/env bash
# The database auth plugins under a connection storm: CLIENTS (1000) CONNECTs at once, each
# checked with a sha256 password against a private server started here (MariaDB for
# auth_mysql, PostgreSQL for auth_pgsql, Redis for auth_redis, slapd for auth_ldap), while an
# already-connected client measures its publish round trip. One broker; a baseline without an
# authentication plugin first, then each plugin alone.
#
#   bash tests/bench/auth_backends_storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS=${CLIENTS:-1000}
cargo build --release -j2 --workspace >/dev/null
. tests/bench/common.sh
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
wait_for() { for _ in $(seq 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $*" >&2; return 1; }

# MariaDB.
small="--innodb-log-file-size=4M --innodb-data-file-path=ibdata1:4M:autoextend --innodb-buffer-pool-size=64M --performance-schema=OFF --skip-name-resolve"
as_root=""; [ "$(id -u)" = 0 ] && as_root="--user=root"
my_port=$(free_port); mkdir -p "$work/mytmp"
mariadb-install-db --no-defaults --datadir="$work/my" --tmpdir="$work/mytmp" --auth-root-authentication-method=normal --skip-test-db $small $as_root >/dev/null 2>&1
mariadbd --no-defaults --datadir="$work/my" --tmpdir="$work/mytmp" --port="$my_port" --bind-address=127.0.0.1 \
  --socket="$work/my.sock" --pid-file="$work/my.pid" --log-error="$work/my.log" $small $as_root & pids="$pids $!"
my() { mariadb --no-defaults --socket="$work/my.sock" --user=root "$@"; }
wait_for my -e 'select 1'
my -e "create database mqtt; create user 'broker'@'%' identified by 'pw'; grant select on mqtt.* to 'broker'@'%'"
my mqtt < etc/plugins/auth_mysql.sql
my mqtt -e "insert into mqtt_user (username, password) values ('bench', sha2('bench', 256))"

# PostgreSQL (not as root).
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg_port=$(free_port); mkdir -p "$work/pg"
as_pg=(); [ "$(id -u)" = 0 ] && { chown postgres "$work" "$work/pg"; as_pg=(runuser -u postgres --); }
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p "$pg_port" -k "$work/pg" -c listen_addresses=127.0.0.1 -c fsync=off >"$work/pg.log" 2>&1 & pids="$pids $!"
pg() { psql -h "$work/pg" -p "$pg_port" -U postgres -At "$@"; }
wait_for pg -c 'select 1'
pg -c "create user broker password 'pw'" >/dev/null; pg -c "create database mqtt owner broker" >/dev/null
psql -h "$work/pg" -p "$pg_port" -U broker -d mqtt -q -f etc/plugins/auth_pgsql.sql
pg -d mqtt -c "insert into mqtt_user (username, password) values ('bench', '$(sha256 bench)')" >/dev/null

# Redis.
rd_port=$(free_port)
redis-server --port "$rd_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" --requirepass pw >/dev/null & pids="$pids $!"
wait_for redis-cli -p "$rd_port" -a pw --no-auth-warning ping
redis-cli -p "$rd_port" -a pw --no-auth-warning HSET mqtt_user:bench password "$(sha256 bench)" >/dev/null

# slapd.
ld_port=$(free_port); mkdir -p "$work/ldap"
cat > "$work/ldap/slapd.conf" <<CONF
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include $PWD/etc/plugins/auth_ldap.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile $work/ldap/slapd.pid
database mdb
maxsize 10485760
suffix "dc=emqx,dc=io"
rootdn "cn=root,dc=emqx,dc=io"
rootpw pw
directory $work/ldap
CONF
/usr/sbin/slapd -f "$work/ldap/slapd.conf" -h "ldap://127.0.0.1:$ld_port/" -d 0 >/dev/null 2>&1 & pids="$pids $!"
wait_for ldapwhoami -x -H "ldap://127.0.0.1:$ld_port" -D cn=root,dc=emqx,dc=io -w pw
ldap_sha256="{SHA256}$(printf bench | sha256sum | cut -d' ' -f1 | xxd -r -p | base64)"
ldapadd -x -H "ldap://127.0.0.1:$ld_port" -D cn=root,dc=emqx,dc=io -w pw >/dev/null <<LDIF
dn: dc=emqx,dc=io
objectClass: dcObject
objectClass: organization
o: emqx
dc: emqx

dn: ou=device,dc=emqx,dc=io
objectClass: organizationalUnit
ou: device

dn: uid=bench,ou=device,dc=emqx,dc=io
objectClass: account
objectClass: simpleSecurityObject
objectClass: mqttUser
uid: bench
userPassword: $ldap_sha256
LDIF

port=$(free_port)
start_broker "$work/broker" "$port"
mkdir -p "$work/broker/plugins"
ctl() { "$BIN/brokerctl" --config "$work/broker/broker.toml" "$@" >/dev/null; }
printf 'server = "127.0.0.1:%s"\nusername = "broker"\npassword = "pw"\npassword_hash = "sha256"\nquery_timeout_ms = 30000\n' "$my_port" > "$work/broker/plugins/auth_mysql.toml"
printf 'server = "127.0.0.1:%s"\nusername = "broker"\npassword = "pw"\npassword_hash = "sha256"\nquery_timeout_ms = 30000\n' "$pg_port" > "$work/broker/plugins/auth_pgsql.toml"
printf 'server = "127.0.0.1:%s"\npassword = "pw"\npassword_hash = "sha256"\nquery_timeout_ms = 30000\n' "$rd_port" > "$work/broker/plugins/auth_redis.toml"
printf 'servers = ["127.0.0.1"]\nport = %s\nbind_password = "pw"\ntimeout_ms = 30000\n' "$ld_port" > "$work/broker/plugins/auth_ldap.toml"

storm() { "$BIN/mqtt-bench" --port "$port" --mode connect-storm --clients "$CLIENTS" --username bench --password bench; }
echo "== no authentication plugin, $CLIENTS CONNECTs at once"
storm
for plugin in auth_mysql auth_pgsql auth_redis auth_ldap; do
  ctl plugins load "$plugin"
  echo "== $plugin, sha256, $CLIENTS CONNECTs at once"
  storm
  ctl plugins unload "$plugin"
done
