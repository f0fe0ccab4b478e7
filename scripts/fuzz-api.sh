#!/usr/bin/env bash
# Fuzzes the HTTPS API with schemathesis, driven by the OpenAPI document that the server
# serves at /v1/openapi.json. It builds `medconnect` and creates a demo store from the
# Synthea sample data with a provider, a tenant admin and a platform operator. Then it starts
# `medconnect serve` on 127.0.0.1 with the development certificate and runs schemathesis
# once per role with that role's bearer token. It exits non-zero when any check fails, including any 5xx response.
#
# Usage: scripts/fuzz-api.sh
#   FUZZ_MAX_EXAMPLES  test cases per operation and phase (default 40)
#   FUZZ_SEED          schemathesis seed, to repeat a run (default: random)
#
# Run from anywhere; paths are relative to the repository root. The Synthea export is read
# from ../shared/data/synthea as `medconnect demo` finds it. Everything the run writes is
# under target/: the virtualenv in target/fuzz-venv, the store, server log and reports in
# target/fuzz-run.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-40}

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/target/fuzz-venv"
RUN="$ROOT/target/fuzz-run"
DATA="$RUN/data"
BIN="$ROOT/target/debug/medconnect"

log() { printf 'fuzz-api: %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/st" --version | grep -q " $SCHEMATHESIS_VERSION\$"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

log "building medconnect"
cargo build --quiet -p medconnect

rm -rf "$RUN"
mkdir -p "$RUN"
export MEDCONNECT_DATA_DIR="$DATA"
export MEDCONNECT_ACTOR="operator:fuzz-api"

log "creating the demo store in $DATA"
"$BIN" demo >"$RUN/demo.log" 2>&1

# Random passwords for this run only; the store is thrown away with target/fuzz-run.
password() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
PROVIDER_PASSWORD=$(password)
ADMIN_PASSWORD=$(password)
MEDCONNECT_NEW_PASSWORD="$PROVIDER_PASSWORD" "$BIN" user create --tenant prairie \
    --username fuzz-provider@prairie.test --role provider >/dev/null
MEDCONNECT_NEW_PASSWORD="$ADMIN_PASSWORD" "$BIN" user create --tenant prairie \
    --username fuzz-admin@prairie.test --role tenant_admin >/dev/null
OPERATOR_PASSWORD=$(password)
MEDCONNECT_NEW_PASSWORD="$OPERATOR_PASSWORD" "$BIN" user create \
    --username fuzz-operator --role platform_operator >/dev/null

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="https://127.0.0.1:$PORT"
CERT="$DATA/tls/dev-cert.pem"

log "starting medconnect serve on $BASE (log: $RUN/server.log)"
"$BIN" serve --listen "127.0.0.1:$PORT" --lifecycle-interval 0 >"$RUN/server.log" 2>&1 &
SERVER_PID=$!
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
trap stop_server EXIT

for _ in $(seq 1 100); do
    if [ -f "$CERT" ] && curl --silent --fail --cacert "$CERT" "$BASE/healthz" >/dev/null; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "the server exited; its log follows"
        cat "$RUN/server.log" >&2
        exit 1
    fi
    sleep 0.1
done
curl --silent --show-error --fail --cacert "$CERT" "$BASE/healthz" >/dev/null

# Prints the token of a new session of USERNAME with PASSWORD, in tenant TENANT when given
# (a platform operator has none).
login() {
    local body
    body=$(python3 -c '
import json, sys
body = {"username": sys.argv[1], "password": sys.argv[2]}
if len(sys.argv) > 3:
    body["tenant"] = sys.argv[3]
print(json.dumps(body))' "$@")
    curl --silent --show-error --fail --cacert "$CERT" -H 'Content-Type: application/json' \
        --data "$body" "$BASE/v1/login" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])'
}
PROVIDER_TOKEN=$(login fuzz-provider@prairie.test "$PROVIDER_PASSWORD" prairie)
ADMIN_TOKEN=$(login fuzz-admin@prairie.test "$ADMIN_PASSWORD" prairie)
OPERATOR_TOKEN=$(login fuzz-operator "$OPERATOR_PASSWORD")

# The checks: no 5xx, every status, content type, header and body as the document lists,
# 4xx for invalid input, 405 for undocumented methods, and 401 without the token.
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance
CHECKS=$CHECKS,response_headers_conformance,response_schema_conformance
CHECKS=$CHECKS,negative_data_rejection,unsupported_method,ignored_auth

# Logout would end the session that the rest of the run uses, so the tests cover it instead.
run_schemathesis() {
    local role=$1 token=$2
    log "running schemathesis as $role, $MAX_EXAMPLES examples per operation"
    local seed_option=()
    if [ -n "${FUZZ_SEED:-}" ]; then
        seed_option=(--seed "$FUZZ_SEED")
    fi
    # schemathesis keeps state in .schemathesis/ of its working directory. One worker: with
    # two threads, hypothesis's ast.parse on Python 3.11 sometimes fails with "AST
    # constructor recursion depth mismatch", a CPython bug in threaded programs. That crash
    # is the fuzzer's, not a finding about the server.
    (cd "$RUN" && "$VENV/bin/st" run "$BASE/v1/openapi.json" \
        --tls-verify "$CERT" \
        --header "Authorization: Bearer $token" \
        --checks "$CHECKS" \
        --exclude-path /v1/logout \
        --max-examples "$MAX_EXAMPLES" \
        --workers 1 \
        --generation-database none \
        --report junit --report-dir "$RUN/report-$role" \
        "${seed_option[@]}")
}

status=0
run_schemathesis provider "$PROVIDER_TOKEN" || status=1
run_schemathesis tenant_admin "$ADMIN_TOKEN" || status=1
run_schemathesis platform_operator "$OPERATOR_TOKEN" || status=1

if grep -q '"status":5\|status=5[0-9][0-9]' "$RUN/server.log"; then
    log "the server log records 5xx responses: see $RUN/server.log"
    status=1
fi
if [ "$status" -eq 0 ]; then
    log "passed: no check failed"
else
    log "failed: see the schemathesis output above and $RUN/server.log"
fi
exit "$status"
