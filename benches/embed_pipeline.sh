#!/usr/bin/env bash
# `wtb embed` over a folder of real photos (decoding, resizing and the model together) against
# the model alone (benches/embed_speed.rs, MobileNetV2, fast engine, batch 32, timed just before
# and just after each embed run), PASSES passes, in one run on one machine. Prints images/s of
# both, their ratio per pass and the median ratio; then `embed_speed --pipeline` (the library
# call behind `wtb embed` against the model alone, TURNS short alternating turns in one process).
#
# Usage: benches/embed_pipeline.sh [PHOTO_DIR]   (default: $WTB_SHARED_DIR/data/s2s-dev/photos_resized)
# Env:   WTB_SHARED_DIR (default ../shared beside the project), PASSES (3), TURNS (9)
# As root it re-runs itself in a new session at nice -15, so that other work on a shared
# machine steals less of its CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${WTB_SHARED_DIR:-$(cd .. && pwd)/shared}"
photos="${1:-$shared/data/s2s-dev/photos_resized}"
weights="$shared/models/mobilenet_v2_torchvision_imagenet1k.safetensors"
passes="${PASSES:-3}"

if [ -z "${WTB_BENCH_NICED:-}" ] && [ "$(id -u)" = 0 ]; then
    export WTB_BENCH_NICED=1
    exec setsid --wait nice -n -15 "$0" "$@"
fi
for needed in "$photos" "$weights"; do
    [ -e "$needed" ] || { echo "skipping: $needed not found (set WTB_SHARED_DIR)"; exit 0; }
done

cargo build --release -q -p wtb-cli
bench="$(cargo bench -p wtb-benches --bench embed_speed --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "embed_speed": print(m["executable"])')"
[ -x "$bench" ] || { echo "could not build benches/embed_speed.rs" >&2; exit 1; }
export WTB_SHARED_DIR="$shared"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
count=$(find "$photos" -type f -name '*.jpg' | wc -l)
echo "photos: $count in $photos; $(nproc) cores"

model_rate() {
    "$bench" --models mobilenet_v2 --engines fast --batches 32 --min-seconds 5 |
        awk -F'|' '/mobilenet_v2/ {gsub(/ /, "", $6); print $6}'
}
for pass in $(seq 1 "$passes"); do
    # The model alone just before and just after the embed run (their mean), so that a drift
    # of the machine's speed during the pass hits both sides alike.
    before=$(model_rate)
    start=$(date +%s.%N)
    target/release/wtb embed --model mobilenet_v2 --weights "$weights" --images "$photos" \
        --batch 32 --out "$work/gallery.safetensors" > "$work/embed.log" 2>&1
    end=$(date +%s.%N)
    after=$(model_rate)
    embedded=$(grep -o 'embedded [0-9]*' "$work/embed.log" | head -1 | awk '{print $2}')
    python3 - "$pass" "$before" "$after" "$embedded" "$start" "$end" "$work/ratios" <<'PY'
import sys
p, before, after, n, start, end, ratios = sys.argv[1:]
model = (float(before) + float(after)) / 2
rate = int(n) / (float(end) - float(start))
print(f"pass {p}: model only {model:.1f} img/s (before {float(before):.1f}, after {float(after):.1f}); "
      f"wtb embed {n} photos in {float(end) - float(start):.1f} s = {rate:.1f} img/s; "
      f"wtb embed / model = {rate / model:.2f}")
open(ratios, "a").write(f"{rate / model}\n")
PY
done
python3 - "$work/ratios" <<'PY'
import statistics, sys
r = [float(x) for x in open(sys.argv[1])]
print(f"median over {len(r)} passes: wtb embed / model = {statistics.median(r):.2f}")
PY
# The same work in one process, in short alternating turns (less exposed to drift).
"$bench" --pipeline "$photos" "${TURNS:-9}" | tail -1
