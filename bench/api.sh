#!/usr/bin/env bash
# Measures an authenticated `GET /v1/patients/{id}` of `medconnect serve` on the embedded
# SQLite store with wrk, next to the floor. The floor is the bare HTTPS server of
# crates/medconnect-api/examples/bench_floor.rs: it serves the same patient with the same TLS
# setup and store reads, but without authentication and audit entry. Both listen on
# 127.0.0.1 only.
#
# The store is a fresh production store with the Synthea sample data imported into tenant
# `bench`, and a provider account whose session token the requests carry (CREDENTIAL=token
# uses a service token with the provider role instead). Each side runs RUNS times,
# alternating. After the runs the script compares the number of `patient.read` audit entries
# with the number of requests that wrk completed against the server.
#
# Usage: bench/api.sh                       (2 runs per side of 20 s, 16 connections)
#        RUNS=3 DURATION=30s CONNECTIONS=32 THREADS=1 bench/api.sh
#        BIN=/path/to/medconnect bench/api.sh   (measure a binary built elsewhere)
# Needs: wrk, curl, jq, sqlite3 (Debian packages of the same names), and the sample data
# in ../shared/data/synthea beside the repository.
set -euo pipefail

RUNS=${RUNS:-2}
DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}
PORT=${PORT:-18443}
FLOOR_PORT=${FLOOR_PORT:-18444}
CREDENTIAL=${CREDENTIAL:-session}
root=$(cd "$(dirname "$0")/.." && pwd)
synthea=$(cd "$root/../shared/data/synthea" && pwd)
out=$root/bench/out-api
data=$out/data
bin=${BIN:-$root/target/release/medconnect}
floor_bin=$root/target/release/examples/bench_floor

for tool in wrk curl jq sqlite3; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found; install it with apt-get install $tool" >&2; exit 1; }
done
case $CREDENTIAL in
    session | token) ;;
    *) echo "bench: CREDENTIAL must be session or token, not the value given" >&2; exit 1 ;;
esac

if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p medconnect
fi
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p medconnect-api \
    --example bench_floor --features bench-floor
rm -rf "$out" && mkdir -p "$out"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# Waits until a GET of `url` returns 200, for at most 10 s.
wait_for() {
    local url=$1
    for _ in $(seq 100); do
        if curl -fsS --cacert "$data/tls/dev-cert.pem" -o /dev/null "$url" -H "Authorization: Bearer ${token:-none}" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "bench: $url did not respond within 10 s; see $out/*.log" >&2
    exit 1
}

echo "creating a store with the Synthea sample data in tenant bench ..."
"$bin" --data-dir "$data" init >/dev/null
"$bin" --data-dir "$data" tenant create bench --name "Bench Telehealth" >/dev/null
"$bin" --data-dir "$data" import synthea "$synthea" --tenant bench >"$out/import.txt" 2>&1
patient=$("$bin" --data-dir "$data" patient list --tenant bench --json | jq -r '.[0].patient_id')
patients=$("$bin" --data-dir "$data" patient list --tenant bench --json | jq length)
password=bench-provider-password
MEDCONNECT_NEW_PASSWORD=$password "$bin" --data-dir "$data" user create --tenant bench \
    --username provider@bench.test --role provider >/dev/null

MEDCONNECT_LOG=warn "$bin" --data-dir "$data" serve --listen "127.0.0.1:$PORT" \
    --lifecycle-interval 0 >"$out/serve.log" 2>&1 &
pids+=($!)
wait_for "https://127.0.0.1:$PORT/readyz"

if [ "$CREDENTIAL" = session ]; then
    token=$(curl -fsS --cacert "$data/tls/dev-cert.pem" "https://127.0.0.1:$PORT/v1/login" \
        -H 'Content-Type: application/json' \
        -d "{\"tenant\":\"bench\",\"username\":\"provider@bench.test\",\"password\":\"$password\"}" |
        jq -r .token)
else
    token=$("$bin" --data-dir "$data" token create --tenant bench --name bench --role provider --json |
        jq -r .token)
fi

"$root/target/release/examples/bench_floor" "$data" bench "127.0.0.1:$FLOOR_PORT" >"$out/floor.log" 2>&1 &
pids+=($!)
wait_for "https://127.0.0.1:$FLOOR_PORT/floor/patients/$patient"

server_url=https://127.0.0.1:$PORT/v1/patients/$patient
floor_url=https://127.0.0.1:$FLOOR_PORT/floor/patients/$patient
# The two bodies must hold the same record: the link with its counts and the profile.
curl -fsS --cacert "$data/tls/dev-cert.pem" -H "Authorization: Bearer $token" "$server_url" | jq -S . >"$out/server-body.json"
curl -fsS --cacert "$data/tls/dev-cert.pem" "$floor_url" | jq -S . >"$out/floor-body.json"
if ! cmp -s "$out/server-body.json" "$out/floor-body.json"; then
    echo "bench: the server and the floor return different bodies; compare $out/*-body.json" >&2
    exit 1
fi
reads_before=$(sqlite3 "$data/medconnect.db" "SELECT count(*) FROM audit_log WHERE action = 'patient.read'")

echo "store: $patients patients, $(stat -c %s "$data/medconnect.db") bytes in medconnect.db after import"
echo "request: GET /v1/patients/{id}, $(wc -c <"$out/server-body.json") bytes of JSON (pretty-printed by jq)"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), Linux $(uname -r)"
echo "load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

# Runs wrk once against URL and keeps its report in $out/NAME-RUN.txt.
measure() {
    local name=$1 url=$2 run=$3
    local report=$out/$name-$run.txt
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -H "Authorization: Bearer $token" "$url" >"$report"
    if grep -q "Non-2xx" "$report"; then
        echo "bench: $name run $run had responses other than 200; see $report" >&2
        exit 1
    fi
    local requests rate p50 p99
    requests=$(awk '/requests in/ {print $1}' "$report")
    rate=$(awk '/^Requests\/sec/ {print $2}' "$report")
    p50=$(awk '$1 == "50%" {print $2}' "$report")
    p99=$(awk '$1 == "99%" {print $2}' "$report")
    printf '%-7s run %d: %9s requests, %9s req/s, p50 %8s, p99 %8s\n' \
        "$name" "$run" "$requests" "$rate" "$p50" "$p99"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $RUNS runs per side, credential: $CREDENTIAL"
for run in $(seq "$RUNS"); do
    measure server "$server_url" "$run"
    measure floor "$floor_url" "$run"
done
echo "load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)"

reads_after=$(sqlite3 "$data/medconnect.db" "SELECT count(*) FROM audit_log WHERE action = 'patient.read'")
served=$(cat "$out"/server-*.txt | awk '/requests in/ {sum += $1} END {print sum}')
echo "audit: $((reads_after - reads_before)) patient.read entries for $served requests that wrk completed"
echo "(wrk does not count requests still in flight when a run ends, so the entries may exceed it by up to $CONNECTIONS per run)"
