#!/usr/bin/env bash
# MobileNetV2 fast plan (wtb-kernels) vs ONNX Runtime on the same weights, in one run,
# interleaved, plus the fast plans vs stock candle. Prints a markdown report.
#
# Usage: benches/kernels_vs_onnx.sh [kernels_speed options: --passes N --quick --profile --skip-stock]
# Env:   WTB_SHARED_DIR (default ../shared beside the project)
#        WTB_ANCHORS_VENV (default /tmp/wtb-anchors-venv; created with pip from PyPI if missing)
#        WTB_BENCH_NICE (default -15; needs root, otherwise the run is unprotected)
# The machine may be shared: the run goes into its own session (setsid) whose autogroup
# gets the niceness, so other sessions' builds do not take its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${WTB_SHARED_DIR:-$(pwd)/../shared}"
VENV="${WTB_ANCHORS_VENV:-/tmp/wtb-anchors-venv}"
NICE="${WTB_BENCH_NICE:--15}"
WORK="${TMPDIR:-/tmp}/wtb-kernels-bench"
mkdir -p "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q onnxruntime onnx numpy safetensors
fi
ONNX="$WORK/mobilenet_v2_features.onnx"
if [ ! -f "$ONNX" ]; then
    "$VENV/bin/python" "$SHARED/anchors/build_mnv2_onnx.py" --out "$ONNX" >&2
fi

cargo bench -p wtb-benches --bench kernels_speed --no-run >&2
BIN=$(cargo bench -p wtb-benches --bench kernels_speed --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*kernels_speed[^"]*\)".*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "kernels_speed binary not found" >&2; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); niceness $NICE"
export WTB_SHARED_DIR="$SHARED"
exec setsid bash -c 'echo "$0" > /proc/self/autogroup 2>/dev/null || true; exec nice -n "$0" "$@"' \
    "$NICE" "$BIN" --onnx "$ONNX" --python "$VENV/bin/python" "$@"
