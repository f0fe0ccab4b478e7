#!/usr/bin/env bash
# Makes sure the local PostgreSQL server answers on 127.0.0.1:5432, starting the Debian
# cluster when it is down, and drops test schemas left behind by killed test runs.
set -euo pipefail

psql_admin() {
    psql -h 127.0.0.1 -p 5432 -U postgres -d test -v ON_ERROR_STOP=1 -Atq "$@"
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    if ! command -v pg_ctlcluster >/dev/null; then
        echo "postgres-up: PostgreSQL is not running and pg_ctlcluster is missing: install the postgresql package" >&2
        exit 1
    fi
    version=$(ls /etc/postgresql | sort -n | tail -1)
    echo "postgres-up: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    for _ in $(seq 1 30); do
        pg_isready -h 127.0.0.1 -p 5432 -q && break
        sleep 1
    done
fi
pg_isready -h 127.0.0.1 -p 5432

if ! psql_admin -c 'SELECT 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -q -c 'CREATE DATABASE test'
fi

# Test schemas are named mc_test_PID_N_RANDOM and dropped by the tests; a killed run leaves
# its schemas behind.
for schema in $(psql_admin -c "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'mc\_test\_%'"); do
    psql_admin -c "DROP SCHEMA \"$schema\" CASCADE" >/dev/null
done
