#!/usr/bin/env python3
"""Times ONNX Runtime on the MobileNetV2 feature-extractor graph (built by
shared/anchors/build_mnv2_onnx.py) the way benches/embed_speed.rs times our model: a
preprocessed 224x224 batch in, the pooled 1280-d embedding out, median of timed runs after a
warm-up. Prints the same markdown rows and writes JSON. Used by benches/embed_vs_onnx.sh."""
import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    results = []
    for batch in (int(b) for b in a.batches.split(",")):
        x = rng.uniform(-2.0, 2.0, (batch, 3, 224, 224)).astype(np.float32)
        session.run(None, {"input": x})  # warm-up
        times, started = [], time.perf_counter()
        while len(times) < 2 or time.perf_counter() - started < a.min_seconds:
            t = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - t)
        times.sort()
        median = times[len(times) // 2]
        print(f"| mobilenet_v2 (ONNX Runtime {ort.__version__}) | real | {batch} | {batch / median:.1f} | "
              f"{1000 * median / batch:.2f} | {len(times)} |", flush=True)
        results.append({"model": "mobilenet_v2", "tool": "onnxruntime", "batch": batch,
                        "images_per_s": batch / median, "median_s": median, "runs": len(times)})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
