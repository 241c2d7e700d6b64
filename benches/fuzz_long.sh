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
  label_files
  ratio_csv
  photo_decoding
  index_files_with_random_damage
  index_files_with_damage_past_the_checksum
  index_files_with_extreme_header_numbers
  embeddings_files
  head_files
  fuzzed_multipart_forms_get_client_errors_never_server_errors
)
# The whole workspace's feature set, as `cargo test --workspace` builds it (selecting packages
# would unify other features and rebuild the dependencies).
cargo test --workspace --test fuzz --test reliability --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") == "compiler-artifact" and message.get("executable") \
            and message["target"]["name"] in ("fuzz", "reliability"):
        print(message["executable"])' > "$out/fuzz_binaries.txt"
binary_of() {
  while read -r binary; do
    if "$binary" --list 2>/dev/null | grep -q "^$1: test"; then
      echo "$binary"
      return
    fi
  done < "$out/fuzz_binaries.txt"
}
run_target() {
  binary="$(binary_of "$1")"
  [ -n "$binary" ] || { echo "FAILED: no test binary has $1"; return 1; }
  WTB_FUZZ_SECONDS="$seconds" "$binary" "$1" --exact --nocapture 2>&1 \
    | grep -E "^fuzz |panicked|seed" || { echo "FAILED: $1"; return 1; }
}
export -f run_target binary_of
export seconds out
started=$(date +%s)
printf '%s\n' "${targets[@]}" | xargs -P "$parallel" -I{} bash -c 'run_target "$@"' _ {} \
  | tee "$out/fuzz_long.txt"
echo "$(date -u +%FT%TZ): ${#targets[@]} targets, ${seconds} s each, ${parallel} at a time, $(nproc) cores, $(( $(date +%s) - started )) s in all" \
  | tee -a "$out/fuzz_long.txt"
! grep -q "FAILED\|panicked" "$out/fuzz_long.txt"
