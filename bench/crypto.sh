#!/usr/bin/env bash
# Measures AES-256-GCM throughput of `openssl speed` and of medconnect-crypto's seal and open
# (the criterion benchmark in crates/medconnect-crypto/benches/crypto.rs) on the same machine,
# and prints both, then a summary in MB/s (1 MB = 10^6 bytes, the unit of `openssl speed`).
#
# The figures are not like for like. `openssl speed -evp` encrypts blocks of one size in a loop
# with one cipher context. Each seal and each open also expands the AES key. Each seal also
# draws a nonce from the operating system, builds the header and associated data, and
# allocates its output, and each open also copies and then wipes the plaintext. Compare openssl
# at 16384 bytes with the 1 MiB blob, and at 256 bytes with the 200-byte field. The two
# libraries can also pick different assembly for the same processor, so the CPU flags that
# decide it are printed too.
#
# Usage: bench/crypto.sh
#        CARGO_TARGET_DIR=/tmp/crypto-target bench/crypto.sh
# Needs: openssl (Debian package of the same name).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v openssl >/dev/null || {
    echo "bench: openssl not found; install it with apt-get install openssl" >&2
    exit 1
}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
echo "CPU flags: $(grep -m1 -o -w -E 'aes|pclmulqdq|avx|avx2|movbe|vaes|vpclmulqdq' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "$(openssl version)"
echo

summary=()
for bytes in 16384 256; do
    echo "== openssl speed -evp aes-256-gcm -bytes $bytes -seconds 3"
    openssl speed -evp aes-256-gcm -bytes "$bytes" -seconds 3 2>&1 | tee "$log"
    # The last line is the cipher name and the rate in 1000s of bytes per second, such as
    # "AES-256-GCM   4123456.78k".
    rate=$(awk 'tolower($1) == "aes-256-gcm" { value = $NF } END { sub(/k$/, "", value); print value }' "$log")
    summary+=("$(awk -v rate="$rate" -v bytes="$bytes" \
        'BEGIN { printf "%-34s %10.0f", "openssl aes-256-gcm, " bytes " B", rate / 1000 }')")
    echo
done

echo "== cargo bench -p medconnect-crypto"
cargo bench --manifest-path "$root/Cargo.toml" -p medconnect-crypto 2>&1 | tee "$log"

# Criterion prints the benchmark name, then "thrpt: [low unit estimate unit high unit]". The
# name may share the "time:" line or have a line of its own.
while IFS= read -r line; do
    summary+=("$line")
done < <(awk '
    BEGIN { factor["GB/s"] = 1000; factor["MB/s"] = 1; factor["KB/s"] = 0.001; factor["B/s"] = 1e-6 }
    $1 ~ /^(field_200B|blob_1MiB)\/(seal|open)$/ { name = $1 }
    $1 == "thrpt:" && name != "" {
        printf "%-34s %10.0f\n", "medconnect " name, $4 * factor[$5]
        name = ""
    }
' "$log")

echo
echo "== summary, MB/s (middle estimate for criterion)"
printf '%s\n' "${summary[@]}"
