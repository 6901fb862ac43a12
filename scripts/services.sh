#!/usr/bin/env bash
# Makes sure the real servers the test suite talks to are up: PostgreSQL on 127.0.0.1:5432
# (user postgres, trust auth, database `test`) and Redis on 127.0.0.1:6379. When one is
# absent it is installed from Debian's packages (if needed) and started; nothing is mocked.
# Sourced by scripts/test.sh. The tests use those default addresses; DATABASE_URL and
# REDIS_URL are deliberately NOT exported (the `sapphire` processes the tests start would pick
# them up and change what they test).
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

PG_PORT="${SAPPHIRE_PG_PORT:-5432}"
REDIS_PORT="${SAPPHIRE_REDIS_PORT:-6379}"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "services: need root (or sudo) to run: $*" >&2
    return 1
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # port what
  for _ in $(seq 1 100); do
    listening "$1" && return 0
    sleep 0.1
  done
  echo "services: $2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

ensure_redis() {
  if listening "$REDIS_PORT"; then return 0; fi
  echo "services: no Redis on 127.0.0.1:$REDIS_PORT; starting one"
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --save '' --appendonly no \
    --logfile "${SAPPHIRE_SERVICES_DIR}/redis.log"
  wait_for "$REDIS_PORT" Redis
}

ensure_postgres() {
  if listening "$PG_PORT"; then return 0; fi
  echo "services: no PostgreSQL on 127.0.0.1:$PG_PORT; starting one"
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then apt_install postgresql; fi
  local bin
  bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  local data="${SAPPHIRE_SERVICES_DIR}/pgdata"
  local run=(env)
  if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root: the cluster belongs to the postgres user.
    id postgres >/dev/null 2>&1 || as_root useradd --system --home-dir /var/lib/postgresql postgres
    mkdir -p "$data"
    chown -R postgres "$SAPPHIRE_SERVICES_DIR"
    run=(runuser -u postgres --)
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    "${run[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  "${run[@]}" "$bin/pg_ctl" -D "$data" -l "$SAPPHIRE_SERVICES_DIR/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$SAPPHIRE_SERVICES_DIR -c fsync=off" start >/dev/null
  wait_for "$PG_PORT" PostgreSQL
}

ensure_test_database() {
  # Create `test` if it is missing (psql comes with the server packages).
  local psql
  psql=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1)
  if [ -z "$psql" ]; then apt_install postgresql-client; psql=$(command -v psql); fi
  if ! "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d test -tAc 'select 1' >/dev/null 2>&1; then
    "$psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qc 'create database test' >/dev/null
  fi
}

SAPPHIRE_SERVICES_DIR="${SAPPHIRE_SERVICES_DIR:-$(pwd)/target/services}"
mkdir -p "$SAPPHIRE_SERVICES_DIR"
ensure_redis
ensure_postgres
ensure_test_database
echo "services: PostgreSQL on 127.0.0.1:$PG_PORT and Redis on 127.0.0.1:$REDIS_PORT are up"
