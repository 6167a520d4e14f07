"""python -m facenet_engine.distributed: distributed encoding and sharded galleries on Ray.

Exit codes as the facenet CLI: 0 done; 1 done, but some inputs failed (each named on stderr);
2 nothing could be done (argument errors included). Results are JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

import numpy as np

EPILOG = """\
examples (a local cluster, or one started with `ray start --head`: --address auto):
  python -m facenet_engine.distributed encode photos/ --model resnet.safetensors -o out.parquet
  python -m facenet_engine.distributed enroll out.parquet --gallery people.sqlite --create
  python -m facenet_engine.distributed shard-gallery people.sqlite sharded/ --shards 4
  python -m facenet_engine.distributed identify sharded/ probes.npy -k 5
"""


def _init(args: argparse.Namespace) -> None:
    import ray
    ray.init(address=args.address, include_dashboard=False,
             log_to_driver=args.verbose, logging_level="INFO" if args.verbose else "WARNING")
    if not args.verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False


def _cmd_encode(args: argparse.Namespace) -> int:
    from . import encode_dataset
    _init(args)
    start = time.perf_counter()
    skipped: List[str] = []

    def on_error(msg: str) -> None:
        skipped.append(msg)
        print(f"skipped: {msg}", file=sys.stderr)

    ds = encode_dataset(
        args.inputs, args.model, device=args.device, precision=args.precision,
        batch_size=args.batch_size, concurrency=args.concurrency, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus, threads=args.threads, detector=args.detector, align=args.align,
        upsample=args.upsample, on_error=on_error)
    ds.write_parquet(args.output)
    seconds = time.perf_counter() - start
    import pyarrow.dataset as pds  # the summary, read back from what was written
    table = pds.dataset(args.output, format="parquet").to_table(columns=["path", "face", "error"])
    images = set(table.column("path").to_pylist())
    faces = int(np.count_nonzero(table.column("face").to_numpy() >= 0))
    failed = 0
    for error in table.column("error").to_pylist():
        if error:
            failed += 1
            print(f"failed: {error}", file=sys.stderr)
    print(json.dumps({"output": args.output, "images": len(images), "faces": faces,
                      "failed": failed, "skipped": len(skipped), "seconds": round(seconds, 3),
                      "images_per_s": round(len(images) / seconds, 2)}))
    return 1 if failed or skipped else 0


def _cmd_enroll(args: argparse.Namespace) -> int:
    from .. import Gallery
    from . import ShardedGallery, enroll_dataset
    _init(args)
    if args.sharded:
        counts = enroll_dataset(args.encoded, ShardedGallery.open(args.sharded))
    else:
        if args.create and not os.path.exists(args.gallery):
            if not args.model:
                print("error: enroll --create needs --model (the model file or embedding "
                      "spec the rows came from)", file=sys.stderr)
                return 2
            g = Gallery.create(args.gallery, model=args.model)
        else:
            g = Gallery.open(args.gallery, "w")
        with g:
            counts = enroll_dataset(args.encoded, g)
    print(json.dumps(counts))
    return 0 if counts["embeddings"] else 2


def _cmd_shard_gallery(args: argparse.Namespace) -> int:
    from . import ShardedGallery
    _init(args)
    sg = ShardedGallery.from_gallery(args.gallery, args.root, args.shards)
    print(json.dumps(sg.stats()))
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from . import ShardedGallery
    probes = np.load(args.probes)
    _init(args)
    sg = ShardedGallery.open(args.root, device=args.device)
    for i, m in enumerate(sg.identify(probes, k=args.k, threshold=args.threshold)):
        print(json.dumps({"probe": i, "best": m.best, "distance": m.distance,
                          "top": [{"name": n, "distance": d} for n, d in m.top]},
                         ensure_ascii=False))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m facenet_engine.distributed",
                                description=__doc__.split("\n\n")[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto': the one `ray start` made on this "
                             "node; default: $RAY_ADDRESS, else a new local cluster)")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="Ray's logs and Ray Data's progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("encode", parents=[common], help="encode images into Parquet rows",
                       description="Encodes image files and directories on the cluster; writes "
                                   "Parquet (path, face, box, score, embedding, model, error).")
    e.add_argument("inputs", nargs="+", help="image files and directories (recursive)")
    e.add_argument("--model", required=True, help="model file, at this path on every node")
    e.add_argument("-o", "--output", required=True, help="folder for the Parquet files")
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    e.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    e.add_argument("--batch-size", type=int, default=32, help="images per worker call (32)")
    e.add_argument("--concurrency", type=int, default=1, help="worker actors (1)")
    e.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs per worker (default: --threads, else 1)")
    e.add_argument("--num-gpus", type=float, default=0,
                   help="GPUs per worker (default: 1 with --device cuda)")
    e.add_argument("--threads", type=int, default=0,
                   help="engine threads per worker (default: --num-cpus)")
    e.add_argument("--detector", default="hog", choices=["hog", "cnn", "hog+cnn-retry", "none"])
    e.add_argument("--align", default="largest",
                   choices=["largest", "all", "all-as-detected", "centre"])
    e.add_argument("--upsample", type=int, default=0, help="detector upsampling 0-3")
    e.set_defaults(run=_cmd_encode)

    n = sub.add_parser("enroll", parents=[common], help="enrol encoded rows into a gallery",
                       description="Enrols the rows of `encode` under their folder names.")
    n.add_argument("encoded", help="the Parquet folder `encode` wrote")
    where = n.add_mutually_exclusive_group(required=True)
    where.add_argument("--gallery", help="a gallery file")
    where.add_argument("--sharded", help="a sharded gallery folder")
    n.add_argument("--create", action="store_true", help="create --gallery if it is missing")
    n.add_argument("--model", help="with --create: the model file or embedding spec")
    n.set_defaults(run=_cmd_enroll)

    s = sub.add_parser("shard-gallery", parents=[common], help="split a gallery into shards")
    s.add_argument("gallery", help="the gallery file to split")
    s.add_argument("root", help="the new sharded gallery folder")
    s.add_argument("--shards", type=int, required=True)
    s.set_defaults(run=_cmd_shard_gallery)

    i = sub.add_parser("identify", parents=[common], help="1:K search of a sharded gallery",
                       description="Searches probe embeddings (.npy, (n, D) float32) over every "
                                   "shard; one JSON line per probe.")
    i.add_argument("root", help="the sharded gallery folder")
    i.add_argument("probes", help=".npy file of probe embeddings")
    i.add_argument("-k", type=int, default=5, help="identities per probe (5)")
    i.add_argument("--threshold", type=float, default=None,
                   help="'unknown' above this L2 distance (default: the engine's)")
    i.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where each shard's index lives")
    i.set_defaults(run=_cmd_identify)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ImportError as e:
        print(f"error: {e} (pip install 'ray[data]')", file=sys.stderr)
        return 2
    except Exception as e:  # an engine or Ray error: named, exit 2
        from .._core import EngineError
        if not isinstance(e, (EngineError, OSError, ValueError)):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
