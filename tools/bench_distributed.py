"""Benchmark of facenet_engine.distributed on a local Ray cluster, against the single-process
engine on the same cores, in the same run. Prints JSON.

  python tools/bench_distributed.py --model resnet.safetensors [--photos 200,1600] [--reps 2]
      [--identities 20000] [--rows 5] [--shards 1,2,4] [-o out.json]

Encode: photos/s over the first N LFW photos of pairs.txt (HOG, largest face, dlib's ResNet),
wall time from the call to the last row, model loading and (for Ray) actor start-up
included; the single-process Pipeline is also timed without its construction. Two sizes
split each wall time into a start-up cost and a steady rate (wall = startup + n / rate). Ray runs: 1
worker x all cores, and one worker per core with one thread each; the order of the variants
rotates per repetition and each figure is the median. ray.init is not timed.

Search: a synthetic gallery (random unit vectors, `--rows` per identity) searched with k=5
for probe batches of 1 and 64: Gallery.identify in this process against ShardedGallery with
1, 2 and 4 shards; "merge_ms" is merge_shards alone on the shards' real answers; the answers
are checked equal to the single gallery's.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_steps import lfw_first_files, machine  # noqa: E402

SPEC = "synthetic/bench#0123456789abcdef"
K = 5


def _median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def bench_encode(args, fe, ray, dist):
    sizes = args.photos
    all_paths = lfw_first_files(max(sizes))
    cores = os.cpu_count()
    seen = {}

    def single(paths):
        t = time.perf_counter()
        p = fe.Pipeline(args.model, threads=cores)
        built = time.perf_counter()
        x = p.encode(paths)
        end = time.perf_counter()
        seen["single"] = (paths, x)
        return {"wall_s": end - t, "encode_s": end - built}

    def on_ray(concurrency, threads, parquet=False):
        def run(paths):
            t = time.perf_counter()
            kw = dict(concurrency=concurrency, threads=threads, num_cpus=float(threads),
                      batch_size=args.batch_size)
            if parquet:
                with tempfile.TemporaryDirectory() as d:
                    dist.encode_dataset(paths, args.model, output=d + "/out", **kw)
                    return {"wall_s": time.perf_counter() - t}
            rows = dist.encode_dataset(paths, args.model, **kw).take_all()
            wall = time.perf_counter() - t
            seen["ray"] = rows
            return {"wall_s": wall}
        return run

    variants = {
        "single_process": single,
        f"ray_1x{cores}": on_ray(1, cores),
        f"ray_{cores}x1": on_ray(cores, 1),
        f"ray_{cores}x1_parquet": on_ray(cores, 1, parquet=True),
    }
    fe.Pipeline(args.model, threads=cores).encode(all_paths[:5])  # page in the model
    names = list(variants)
    out = {"sizes": sizes}
    for n in sizes:
        paths = all_paths[:n]
        runs = {name: [] for name in variants}
        for r in range(args.reps):
            for name in names[r % len(names):] + names[:r % len(names)]:
                runs[name].append(variants[name](paths))
                print(f"{n} {name}: {runs[name][-1]}", file=sys.stderr)
        for name, rs in runs.items():
            wall = statistics.median(x["wall_s"] for x in rs)
            v = out.setdefault(name, {})
            v[f"photos_{n}"] = {"photos_per_s": round(n / wall, 2), "median_wall_s": round(wall, 3),
                                "wall_s": [round(x["wall_s"], 3) for x in rs]}
            if name == "single_process":
                enc = statistics.median(x["encode_s"] for x in rs)
                v[f"photos_{n}"]["photos_per_s_without_construction"] = round(n / enc, 2)
        paths_s, x = seen["single"]
        by_path = {r["path"]: r for r in seen["ray"]}
        diffs = [float(np.max(np.abs(np.asarray(by_path[p]["embedding"], np.float32) - x[i])))
                 for i, p in enumerate(paths_s) if by_path[p]["embedding"] is not None]
        out.setdefault("check", {})[f"photos_{n}"] = {
            "rows": len(seen["ray"]), "distinct_paths": len(by_path),
            "faces_single": int(np.count_nonzero(~np.isnan(x[:, 0]))), "faces_ray": len(diffs),
            "max_abs_embedding_diff": max(diffs) if diffs else None}
    if len(sizes) >= 2:  # wall = start-up + n x per-photo: the two sizes give both
        a, b = sizes[0], sizes[-1]
        base = None
        for name in names:
            wa = out[name][f"photos_{a}"]["median_wall_s"]
            wb = out[name][f"photos_{b}"]["median_wall_s"]
            per = (wb - wa) / (b - a)
            out[name]["steady_photos_per_s"] = round(1 / per, 2)
            out[name]["startup_s"] = round(wa - a * per, 2)
            base = base or out[name]["steady_photos_per_s"]
            out[name]["steady_vs_single_process"] = round(out[name]["steady_photos_per_s"] / base, 3)
    return out


def bench_search(args, fe, ray, dist, tmp):
    rng = np.random.default_rng(1)
    path = tmp / "single.sqlite"
    t = time.perf_counter()
    with fe.Gallery.create(path, model=SPEC, dim=128) as g:
        for i in range(args.identities):
            x = rng.standard_normal((args.rows, 128)).astype(np.float32)
            g.enroll(f"id-{i:06d}", x / np.linalg.norm(x, axis=1, keepdims=True), model=SPEC)
    made_s = time.perf_counter() - t
    probes = rng.standard_normal((64, 128)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    out = {"identities": args.identities, "embeddings": args.identities * args.rows, "k": K,
           "gallery_made_s": round(made_s, 2), "single": {}, "sharded": {}}
    g = fe.Gallery.open(path, "r")
    want = {n: g.identify(probes[:n], k=K) for n in (1, 64)}
    for n in (1, 64):
        out["single"][f"probes_{n}_ms"] = round(_median_ms(lambda: g.identify(probes[:n], k=K),
                                                           args.search_reps), 3)
    for shards in args.shards:
        t = time.perf_counter()
        sg = dist.ShardedGallery.from_gallery(path, tmp / f"sharded-{shards}", shards,
                                              threads=1)
        split_s = time.perf_counter() - t
        res = {"split_s": round(split_s, 2)}
        for n in (1, 64):
            q = probes[:n]
            got = sg.identify(q, k=K)
            same = all(a.best == b.best and a.distance == b.distance and
                       [tuple(x) for x in a.top] == [tuple(x) for x in b.top]
                       for a, b in zip(got, want[n]))
            parts = ray.get([a.search.remote(q, K) for a in sg._actors])
            res[f"probes_{n}"] = {
                "identify_ms": round(_median_ms(lambda: sg.identify(q, k=K), args.search_reps), 3),
                "merge_ms": round(_median_ms(lambda: dist.merge_shards(parts, K, 0.6),
                                             args.search_reps), 3),
                "equal_to_single": same,
            }
        out["sharded"][str(shards)] = res
        for a in sg._actors:
            ray.kill(a)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="dlib ResNet model file (facenet convert)")
    ap.add_argument("--photos", default="200,1600",
                    help="photo counts, comma-separated (two or more: start-up and steady rate)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--identities", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=5)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--search-reps", type=int, default=50)
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    args.shards = [int(s) for s in args.shards.split(",")]
    args.photos = [int(n) for n in args.photos.split(",")]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import facenet_engine as fe
    import ray
    from facenet_engine import distributed as dist
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "ray": ray.__version__, "model": os.path.basename(args.model)}
    if not args.skip_encode:
        result["encode"] = bench_encode(args, fe, ray, dist)
    with tempfile.TemporaryDirectory() as d:
        result["search"] = bench_search(args, fe, ray, dist, pathlib.Path(d))
    result["machine_after"] = {"load_average": os.getloadavg()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
