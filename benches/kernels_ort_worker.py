#!/usr/bin/env python3
"""Times ONNX Runtime on the MobileNetV2 feature extractor for one batch size (called by
kernels_speed between its own measurements, so that both are interleaved in one run).

Usage: kernels_ort_worker.py MODEL.onnx BATCH RUNS THREADS
Prints one JSON line: batch, runs, threads, seconds of each timed run.

       kernels_ort_worker.py MODEL.onnx --serve THREADS
Keeps the session: for each stdin line "BATCH RUNS" answers one such JSON line, so that the
caller can alternate short turns of its own and of ORT (finer interleaving on a drifting
machine). A session per batch size is built (and warmed) on its first request.
Session options follow ../shared/anchors/run_anchors.py (ORT_ENABLE_ALL, sequential, inter_op 1).
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def timed(sess, x, runs):
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return times


def main():
    if sys.argv[2] == "--serve":
        model, threads = sys.argv[1], int(sys.argv[3])
        sess = session(model, threads)
        inputs = {}
        for line in sys.stdin:
            batch, runs = (int(v) for v in line.split())
            if batch not in inputs:
                inputs[batch] = np.random.default_rng(0).standard_normal(
                    (batch, 3, 224, 224), dtype=np.float32)
                timed(sess, inputs[batch], 2)
            timed(sess, inputs[batch], 1)  # untimed, as the caller's turns start
            times = timed(sess, inputs[batch], runs)
            print(json.dumps({"batch": batch, "runs": runs, "threads": threads, "times": times,
                              "ort_version": ort.__version__}), flush=True)
        return
    model, batch, runs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sess = session(model, threads)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    timed(sess, x, 2)
    times = timed(sess, x, runs)
    print(json.dumps({"batch": batch, "runs": runs, "threads": threads, "times": times,
                      "ort_version": ort.__version__}))


if __name__ == "__main__":
    main()
