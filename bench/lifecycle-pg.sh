#!/usr/bin/env bash
# Times `medconnect lifecycle run` on a PostgreSQL store of LINKS patient links with 5
# consultations each, 30% of them past retention: with one node, with two nodes at once,
# and next to plain SQL DELETE statements that remove the same rows (the floor). After the
# two-node run it checks that every expired link has exactly one receipt.
#
# Each timed command starts from a fresh copy of a seed database (CREATE DATABASE …
# TEMPLATE), so every run deletes the same rows.
#
# Usage: bench/lifecycle-pg.sh              (1,000,000 links; about 4 GB in PostgreSQL)
#        LINKS=100000 RUNS=1 bench/lifecycle-pg.sh
# Needs: hyperfine and psql, and PostgreSQL on 127.0.0.1:5432 with trust authentication.
set -euo pipefail

LINKS=${LINKS:-1000000}
RUNS=${RUNS:-3}
AS_OF=2026-01-01T00:00:00Z
HOST=${PGHOST_BENCH:-127.0.0.1}
SEED_DB=mc_bench_seed
RUN_DB=mc_bench_run
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bench/out-pg
bin=$root/target/release/medconnect

for tool in hyperfine psql; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found; install it with apt-get install $tool" >&2; exit 1; }
done
bash "$root/scripts/postgres-up.sh" >/dev/null
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
rm -rf "$out" && mkdir -p "$out"

admin() { psql -h "$HOST" -U postgres -v ON_ERROR_STOP=1 -Atq "$@"; }
admin -d postgres -c "DROP DATABASE IF EXISTS $RUN_DB" -c "DROP DATABASE IF EXISTS $SEED_DB" \
    -c "CREATE DATABASE $SEED_DB"

echo "building a store with $LINKS links and $((LINKS * 5)) consultations ..."
export MEDCONNECT_DATABASE_URL=postgres://$HOST:5432/$SEED_DB
"$bin" --data-dir "$out/node" init --simulated-clock \
    --admin-url "postgres://postgres@$HOST:5432/$SEED_DB" >/dev/null
"$bin" --data-dir "$out/node" tenant create bench >/dev/null
admin -d "$SEED_DB" <<SQL
SET search_path TO medconnect;
BEGIN;
-- Synthetic ids in UUID form. Sealed columns hold plaintext bytes here: the benchmark times
-- deletion, which never decrypts. 3 in 10 links had their last encounter in 2015 (expired as
-- of $AS_OF), the rest in 2024.
INSERT INTO patient_profiles (id, source_system, source_index, given_name, family_name,
    birth_date, sex, address_line, city, state, postal_code, created_at)
SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'), 'bench',
    'src-' || i, convert_to('Given' || i, 'UTF8'), convert_to('Family' || i, 'UTF8'),
    convert_to('1970-01-01', 'UTF8'), convert_to('F', 'UTF8'),
    convert_to(i || ' Bench Road', 'UTF8'), convert_to('Lincoln', 'UTF8'),
    convert_to('Nebraska', 'UTF8'), convert_to('68504', 'UTF8'), '2026-01-01T00:00:00Z'
FROM generate_series(0, $LINKS - 1) AS i;
INSERT INTO patient_links (tenant_id, patient_id, created_at, last_medical_encounter_at,
    phi_retention_until)
SELECT (SELECT id FROM tenants WHERE slug = 'bench'),
    lpad(to_hex(i), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'),
    '2015-01-01T00:00:00Z',
    CASE WHEN i % 10 < 3 THEN '2015-06-01T00:00:00Z' ELSE '2024-06-01T00:00:00Z' END,
    CASE WHEN i % 10 < 3 THEN '2022-06-01T00:00:00Z' ELSE '2031-06-01T00:00:00Z' END
FROM generate_series(0, $LINKS - 1) AS i ORDER BY i;
INSERT INTO consultations (id, tenant_id, link_id, source_id, status, encounter_class, reason,
    notes, started_at, ended_at)
SELECT lpad(to_hex(l.id), 8, '0') || '-' || lpad(to_hex(k), 4, '0') || '-4000-8000-000000000000',
    l.tenant_id, l.id, NULL, 'completed', 'virtual', convert_to('follow-up', 'UTF8'),
    convert_to('synthetic note for benchmarking', 'UTF8'),
    '2015-06-01T00:00:00Z', '2015-06-01T00:20:00Z'
FROM patient_links l, generate_series(0, 4) AS k;
COMMIT;
VACUUM ANALYZE;
SQL
# Record the policy as applied, as a long-running store would have it.
"$bin" --data-dir "$out/node" lifecycle plan --as-of 2000-01-01 >/dev/null
size=$(admin -d "$SEED_DB" -c "SELECT pg_size_pretty(pg_database_size('$SEED_DB'))")
expired=$(admin -d "$SEED_DB" -c "SELECT count(*) FROM medconnect.patient_links WHERE phi_retention_until <= '$AS_OF'")
echo "seed database: $size; expired links: $expired"

reset="psql -h $HOST -U postgres -d postgres -qc 'DROP DATABASE IF EXISTS $RUN_DB' -qc 'CREATE DATABASE $RUN_DB TEMPLATE $SEED_DB'"
export MEDCONNECT_DATABASE_URL=postgres://$HOST:5432/$RUN_DB
run="$bin --data-dir $out/node lifecycle run --as-of $AS_OF --json"
floor_sql="SET search_path TO medconnect;
BEGIN;
DELETE FROM consultations WHERE link_id IN (SELECT id FROM patient_links WHERE phi_retention_until <= '$AS_OF');
CREATE TEMP TABLE gone AS SELECT patient_id FROM patient_links WHERE phi_retention_until <= '$AS_OF';
DELETE FROM patient_links WHERE phi_retention_until <= '$AS_OF';
DELETE FROM patient_profiles WHERE id IN (SELECT patient_id FROM gone);
COMMIT;"
echo "$floor_sql" > "$out/floor.sql"

hyperfine --runs "$RUNS" --export-markdown "$out/run.md" --prepare "$reset" \
    -n "lifecycle run, one node" "$run > $out/run-1.json" \
    -n "lifecycle run, two nodes" "MEDCONNECT_NODE_NAME=a $run > $out/run-a.json & MEDCONNECT_NODE_NAME=b $run > $out/run-b.json; wait" \
    -n "plain SQL DELETE (floor)" "psql -h $HOST -U postgres -d $RUN_DB -v ON_ERROR_STOP=1 -q -f $out/floor.sql"

# The floor ran last; run the two nodes once more and check the work they shared.
eval "$reset"
MEDCONNECT_NODE_NAME=a $run > "$out/run-a.json" &
MEDCONNECT_NODE_NAME=b $run > "$out/run-b.json" &
wait
echo "node a: $(head -c 400 "$out/run-a.json")"
echo "node b: $(head -c 400 "$out/run-b.json")"
admin -d "$RUN_DB" <<SQL
SET search_path TO medconnect;
SELECT 'links left past retention: ' || count(*) FROM patient_links WHERE phi_retention_until <= '$AS_OF';
SELECT 'patient_records receipts: ' || count(*) || ', distinct records: ' || count(DISTINCT body::json->'receipt'->>'record_id')
    FROM audit_log WHERE action = 'lifecycle.dispose' AND body::json->'receipt'->>'category' = 'patient_records';
SELECT 'receipts per run: ' || string_agg(run || ' ' || receipts, ', ') FROM (
    SELECT body::json->>'detail' AS run, count(*) AS receipts FROM audit_log
    WHERE action = 'lifecycle.dispose' GROUP BY 1 ORDER BY 1) s;
SELECT 'runs recorded by node: ' || string_agg(node || ' ' || status, ', ') FROM lifecycle_runs;
SQL
