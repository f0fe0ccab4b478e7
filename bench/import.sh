#!/usr/bin/env bash
# Times `medconnect import synthea` of the shared Synthea sample data (111 patients, about
# 32,000 rows) with encryption at rest, next to the same import built from REF, the last
# commit that stored records in plaintext. Each run imports into a fresh store.
#
# Usage: bench/import.sh                 (needs ../shared/data/synthea beside the repository)
#        REF=f30c2e2 RUNS=10 bench/import.sh
# Needs: hyperfine (Debian package of the same name) and git history that contains REF.
set -euo pipefail

REF=${REF:-f30c2e2}
RUNS=${RUNS:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
synthea=$(cd "$root/../shared/data/synthea" && pwd)
out=$root/bench/out/import
command -v hyperfine >/dev/null || { echo "bench: hyperfine not found; install it with apt-get install hyperfine" >&2; exit 1; }

rm -rf "$out" && mkdir -p "$out"
git -C "$root" worktree add --detach --force "$out/ref" "$REF" >/dev/null
trap 'git -C "$root" worktree remove --force "$out/ref"' EXIT
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
CARGO_TARGET_DIR="$out/ref-target" cargo build --release --quiet --manifest-path "$out/ref/Cargo.toml"
current=$root/target/release/medconnect
reference=$out/ref-target/release/medconnect

prepare() {
    echo "rm -rf $out/$1 && $2 --data-dir $out/$1 init >/dev/null && $2 --data-dir $out/$1 tenant create bench >/dev/null"
}
hyperfine --runs "$RUNS" --warmup 3 --export-markdown "$out/import.md" \
    --prepare "$(prepare enc "$current")" -n "import, encrypted" \
    "$current --data-dir $out/enc import synthea $synthea --tenant bench" \
    --prepare "$(prepare plain "$reference")" -n "import, plaintext ($REF)" \
    "$reference --data-dir $out/plain import synthea $synthea --tenant bench"
