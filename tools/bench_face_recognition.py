"""Benchmark of the face_recognition drop-in against the real face_recognition 1.3.0 + dlib, in
the same run: photos/s of ``load_image_file + face_encodings`` (HOG, one upsampling,
num_jitters=1) over the same LFW photos, each implementation in its own process, the order
alternating per repetition, median of the repetitions; plus the package's batched path
``fe.Pipeline(model).encode(paths, upsample=1, align="largest")``. Prints JSON.

  python tools/bench_face_recognition.py [--photos 500] [--reps 3] [--threads 2] [-o out.json]
  python tools/bench_face_recognition.py --variants     # + drop-in variants (threads, callers)
  python tools/bench_face_recognition.py --profile      # where the drop-in's time goes

The photos: the first N distinct files of LFW's pairs.txt, in that order (the shared data
holds only pairs.txt's images). The real package runs in the venv tools/peer_face_recognition.sh
makes; it never shares a process with facenet_engine. --threads (default 2, this machine's
cores) caps OpenMP/BLAS threads in every process and is the batched pipeline's thread count;
the drop-in keeps its own setting (one thread in the forward pass, see its api module).
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from bench_steps import lfw_first_files, machine, ms_per_item, peer_face_recognition_python

REPO = pathlib.Path(__file__).resolve().parents[1]
PEER_PY = REPO / "tools" / "peer_face_recognition.py"
WARMUP = 5  # photos run once before timing in every worker (model loading, first-call costs)


# --- workers (each in its own process) -----------------------------------------------------


def _timed(run, paths):
    run(paths[:WARMUP])
    start = time.perf_counter()
    faces = run(paths)
    seconds = time.perf_counter() - start
    return {"photos": len(paths), "faces": faces, "seconds": seconds,
            "photos_per_s": len(paths) / seconds}


def _encode_one(path):
    from facenet_engine import face_recognition

    return len(face_recognition.face_encodings(face_recognition.load_image_file(path)))


def worker_dropin(paths, threads):
    """The drop-in as it comes (its pipeline's own thread settings); `threads` is not used."""
    from facenet_engine.face_recognition import api

    result = _timed(lambda ps: sum(map(_encode_one, ps)), paths)
    return dict(impl="dropin", forward_threads=api._FORWARD_THREADS, **result)


def worker_dropin_forward_threads(paths, threads):
    """The drop-in with `threads` OpenMP threads in its network's forward pass."""
    from facenet_engine.face_recognition import api

    api._set_pipeline_options(threads=threads)
    result = _timed(lambda ps: sum(map(_encode_one, ps)), paths)
    return dict(impl="dropin_forward_threads", forward_threads=threads, **result)


def worker_dropin_2_callers(paths, threads):
    """The drop-in called from 2 Python threads at once (the pipeline releases the GIL): what
    a caller who can overlap photos gets from the unchanged API."""
    from concurrent.futures import ThreadPoolExecutor

    def run(ps):
        with ThreadPoolExecutor(2) as pool:
            return sum(pool.map(_encode_one, ps))

    return dict(impl="dropin_2_callers", **_timed(run, paths))


def worker_batched(paths, threads):
    import numpy as np

    import facenet_engine as fe

    pipeline = fe.Pipeline(fe.dlib_resnet_model(), threads=threads)

    def run(ps):
        rows = pipeline.encode(ps, upsample=1, align="largest")
        return int(np.isfinite(np.asarray(rows)[:, 0]).sum())

    return dict(impl="batched", **_timed(run, paths))


WORKERS = {"dropin": worker_dropin, "dropin_forward_threads": worker_dropin_forward_threads,
           "dropin_2_callers": worker_dropin_2_callers, "batched": worker_batched}


# --- the orchestrator ----------------------------------------------------------------------



def _thread_env(threads):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _wait_quiet(max_load, timeout_s):
    """Waits until the 1-minute load average is below `max_load` (others build on this
    machine); returns the load seen, or the last one after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(10)
    return os.getloadavg()[0]


def _run_json(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])



def _versions():
    import numpy
    import PIL

    import facenet_engine as fe
    return {"facenet_engine": fe.__version__, "numpy": numpy.__version__,
            "Pillow": PIL.__version__, "python": platform.python_version()}


def orchestrate(args):
    paths = lfw_first_files(args.photos)
    peer = peer_face_recognition_python()
    env = _thread_env(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        listing = pathlib.Path(tmp) / "photos.txt"
        listing.write_text("\n".join(paths) + "\n")
        def ours(worker):
            return [sys.executable, __file__, "--worker", worker, str(listing),
                    "--threads", str(args.threads)]

        commands = {"dropin": ours("dropin"),
                    "face_recognition": [peer, str(PEER_PY), "bench", str(listing)],
                    "batched": ours("batched")}
        if args.variants:
            commands["dropin_forward_threads"] = ours("dropin_forward_threads")
            commands["dropin_2_callers"] = ours("dropin_2_callers")
        runs = {name: [] for name in commands}
        order = list(commands)
        for rep in range(args.reps):
            for name in (order if rep % 2 == 0 else order[::-1]):
                load_before = _wait_quiet(args.max_load, args.quiet_timeout)
                result = _run_json(commands[name], env)
                result.update(rep=rep, load_before=load_before, load_after=os.getloadavg()[0])
                runs[name].append(result)
                print(f"rep {rep} {name}: {result['photos_per_s']:.2f} photos/s", file=sys.stderr)
    median = {n: statistics.median(r["photos_per_s"] for r in rs) for n, rs in runs.items()}
    report = {
        "what": "photos/s of load_image_file + face_encodings (HOG upsample 1, num_jitters 1); "
                "batched: Pipeline.encode(paths, upsample=1, align='largest')",
        "photos": len(paths),
        "selection": "first distinct files of LFW pairs.txt, in file order (deep-funneled, 250x250)",
        "reps": args.reps, "threads": args.threads, "warmup_photos": WARMUP,
        "order": "alternating per repetition: " + " / ".join([",".join(order), ",".join(order[::-1])]),
        "machine": machine(),
        "max_load": args.max_load,
        "versions": dict(_versions(), **runs["face_recognition"][0]["versions"]),
        "median_photos_per_s": median,
        "speedup_vs_face_recognition": {n: m / median["face_recognition"] for n, m in median.items()},
        "faces": {n: rs[0]["faces"] for n, rs in runs.items()},
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


def _phases(paths):
    """ms per photo of each step of load_image_file + face_encodings, one step at a time:
    PIL decode, HOG detection + landmarks (a detect call), the encode of already found boxes
    (landmarks + chip + ResNet), the ResNet alone on 150x150 chips, and the whole call."""
    import numpy as np

    from facenet_engine import face_recognition
    from facenet_engine.face_recognition import api

    pipeline = api._get_pipeline()
    images = [face_recognition.load_image_file(p) for p in paths]
    boxes = [[f.box for f in r.faces] for r in pipeline.detect(images, upsample=1)]
    chip = np.zeros((150, 150, 3), np.uint8)
    steps = {
        "load_image_file": lambda i: face_recognition.load_image_file(paths[i]),
        "detect_hog_up1_with_landmarks": lambda i: pipeline.detect([images[i]], upsample=1),
        "encode_known_boxes": lambda i: pipeline.encode([images[i]], boxes=[boxes[i]]),
        "resnet_one_chip": lambda i: pipeline.encode([chip], detector="none"),
        "face_encodings": lambda i: face_recognition.face_encodings(images[i]),
    }
    return ms_per_item(steps, len(paths))


def profile(args):
    """Where the drop-in's time goes: cProfile of its worker (stderr) and the ms per photo of
    each step (JSON on stdout)."""
    import cProfile
    import pstats

    paths = lfw_first_files(args.photos)
    prof = cProfile.Profile()
    prof.enable()
    result = worker_dropin(paths, args.threads)
    prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(12)
    result["ms_per_photo"] = _phases(paths[:min(len(paths), 100)])
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--max-load", type=float, default=1.5,
                        help="wait before each run until the 1-minute load is below this")
    parser.add_argument("--quiet-timeout", type=float, default=600,
                        help="seconds to wait for that at most (the load is recorded)")
    parser.add_argument("--variants", action="store_true",
                        help="also the drop-in with --threads in its forward pass, and called "
                             "from 2 Python threads at once")
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("listing", nargs="?")
    args = parser.parse_args()
    if args.worker:
        paths = pathlib.Path(args.listing).read_text().split()
        print(json.dumps(WORKERS[args.worker](paths, args.threads)))
    elif args.profile:
        profile(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
