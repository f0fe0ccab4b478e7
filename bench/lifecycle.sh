#!/usr/bin/env bash
# Times `medconnect lifecycle plan` and `lifecycle run` on a store scaled to LINKS patient
# links with 5 consultations each, 30% of them past retention. The run is timed next to a
# plain SQL DELETE of the same rows in a copy of the same file (the floor).
#
# Usage: bench/lifecycle.sh            (1,000,000 links; needs about 6 GB of disk)
#        LINKS=100000 bench/lifecycle.sh
# Needs: hyperfine, sqlite3 (Debian packages of the same names).
set -euo pipefail

LINKS=${LINKS:-1000000}
RUNS=${RUNS:-3}
AS_OF=2026-01-01T00:00:00Z
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/bench/out
bin=$root/target/release/medconnect

for tool in hyperfine sqlite3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found; install it with apt-get install $tool" >&2; exit 1; }
done
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
rm -rf "$out" && mkdir -p "$out"

echo "building a store with $LINKS links and $((LINKS * 5)) consultations ..."
"$bin" --data-dir "$out/seed" init --simulated-clock >/dev/null
"$bin" --data-dir "$out/seed" tenant create bench >/dev/null
sqlite3 "$out/seed/medconnect.db" <<SQL
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
CREATE TEMP TABLE n(i INTEGER PRIMARY KEY);
WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < $LINKS)
INSERT INTO n SELECT i FROM c;
-- Synthetic ids in UUID form. Profile fields are written in plaintext here: the benchmark
-- times deletion, which never decrypts. 3 in 10 links had their last encounter in 2015 (expired as of
-- $AS_OF), the rest in 2024.
INSERT INTO patient_profiles (id, source_system, source_index, given_name, family_name, birth_date,
    sex, address_line, city, state, postal_code, created_at)
SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'bench', 'src-' || i, 'Given' || i,
    'Family' || i, '1970-01-01', 'F', i || ' Bench Road', 'Lincoln', 'Nebraska', '68504',
    '2026-01-01T00:00:00Z'
FROM n;
INSERT INTO patient_links (id, tenant_id, patient_id, created_at, last_medical_encounter_at,
    phi_retention_until)
SELECT i + 1, (SELECT id FROM tenants WHERE slug = 'bench'),
    printf('%08x-0000-4000-8000-%012x', i, i), '2015-01-01T00:00:00Z',
    CASE WHEN i % 10 < 3 THEN '2015-06-01T00:00:00Z' ELSE '2024-06-01T00:00:00Z' END,
    CASE WHEN i % 10 < 3 THEN '2022-06-01T00:00:00Z' ELSE '2031-06-01T00:00:00Z' END
FROM n;
INSERT INTO consultations (id, tenant_id, link_id, source_id, status, encounter_class, reason,
    notes, started_at, ended_at)
SELECT printf('%08x-%04x-4000-8000-000000000000', n.i, k.k), (SELECT id FROM tenants WHERE slug = 'bench'),
    n.i + 1, NULL, 'completed', 'virtual', 'follow-up', 'synthetic note for benchmarking',
    '2015-06-01T00:00:00Z', '2015-06-01T00:20:00Z'
FROM n, (SELECT 0 AS k UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4) k;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
# Record the policy as applied, as a long-running store would have it.
"$bin" --data-dir "$out/seed" lifecycle plan --as-of 2000-01-01 >/dev/null
ls -l "$out/seed/medconnect.db"
expired=$(sqlite3 "$out/seed/medconnect.db" "SELECT count(*) FROM patient_links WHERE phi_retention_until <= '$AS_OF'")
echo "expired links: $expired"

reset="rm -rf $out/run && cp -r $out/seed $out/run"
floor_sql="PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;
BEGIN;
DELETE FROM consultations WHERE link_id IN (SELECT id FROM patient_links WHERE phi_retention_until <= '$AS_OF');
CREATE TEMP TABLE gone AS SELECT patient_id FROM patient_links WHERE phi_retention_until <= '$AS_OF';
DELETE FROM patient_links WHERE phi_retention_until <= '$AS_OF';
DELETE FROM patient_profiles WHERE id IN (SELECT patient_id FROM gone);
COMMIT;"

hyperfine --runs "$RUNS" --export-markdown "$out/plan.md" \
    -n "lifecycle plan" "$bin --data-dir $out/seed lifecycle plan --as-of $AS_OF"
hyperfine --runs "$RUNS" --export-markdown "$out/run.md" --prepare "$reset" \
    -n "lifecycle run (receipt per disposal)" "$bin --data-dir $out/run lifecycle run --as-of $AS_OF --json > $out/run.json" \
    -n "plain SQL DELETE (floor)" "sqlite3 $out/run/medconnect.db \"$floor_sql\""
echo "last run:"
cat "$out/run.json"
/usr/bin/time -v "$bin" --data-dir "$out/seed" lifecycle plan --as-of $AS_OF 2>"$out/plan-time.txt" >/dev/null
grep -E "Maximum resident|Elapsed" "$out/plan-time.txt"
