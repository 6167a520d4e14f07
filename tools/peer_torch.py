#!/usr/bin/env python3
"""PyTorch peer for `facenet bench encode`: builds the same network from the same facenet
model file (safetensors + graph JSON in its metadata) and times it, so every speed claim of
ours is a ratio against PyTorch measured in the same run.

Prints one JSON object as the last line of stdout. Run with Debian's /usr/bin/python3 (torch), or $FACENET_PYTHON.
On CUDA it times several PyTorch configurations; the caller reports against the best.
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}")
        a, b = info["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"]).copy()
    return meta, tensors


def build(path, torch):
    """Returns forward(x: NCHW tensor) -> embeddings, evaluating the graph node by node with
    torch.nn.functional ops (BatchNorm or a per-channel affine that follows a conv folded into
    it, as any deployment would, and as our backends do)."""
    F = torch.nn.functional
    meta, t = read_safetensors(path)
    graph = json.loads(meta["facenet.graph"])
    nodes = graph["nodes"]
    consumers = {}
    for n in nodes:
        for i in n["inputs"]:
            consumers[i] = consumers.get(i, 0) + 1
    params = {}
    steps = []
    i = 0
    while i < len(nodes):
        n = nodes[i]
        step = dict(n)
        if n["op"] in ("conv", "dense"):
            w = t[n["weight"]].astype(np.float64)
            b = t[n["bias"]].astype(np.float64)
            if i + 1 < len(nodes) and nodes[i + 1]["op"] == "batchnorm" and consumers[n["name"]] == 1:
                bn = nodes[i + 1]
                scale = t[bn["gamma"]] / np.sqrt(t[bn["var"]].astype(np.float64) + bn["eps"])
                w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
                b = (b - t[bn["mean"]]) * scale + t[bn["beta"]]
                i += 1
                step["name"] = bn["name"]
            elif (n["op"] == "conv" and i + 1 < len(nodes) and nodes[i + 1]["op"] == "affine"
                  and consumers[n["name"]] == 1):
                af = nodes[i + 1]
                gamma = t[af["gamma"]].astype(np.float64)
                w = w * gamma.reshape((-1,) + (1,) * (w.ndim - 1))
                b = b * gamma + t[af["beta"]]
                i += 1
                step["name"] = af["name"]
            params[n["name"]] = (torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
            step["param"] = n["name"]
            if i + 1 < len(nodes) and nodes[i + 1]["op"] == "relu" and nodes[i + 1]["inputs"][0] == step["name"]:
                step["relu"] = True
                i += 1
                step["name"] = nodes[i]["name"]
        elif n["op"] == "affine":  # one not after a conv: y = gamma_c * x + beta_c
            params[n["name"]] = (torch.tensor(t[n["gamma"]]).reshape(1, -1, 1, 1),
                                 torch.tensor(t[n["beta"]]).reshape(1, -1, 1, 1))
            step["param"] = n["name"]
        steps.append(step)
        i += 1

    def forward(x, dev_params):
        v = {graph["input"]["name"]: x}
        for s in steps:
            a = v[s["inputs"][0]]
            op = s["op"]
            if op == "conv":
                w, b = dev_params[s["param"]]
                y = F.conv2d(a, w, b, stride=s["stride"], padding=s["pad"])
                y = F.relu(y) if s.get("relu") else y
            elif op == "dense":
                w, b = dev_params[s["param"]]
                y = F.linear(a.flatten(1), w, b)
                y = F.relu(y) if s.get("relu") else y
            elif op == "relu":
                y = F.relu(a)
            elif op == "affine":
                g, b = dev_params[s["param"]]
                y = a * g + b
            elif op == "add":  # dlib's add_prev: zero-pad the smaller to the larger extent
                p, q = a, v[s["inputs"][1]]
                C, H, W = (max(p.shape[d], q.shape[d]) for d in (1, 2, 3))
                y = sum(F.pad(z, (0, W - z.shape[3], 0, H - z.shape[2], 0, C - z.shape[1]))
                        for z in (p, q))
            elif op == "maxpool":
                y = F.max_pool2d(a, s["kernel"], s["stride"], s["pad"])
            elif op == "avgpool":
                y = F.avg_pool2d(a, s["kernel"], s["stride"], s["pad"])
            elif op == "l2pool":
                y = F.lp_pool2d(a, 2, s["kernel"], s["stride"])
            elif op == "lrn":
                y = F.local_response_norm(a, s["size"], s["alpha"], s["beta"], s["k"])
            elif op == "concat":
                xs = [v[i] for i in s["inputs"]]
                H = max(z.shape[2] for z in xs)
                W = max(z.shape[3] for z in xs)
                padded = []
                for z in xs:
                    dh, dw = H - z.shape[2], W - z.shape[3]
                    padded.append(F.pad(z, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)))
                y = torch.cat(padded, 1)
            elif op == "l2norm":
                y = a.flatten(1)
                y = y / torch.sqrt(torch.clamp((y * y).sum(1, keepdim=True), min=s["eps"]))
            else:
                raise ValueError(f"op {op} not supported by the peer")
            v[s["name"]] = y
        return v[graph["output"]].flatten(1)

    return graph, params, forward


def time_it(fn, sync, warmup, repeats):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], times[0]


def check_json(y, expected_npy):
    """{"batch", "max_abs_diff"} of a peer's output y against ours (the .npy the bench wrote)."""
    want = np.load(expected_npy)
    y = np.asarray(y, dtype=np.float32).reshape(want.shape)
    return {"batch": int(want.shape[0]), "max_abs_diff": float(np.abs(y - want).max())}


def configs(device, forward, params, x, torch):
    """(name, callable) pairs to time. CPU: eager fp32. CUDA (cudnn.benchmark on for all): eager fp32, fp16
    channels_last, that replayed as a CUDA graph, and torch.compile in mode
    max-autotune-no-cudagraphs (graph replay is the separate variant). TF32 is off so fp32 is
    fp32. Inputs are made once, outside the timed call: every variant is model-only, like ours."""
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    yield "eager fp32", lambda: forward(x, params)
    if device != "cuda":
        return
    half = {k: (w.half().contiguous(memory_format=torch.channels_last) if w.dim() == 4 else w.half(),
                b.half()) for k, (w, b) in params.items()}
    xh = x.half().contiguous(memory_format=torch.channels_last)
    yield "fp16 channels_last cudnn.benchmark", lambda: forward(xh, half)

    def graphed():
        with torch.inference_mode():
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    forward(xh, half)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                forward(xh, half)
        return g.replay
    try:
        yield "fp16 channels_last CUDA graph", graphed()
    except Exception as e:
        print(f"peer: CUDA graph variant failed: {e}", file=sys.stderr)
    if os.environ.get("FACENET_PEER_COMPILE", "1") == "1":
        try:
            compiled = torch.compile(lambda a: forward(a, half), mode="max-autotune-no-cudagraphs")
            yield "fp16 channels_last torch.compile", lambda: compiled(xh)
        except Exception as e:
            print(f"peer: torch.compile variant failed: {e}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", default="1,16,64")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--check-input", help="N x (C*H*W) float32 .npy to run once, untimed")
    ap.add_argument("--check-output", help="our N x D output for --check-input: report the max abs diff")
    ap.add_argument("--embed", nargs="*", default=[],
                    help="also print embeddings of these images (checks we run the same network)")
    args = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(json.dumps({"available": False, "reason": f"import torch failed: {e}"}))
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    graph, params, forward = build(args.model, torch)
    c, h, w = graph["input"]["shape"]
    rng = np.random.default_rng(1234)
    out = {"peer": "pytorch", "torch": torch.__version__, "device": args.device,
           "threads": torch.get_num_threads(), "results": []}
    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"available": False, "reason": "torch.cuda.is_available() is False"}))
        return 0
    dev = torch.device(args.device)
    dev_params = {k: (a.to(dev), b.to(dev)) for k, (a, b) in params.items()}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if args.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    for bsz in [int(b) for b in args.batch.split(",")]:
        x = torch.tensor(rng.random((bsz, c, h, w), dtype=np.float32), device=dev)
        for name, fn in configs(args.device, forward, dev_params, x, torch):
            try:
                with torch.inference_mode():
                    med, mn = time_it(fn, sync, args.warmup, args.repeats)
                out["results"].append({"batch": bsz, "config": name, "img_per_s": bsz / med,
                                       "latency_ms": med * 1e3, "min_ms": mn * 1e3})
            except Exception as e:  # a variant that does not work here is reported, not fatal
                out.setdefault("skipped", []).append(
                    {"batch": bsz, "config": name, "reason": f"{type(e).__name__}: {e}"[:300]})
            if args.device == "cuda":
                torch.cuda.empty_cache()
    if args.check_input:
        x = torch.tensor(np.load(args.check_input).reshape(-1, c, h, w), device=dev)
        with torch.inference_mode():
            out["check"] = check_json(forward(x, dev_params).cpu().numpy(), args.check_output)
    if args.embed:
        import cv2
        embs = {}
        for p in args.embed:
            bgr = cv2.imread(p, cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{p}: cannot read image")
            img = np.ascontiguousarray(bgr[:, :, ::-1])
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
            pre = graph.get("preprocess", {})
            mean = np.array(pre.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32).reshape(3, 1, 1)
            scale = pre.get("scale", 1.0 / 255.0)
            chw = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.float32)
            x = torch.tensor((chw - mean) * scale, dtype=torch.float32)[None].to(dev)
            with torch.inference_mode():
                embs[p] = forward(x, dev_params)[0].cpu().numpy().tolist()
        out["embeddings"] = embs
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
