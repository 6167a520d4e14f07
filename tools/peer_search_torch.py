#!/usr/bin/env python3
"""PyTorch peer for facenet_bench_search: exact k-NN as matmul + topk on the GPU, timed with
CUDA events on a synthetic unit-norm gallery of the same shape and dtype.

    d2 = ||q||^2 + ||g||^2 - 2 q g^T  (gallery chunks), torch.topk(largest=False) per chunk,
    then topk over the concatenated chunk winners.

Prints one JSON object as the last line of stdout. Run with Debian's /usr/bin/python3 (torch).
"""
import argparse
import json
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--q", type=int, required=True)
    p.add_argument("--k", type=int, required=True)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    # The q x chunk distance block is the peer's workspace; 2 GiB keeps it near ours.
    p.add_argument("--chunk-bytes", type=int, default=2 << 30)
    a = p.parse_args()

    try:
        import torch
    except ImportError as e:
        print(json.dumps({"name": "torch matmul+topk", "available": False, "reason": str(e)}))
        return 0
    if not torch.cuda.is_available():
        print(json.dumps({"name": "torch matmul+topk", "available": False,
                          "reason": f"torch {torch.__version__} sees no CUDA device"}))
        return 0

    dev = torch.device("cuda")
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(1)
    g = torch.randn(a.n, a.d, device=dev, generator=gen)
    g = torch.nn.functional.normalize(g, dim=1).to(dtype)
    q = torch.nn.functional.normalize(torch.randn(a.q, a.d, device=dev, generator=gen), dim=1)
    q = q.to(dtype)
    gn = (g.float() ** 2).sum(1)
    chunk = max(a.k, min(a.n, a.chunk_bytes // (4 * a.q)))

    def search():
        qn = (q.float() ** 2).sum(1, keepdim=True)
        best_d, best_i = [], []
        for s in range(0, a.n, chunk):
            e = min(a.n, s + chunk)
            d2 = qn + gn[s:e] - 2.0 * (q @ g[s:e].T).float()
            kk = min(a.k, e - s)
            dd, ii = torch.topk(d2, kk, dim=1, largest=False)
            best_d.append(dd)
            best_i.append(ii + s)
        if len(best_d) == 1:
            return best_d[0], best_i[0]
        d, i = torch.cat(best_d, 1), torch.cat(best_i, 1)
        dd, pos = torch.topk(d, min(a.k, d.shape[1]), dim=1, largest=False)
        return dd, torch.gather(i, 1, pos)

    for _ in range(a.warmup):
        search()
    torch.cuda.synchronize()
    times = []
    for _ in range(a.repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        search()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    median = times[len(times) // 2] if len(times) % 2 else 0.5 * (
        times[len(times) // 2 - 1] + times[len(times) // 2])
    print(json.dumps({
        "name": "torch matmul+topk", "available": True, "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0), "dtype": a.dtype, "n": a.n, "q": a.q,
        "k": a.k, "d": a.d, "median_ms": median, "min_ms": times[0], "repeats": len(times),
        "queries_per_s": a.q / (median * 1e-3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
