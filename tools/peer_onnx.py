#!/usr/bin/env python3
"""ONNX Runtime / OpenVINO peer for `facenet bench encode`: times the ONNX file our own
`facenet export onnx` wrote (the bench exports it to a temporary file), on the same batch
sizes with the same warm-up/repeat protocol and JSON shape as peer_torch.py.

--runtime onnxruntime: one InferenceSession, graph optimisation ORT_ENABLE_ALL, sequential
  execution, intra-op threads = --threads (inter-op 1).
--runtime openvino: CPU plugin, INFERENCE_PRECISION_HINT f32, INFERENCE_NUM_THREADS =
  --threads, the model reshaped to a static batch. Batch 1: the LATENCY hint, one request.
  Larger batches: LATENCY (one request for the whole batch) and THROUGHPUT (the batch split
  over the plugin's optimal number of parallel requests on its streams) are both timed; each
  result names its hint, the caller takes the best.

--check-input x.npy --check-output y.npy: also run x (N rows of C*H*W) and report the max abs
difference from y (our output) as "check". Prints one JSON object as the last line of stdout;
{"available": false, "reason"} when the runtime cannot be imported.
"""
import argparse
import json
import sys

import numpy as np

from peer_torch import check_json, time_it


def run_onnxruntime(args, batches, rng):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(args.onnx, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    c, h, w = (int(d) for d in inp.shape[1:])
    config = f"ORT_ENABLE_ALL, sequential, {args.threads} intra-op threads"
    out = {"peer": "onnxruntime", "onnxruntime": ort.__version__, "threads": args.threads,
           "results": []}
    for b in batches:
        x = rng.random((b, c, h, w), dtype=np.float32)
        med, mn = time_it(lambda: sess.run(None, {inp.name: x}), lambda: None, args.warmup,
                          args.repeats)
        out["results"].append({"batch": b, "config": config, "img_per_s": b / med,
                               "latency_ms": med * 1e3, "min_ms": mn * 1e3})
    if args.check_input:
        x = np.load(args.check_input).reshape(-1, c, h, w)
        out["check"] = check_json(sess.run(None, {inp.name: x})[0], args.check_output)
    return out


def run_openvino(args, batches, rng):
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints
    core = ov.Core()
    inp = core.read_model(args.onnx).input(0)
    name = inp.get_any_name()
    c, h, w = (inp.get_partial_shape()[i].get_length() for i in (1, 2, 3))

    def compiled(batch, mode):
        model = core.read_model(args.onnx)
        model.reshape({name: [batch, c, h, w]})
        return core.compile_model(model, "CPU", {
            hints.performance_mode: mode,
            hints.inference_precision: ov.Type.f32,
            props.inference_num_threads: args.threads,
        })

    out = {"peer": "openvino", "openvino": ov.get_version(), "threads": args.threads,
           "results": []}
    for b in batches:
        x = rng.random((b, c, h, w), dtype=np.float32)
        lat = compiled(b, hints.PerformanceMode.LATENCY).create_infer_request()
        variants = [("LATENCY hint, 1 request", lambda: lat.infer({0: x}))]
        if b > 1:
            # THROUGHPUT: the plugin's streams each run one request of a slice of the batch.
            probe = compiled(b, hints.PerformanceMode.THROUGHPUT)
            n = min(b, probe.get_property(props.optimal_number_of_infer_requests))
            if b % n:  # slices must share one static shape: use the largest divisor of b <= n
                n = max(d for d in range(1, n + 1) if b % d == 0)
            tp = compiled(b // n, hints.PerformanceMode.THROUGHPUT)
            queue = ov.AsyncInferQueue(tp, n)
            slices = np.split(x, n)
            streams = tp.get_property(props.num_streams)

            def run_queue():
                for s in slices:
                    queue.start_async({0: s})
                queue.wait_all()
            variants.append((f"THROUGHPUT hint, {n} requests of {b // n} on {streams} streams",
                             run_queue))
        for config, fn in variants:
            med, mn = time_it(fn, lambda: None, args.warmup, args.repeats)
            out["results"].append({"batch": b, "config": config, "img_per_s": b / med,
                                   "latency_ms": med * 1e3, "min_ms": mn * 1e3})
    if args.check_input:
        x = np.load(args.check_input).reshape(-1, c, h, w)
        model = compiled(x.shape[0], hints.PerformanceMode.LATENCY)
        out["check"] = check_json(model(x)[model.output(0)], args.check_output)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="model written by `facenet export onnx`")
    ap.add_argument("--runtime", required=True, choices=["onnxruntime", "openvino"])
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check-input")
    ap.add_argument("--check-output")
    args = ap.parse_args()
    try:
        __import__(args.runtime)
    except ImportError as e:
        print(json.dumps({"available": False, "reason": f"import failed: {e}"}))
        return 0
    run = run_onnxruntime if args.runtime == "onnxruntime" else run_openvino
    out = run(args, [int(b) for b in args.batch.split(",")], np.random.default_rng(1234))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
