#!/usr/bin/env python3
"""Times ONNX Runtime on the MobileNetV2 feature extractor for one batch size (called by
kernels_speed between its own measurements, so that both are interleaved in one run).

Usage: kernels_ort_worker.py MODEL.onnx BATCH RUNS THREADS
Prints one JSON line: batch, runs, threads, seconds of each timed run.
Session options follow ../shared/anchors/run_anchors.py (ORT_ENABLE_ALL, sequential, inter_op 1).
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    model, batch, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    for _ in range(2):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    print(json.dumps({"batch": batch, "runs": runs, "threads": threads, "times": times,
                      "ort_version": ort.__version__}))


if __name__ == "__main__":
    main()
