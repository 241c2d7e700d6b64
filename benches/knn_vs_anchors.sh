#!/usr/bin/env bash
# Exact k-NN of wtb-search against numpy (GEMM + argpartition) and faiss IndexFlatIP, in one
# session, interleaved over several passes, at high priority:
#
#   benches/knn_vs_anchors.sh [PASSES]        (default 2)
#
# Needs a python venv outside the repository with the anchors' packages:
#   python3 -m venv /tmp/wtb-anchors-venv
#   /tmp/wtb-anchors-venv/bin/pip install numpy scipy faiss-cpu threadpoolctl
# (override with WTB_ANCHORS_PY). Reference data: $WTB_SHARED_DIR (default ../shared).
# Writes everything under $KNN_BENCH_OUT (default target/knn-bench): per-pass markdown of the
# anchors, per-pass JSON of wtb, and summary.md with the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${1:-2}
SHARED=${WTB_SHARED_DIR:-$(pwd)/../shared}
PY=${WTB_ANCHORS_PY:-/tmp/wtb-anchors-venv/bin/python}
OUT=${KNN_BENCH_OUT:-$(pwd)/target/knn-bench}
mkdir -p "$OUT"
[ -x "$PY" ] || { echo "no python at $PY (see the header of $0)" >&2; exit 1; }
[ -f "$SHARED/anchors/run_anchors.py" ] || { echo "no $SHARED/anchors/run_anchors.py" >&2; exit 1; }

# KNN_SPEED_BIN: an already built knn_speed binary (skips the cargo build).
BIN=${KNN_SPEED_BIN:-}
if [ -z "$BIN" ]; then
  cargo bench -p wtb-benches --bench knn_speed --no-run
  BIN=$(ls -t target/release/deps/knn_speed-* | grep -v '\.d$' | head -1)
fi

for pass in $(seq 1 "$PASSES"); do
  echo "== pass $pass: anchors (numpy, faiss, machine ceilings)" >&2
  OPENBLAS_CORETYPE=SkylakeX setsid nice -n -15 "$PY" "$SHARED/anchors/run_anchors.py" \
    --py "$PY" --only knn,faiss,ceil --passes 1 --wait-idle ${KNN_WAIT_IDLE:-0} --out "$OUT/anchors_$pass.md" > /dev/null
  echo "== pass $pass: wtb-search" >&2
  hnsw=(--no-hnsw)
  [ "$pass" = 1 ] && hnsw=()
  # Same protection as run_anchors.py gives itself: a new session whose autogroup gets
  # nice -15 (with sched_autogroup_enabled=1, plain nice only ranks inside one autogroup).
  setsid bash -c 'echo -15 > /proc/self/autogroup 2>/dev/null; exec nice -n -15 "$@"' _ \
    "$BIN" --json "$OUT/wtb_$pass.json" "${hnsw[@]}" | tee "$OUT/wtb_$pass.txt"
done

"$PY" - "$OUT" "$PASSES" <<'PY' | tee "$OUT/summary.md"
import json, re, statistics, sys
out, passes = sys.argv[1], int(sys.argv[2])
num = lambda x: float(x.replace(",", ""))
anchor, bandwidth = {}, []
for p in range(1, passes + 1):
    for line in open(f"{out}/anchors_{p}.md"):
        c = [x.strip() for x in line.split("|")]
        if len(c) < 8 or not re.match(r"^[\d,.]+$", c[4] or "x"):
            continue
        m = re.search(r"N=([\d,]+), Q=(\d+)", c[3])
        if m and c[2] in ("kNN faiss IndexFlatIP", "kNN numpy (GEMM + argpartition + sort k)",
                          "kNN numpy (GEMV + argpartition + sort k)"):
            tool = "numpy" if "numpy" in c[2] else "faiss " + c[3].split("; ")[1].split(":")[0]
            anchor.setdefault((tool, int(num(m.group(1))), int(m.group(2))), []).append(num(c[4]))
        if c[2].startswith("memory bandwidth") and c[3].startswith("2 threads"):
            bandwidth.append(num(c[4]))
wtb = {}
for p in range(1, passes + 1):
    for r in json.load(open(f"{out}/wtb_{p}.json"))["rows"]:
        wtb.setdefault((r["bench"], r["n"], r["queries_per_call"]), []).append(r)
hnsw = json.load(open(f"{out}/wtb_1.json"))["hnsw"]
bw = statistics.median(bandwidth) if bandwidth else float("nan")
med = lambda xs: statistics.median(xs)
print(f"Machine copy bandwidth (numpy, 2 threads, read+write counted): {bw:.1f} GB/s; medians over {passes} pass(es)\n")
print("| N | Q | wtb f32 q/s | wtb f16 q/s | numpy q/s | best faiss q/s (variant) | f32/numpy | f32/faiss | f16/faiss | f32 GB/s (% bw) | f16 GB/s (% bw) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for n in sorted({k[1] for k in wtb}):
    for q in (1000, 1):
        f32 = wtb.get(("wtb exact f32", n, q)); f16 = wtb.get(("wtb exact f16", n, q))
        if not f32 or not f16:
            continue
        a32 = med([r["queries_per_s"] for r in f32]); a16 = med([r["queries_per_s"] for r in f16])
        npy = med(anchor.get(("numpy", n, q), [float("nan")]))
        fa = {k[0]: med(v) for k, v in anchor.items() if k[0].startswith("faiss") and k[1] == n and k[2] == q}
        fname, fbest = max(fa.items(), key=lambda kv: kv[1]) if fa else ("-", float("nan"))
        g32 = f"{med([r['gb_per_s'] for r in f32]):.1f} ({100 * med([r['gb_per_s'] for r in f32]) / bw:.0f}%)" if q == 1 else ""
        g16 = f"{med([r['gb_per_s'] for r in f16]):.1f} ({100 * med([r['gb_per_s'] for r in f16]) / bw:.0f}%)" if q == 1 else ""
        print(f"| {n:,} | {q} | {a32:,.1f} | {a16:,.1f} | {npy:,.1f} | {fbest:,.1f} ({fname}) | {a32 / npy:.2f} | {a32 / fbest:.2f} | {a16 / fbest:.2f} | {g32} | {g16} |")
if hnsw:
    print(f"\nHNSW at N={int(hnsw['n']):,}: build {hnsw['build_s']:.1f} s, single query {hnsw['approx_ms']:.3f} ms vs exact {hnsw['exact_ms']:.3f} ms "
          f"({hnsw['speedup']:.1f}x), recall@10 {hnsw['recall_at_10']:.4f}")
PY
echo "done: see $OUT" >&2
