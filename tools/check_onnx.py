#!/usr/bin/env python3
"""Runs an ONNX model written by `facenet export onnx` with ONNX Runtime and, where it is
importable, OpenVINO (CPU, f32) on a float32 .npy input (N rows of C*H*W values, reshaped
to the model's NCHW input), and writes each runtime's [N, D] output as <out-dir>/<runtime>.npy.
tests/test_onnx_export.cpp compares those files with our backends. Where the `onnx` package is
importable, its checker (full_check) validates the file too ("onnx_checker").

Prints one JSON object as the last line of stdout: {"available": false, "reason"} when ONNX
Runtime cannot be imported, else the runtimes' versions and output files. Run with Debian's
/usr/bin/python3 (tools/setup.sh installs onnxruntime and openvino there) or $FACENET_PYTHON.
"""
import argparse
import json
import os
import sys


def nchw(x, shape):
    c, h, w = (int(d) for d in shape[1:])
    return x.reshape(x.shape[0], c, h, w).astype("float32")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    try:
        import onnxruntime as ort  # a python lacking it (or numpy, which it needs) skips
        import numpy as np
    except ImportError as e:
        print(json.dumps({"available": False, "reason": f"import onnxruntime failed: {e}"}))
        return 0
    x = np.load(args.input)
    out = {"available": True, "onnxruntime": ort.__version__, "outputs": {}}
    try:  # the ONNX package's own validator, where installed (not a dependency)
        import onnx
    except ImportError:
        out["onnx_checker"] = None
    else:
        try:
            onnx.checker.check_model(args.model, full_check=True)
            out["onnx_checker"] = f"passed (onnx {onnx.__version__}, full_check)"
        except Exception as e:  # noqa: BLE001 -- any checker complaint is reported
            out["onnx_checker"] = f"failed: {type(e).__name__}: {e}"[:2000]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = nchw(x, inp.shape)
    out.update({"input": inp.name, "input_shape": [str(d) for d in inp.shape],
                "batch": x.shape[0]})
    y = sess.run(None, {inp.name: x})[0]
    path = os.path.join(args.out_dir, "onnxruntime.npy")
    np.save(path, np.ascontiguousarray(y, dtype=np.float32))
    out["outputs"]["onnxruntime"] = path
    try:
        import openvino as ov
    except ImportError as e:
        out["openvino"] = None
        out["openvino_reason"] = f"import openvino failed: {e}"
    else:
        out["openvino"] = ov.__version__
        core = ov.Core()
        compiled = core.compile_model(core.read_model(args.model), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32"})
        y = compiled(x)[compiled.output(0)]
        path = os.path.join(args.out_dir, "openvino.npy")
        np.save(path, np.ascontiguousarray(y, dtype=np.float32))
        out["outputs"]["openvino"] = path
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
