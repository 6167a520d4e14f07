#!/usr/bin/env python3
"""faiss-cpu (the PyPI wheel) peer for facenet_bench_search: IndexFlatL2 over the very gallery
and queries the bench wrote (raw float32, row-major), timed with perf_counter after warm-up.

The wheel lives in its own venv (tools/setup.sh makes it), so that `import faiss` there is the
wheel and not Debian's python3-faiss, which /usr/bin/python3 imports; started from any other
interpreter this script re-runs itself under the venv's. For every --q and --k it writes the
labels (int64) and distances (float32) to <out>/q<Q>_k<K>.{labels,dist} for the bench to check,
and prints one JSON object as the last line of stdout.
"""
import argparse
import json
import os
import sys
import time

DEFAULT_VENV = os.environ.get("FACENET_FAISS_CPU_VENV") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facenet",
    "venv-faiss-cpu")


def unavailable(reason):
    print(json.dumps({"name": "faiss-cpu IndexFlatL2", "available": False, "reason": reason}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gallery", required=True)
    p.add_argument("--queries", required=True, help="the largest query batch; --q takes prefixes")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--q", required=True, help="comma-separated query batch sizes")
    p.add_argument("--k", required=True, help="comma-separated neighbour counts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True, help="folder for the result files")
    p.add_argument("--venv", default=DEFAULT_VENV)
    a = p.parse_args()

    venv_python = os.path.join(a.venv, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(a.venv):
        if not os.access(venv_python, os.X_OK):
            return unavailable(f"no faiss-cpu venv at {a.venv} (tools/setup.sh makes it)")
        os.execv(venv_python, [venv_python, os.path.abspath(__file__)] + sys.argv[1:])
    try:
        import faiss
        import numpy as np
    except ImportError as e:
        return unavailable(f"{venv_python}: {e}")

    gallery = np.fromfile(a.gallery, dtype=np.float32).reshape(a.n, a.d)
    queries_all = np.fromfile(a.queries, dtype=np.float32).reshape(-1, a.d)
    faiss.omp_set_num_threads(a.threads)
    index = faiss.IndexFlatL2(a.d)
    index.add(gallery)
    del gallery
    simd = faiss.SIMDConfig
    info = {
        "name": "faiss-cpu IndexFlatL2", "available": True, "faiss": faiss.__version__,
        "numpy": np.__version__, "module": faiss.__file__,
        "compile_options": faiss.get_compile_options(),
        "simd_level": simd.get_level_name() if hasattr(simd, "get_level_name") else None,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "threads": faiss.omp_get_max_threads(), "n": a.n, "d": a.d, "results": [],
    }
    for q in (int(x) for x in a.q.split(",")):
        queries = np.ascontiguousarray(queries_all[:q])
        for k in (int(x) for x in a.k.split(",")):
            for _ in range(a.warmup):
                index.search(queries, k)
            times = []
            for _ in range(a.repeats):
                start = time.perf_counter()
                dist, labels = index.search(queries, k)
                times.append(time.perf_counter() - start)
            times.sort()
            m = len(times)
            median = times[m // 2] if m % 2 else 0.5 * (times[m // 2 - 1] + times[m // 2])
            labels.astype(np.int64).tofile(os.path.join(a.out, f"q{q}_k{k}.labels"))
            dist.astype(np.float32).tofile(os.path.join(a.out, f"q{q}_k{k}.dist"))
            info["results"].append({"q": q, "k": k, "median_ms": median * 1e3,
                                    "min_ms": times[0] * 1e3, "repeats": m,
                                    "queries_per_s": q / median})
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
