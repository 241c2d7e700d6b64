#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds wtb-embed with the `cuda` feature, checks that every
# model's embeddings on the GPU match the CPU's (relative L2 <= 1e-3, real weights for
# MobileNetV2 / EfficientNet-Lite0 from $WTB_SHARED_DIR/models, synthetic ones for ResNet50 /
# VGG16), and measures images/s on the GPU at batch 1 and 32.
#
# Needs nvcc (CUDA_HOME or PATH) and CUDA_COMPUTE_CAP when no GPU query is possible at build time.
# Usage: benches/cuda_check.sh [cuda:N]
set -euo pipefail
cd "$(dirname "$0")/.."
device="${1:-cuda:0}"
export WTB_SHARED_DIR="${WTB_SHARED_DIR:-$(cd .. && pwd)/shared}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

echo "== build (release, --features wtb-embed/cuda)"
bench="$(cargo bench -p wtb-benches --bench embed_speed --features wtb-embed/cuda --no-run --message-format=json |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "embed_speed": print(m["executable"])')"
[ -x "$bench" ] || { echo "could not build benches/embed_speed.rs with CUDA" >&2; exit 1; }

echo "== parity GPU vs CPU, then GPU images/s"
"$bench" --device "$device" --parity --batches 1,32 --min-seconds "${MIN_SECONDS:-3}"
