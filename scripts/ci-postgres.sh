#!/usr/bin/env bash
# Starts a local PostgreSQL for the store's tests (CI): the store runs every query on
# SQLite and, with NIMBUS_TEST_POSTGRES_URL set, on PostgreSQL too. Prints the URL.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $2}' | grep -qx main; then
    pg_createcluster "$ver" main >/dev/null
fi
pg_ctlcluster "$ver" main start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
    su postgres -c "psql -qtAc 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 0.5
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = 'nimbus'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"CREATE USER nimbus PASSWORD 'nimbus' SUPERUSER\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'nimbus_test'\"" | grep -q 1 ||
    su postgres -c "createdb -O nimbus nimbus_test"
echo "postgres://nimbus:nimbus@127.0.0.1:5432/nimbus_test"
