#!/usr/bin/env bash
# Long fuzz runs (issue 16): every fuzz target of the test suite for SECONDS (default 600)
# each, PARALLEL targets at a time (default: all nine at once). Each target runs seeded
# batches of inputs until its time is up; a failure stops it with the shrunk input and its
# seed. The per-target lines ("fuzz <target>: <inputs> inputs in <seconds> s, no failure")
# are collected in benches/out/fuzz_long.txt.
#
#   benches/fuzz_long.sh [SECONDS] [PARALLEL]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
parallel="${2:-9}"
out=benches/out
mkdir -p "$out"
targets=(
  "wtb-dataset fuzz label_files"
  "wtb-dataset fuzz ratio_csv"
  "wtb-dataset fuzz photo_decoding"
  "wtb-search fuzz index_files_with_random_damage"
  "wtb-search fuzz index_files_with_damage_past_the_checksum"
  "wtb-search fuzz index_files_with_extreme_header_numbers"
  "wtb-embed fuzz embeddings_files"
  "wtb-embed fuzz head_files"
  "wtb-store reliability fuzzed_multipart_forms_get_client_errors_never_server_errors"
)
cargo test -p wtb-dataset -p wtb-search -p wtb-embed --test fuzz --no-run
cargo test -p wtb-store --test reliability --no-run
run_target() {
  read -r package test name <<<"$1"
  WTB_FUZZ_SECONDS="$seconds" cargo test -q -p "$package" --test "$test" "$name" -- --exact --nocapture 2>&1 \
    | grep -E "^fuzz |panicked|seed" || { echo "FAILED: $1"; return 1; }
}
export -f run_target
export seconds
started=$(date +%s)
printf '%s\n' "${targets[@]}" | xargs -P "$parallel" -I{} bash -c 'run_target "$@"' _ {} \
  | tee "$out/fuzz_long.txt"
echo "$(date -u +%FT%TZ): ${#targets[@]} targets, ${seconds} s each, ${parallel} at a time, $(nproc) cores, $(( $(date +%s) - started )) s in all" \
  | tee -a "$out/fuzz_long.txt"
! grep -q "FAILED\|panicked" "$out/fuzz_long.txt"
