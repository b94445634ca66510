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
# A private NATS server (with JetStream) per cluster test.
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null 2>&1 || need+=(nats-server)
# Headless Chromium and its WebDriver for the dashboard tests.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else
    echo "tests/run.sh: need root (or sudo) to install: ${need[*]}" >&2; exit 1
  fi
  echo "tests/run.sh: installing ${need[*]}"
  # The packages' services (mosquitto on 1883, mariadb, postgresql, redis, slapd, nats) must not
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

# The Windows build, run under Wine, when Wine and the MinGW-w64 cross compiler are installed
# (.ci/run installs them; SKIP_WINDOWS=1 leaves this out): tests/tests/windows.rs.
wine=$(command -v wine || command -v wine64 || true)
if [ -z "${SKIP_WINDOWS:-}" ] && [ -n "$wine" ] && command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu ||
    rustup target add x86_64-pc-windows-gnu
  cargo build -j2 --workspace --target x86_64-pc-windows-gnu
  export WINEPREFIX="${WINEPREFIX:-$PWD/target/wineprefix}" WINEDEBUG=-all
  system32="$WINEPREFIX/drive_c/windows/system32"
  [ -d "$system32" ] || "$wine" wineboot --init >/dev/null 2>&1 || true
  # Wine 8 lacks bcryptprimitives.dll, which every Rust program on Windows 10+ imports:
  # give this prefix a small one (tests/windows/bcryptprimitives.c). Newer Wine has its own.
  [ -e "$system32/bcryptprimitives.dll" ] ||
    x86_64-w64-mingw32-gcc -shared -O2 -o "$system32/bcryptprimitives.dll" \
      tests/windows/bcryptprimitives.c -ladvapi32
  BROKER_WINE="$wine" BROKER_BIN_DIR="$PWD/target/x86_64-pc-windows-gnu/debug" \
    cargo test -j2 -p broker-tests --test windows -- --ignored
else
  echo "tests/run.sh: Windows smoke test skipped (needs wine and gcc-mingw-w64-x86-64; SKIP_WINDOWS=${SKIP_WINDOWS:-})"
fi
