#!/usr/bin/env bash
# The whole test suite, as the README gives it: installs what the tests need (Debian packages,
# when missing), builds the workspace once, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
# mosquitto_passwd (Debian's mosquitto package) writes the password files auth_file reads.
command -v mosquitto_passwd >/dev/null 2>&1 || need+=(mosquitto)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
# Eclipse Paho for Python (the interoperability test runs it against the broker).
/usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || need+=(python3 python3-paho-mqtt)
# A private MariaDB server per auth_mysql test (mariadb-install-db + mariadbd, not a service).
{ command -v mariadbd || [ -x /usr/sbin/mariadbd ]; } >/dev/null 2>&1 || need+=(mariadb-server)
# Private PostgreSQL, Redis and OpenLDAP servers per auth_pgsql / auth_redis / auth_ldap test.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
{ command -v slapd || [ -x /usr/sbin/slapd ]; } >/dev/null 2>&1 || need+=(slapd)
command -v ldapadd >/dev/null 2>&1 || need+=(ldap-utils)
# Headless Chromium and its WebDriver for the dashboard tests.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else
    echo "tests/run.sh: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
  echo "tests/run.sh: installing ${need[*]}"
  # The packages' services (mosquitto on 1883, mariadb, postgresql, redis, slapd) must not
  # start: the tests run their own servers, and a system Mosquitto would hold the port the
  # shipped broker config uses.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

# MQTT.js for the WebSocket tests (from the npm registry).
(cd tests/js && npm install --no-audit --no-fund --loglevel=error)

cargo build -j2 --workspace
cargo test -j2 --workspace
